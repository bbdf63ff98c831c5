import { readFile } from 'node:fs/promises';
import type { DataSet } from 'dicom-parser';
import { MeloError } from '../../errors.ts';
import type { DecodedImage } from '../image.ts';
import { checkPixels, DEFAULT_IMAGE_LIMITS, type ImageLimits } from '../limits.ts';
import { ybrFullToRgb } from './color.ts';
import { decodeStoredFrame, type StoredFrame } from './decode-frame.ts';
import { parseDicomBytes } from './parse.ts';
import { type PixelModule, readPixelModule } from './pixel-module.ts';
import { uidForMessage } from './text.ts';
import { describeTransferSyntax, transferSyntax } from './transfer-syntax.ts';
import {
  applyMinMax,
  applyWindow,
  invertInPlace,
  isUsableWindow,
  rescale,
  type VoiFunction,
  type Window,
} from './voi.ts';

export { isDicom } from './sniff.ts';
export type { Window } from './voi.ts';

/**
 * A DICOM frame ready for display, in melo's DecodedImage form, with the header facts a caller may
 * want. Patient-identifying attributes are never read into it.
 */
export interface DicomImage extends DecodedImage {
  readonly frames: number;
  readonly photometric: string;
  readonly bitsStored: number;
  readonly rows: number;
  readonly columns: number;
  readonly modality?: string;
}

export interface DecodeDicomOptions {
  /** Names the source in errors. */
  readonly file: string;
  /** Overrides the file's Window Center/Width (linear function); ignored for colour images. */
  readonly window?: Window;
  /** 0-based frame of a multi-frame image; the first by default. */
  readonly frame?: number;
  /** Work bounds (pixels per frame, inflation, element count and nesting); DEFAULT_IMAGE_LIMITS if absent. */
  readonly limits?: ImageLimits;
}

const PIXEL_DATA = 'x7fe00010';

/** Non-image objects that users point at by mistake, named in the 'no pixel data' error. */
const NON_IMAGE_SOP_CLASSES: Record<string, string> = {
  '1.2.840.10008.1.3.10': 'a DICOMDIR (Media Storage Directory)',
  '1.2.840.10008.5.1.4.1.1.481.3': 'an RT Structure Set',
  '1.2.840.10008.5.1.4.1.1.481.5': 'an RT Plan',
  '1.2.840.10008.5.1.4.1.1.481.8': 'an RT Ion Plan',
  '1.2.840.10008.5.1.4.1.1.88.11': 'a Basic Text SR',
  '1.2.840.10008.5.1.4.1.1.88.22': 'an Enhanced SR',
  '1.2.840.10008.5.1.4.1.1.88.33': 'a Comprehensive SR',
  '1.2.840.10008.5.1.4.1.1.9.1.1': 'a 12-lead ECG Waveform',
};

/**
 * Decodes one frame of a DICOM file into display values: stored values, Modality LUT (Rescale
 * Slope/Intercept), VOI (the `window` option, else the file's first Window Center/Width, else the
 * frame's min-max), MONOCHROME1 inverted. Colour images are converted to RGB and scaled by their bit
 * depth, without windowing. Every failure is a MeloError naming the file.
 */
export async function decodeDicom(bytes: Uint8Array, options: DecodeDicomOptions): Promise<DicomImage> {
  const { file } = options;
  try {
    return await decode(bytes, options);
  } catch (error) {
    if (error instanceof MeloError) throw error;
    const reason = error instanceof Error ? error.message : String(error);
    throw new MeloError('BAD_DICOM', `unexpected failure while decoding: ${reason.split('\n')[0]}`, {
      file,
      cause: error,
    });
  }
}

/** Reads `path` and decodes it; `options.file` (default: the path) names it in errors. */
export async function readDicomFile(
  path: string,
  options: Omit<DecodeDicomOptions, 'file'> & { readonly file?: string } = {},
): Promise<DicomImage> {
  const file = options.file ?? path;
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new MeloError('NOT_FOUND', 'no such file', { file });
    throw new MeloError('BAD_INPUT', `cannot read file (${code ?? String(error)})`, { file });
  }
  return decodeDicom(bytes, { ...options, file });
}

async function decode(bytes: Uint8Array, options: DecodeDicomOptions): Promise<DicomImage> {
  const { file } = options;
  if (options.window !== undefined && !isUsableWindow(options.window)) {
    throw new MeloError(
      'BAD_INPUT',
      `window center must be finite and width at least 1 (got ${options.window.center}/${options.window.width})`,
      { file },
    );
  }
  const limits = options.limits ?? DEFAULT_IMAGE_LIMITS;
  const parsed = parseDicomBytes(bytes, file, limits);
  const dataSet = parsed.dataSet;
  const pixelData = dataSet.elements[PIXEL_DATA];
  if (pixelData === undefined) {
    if (parsed.parseError !== undefined) {
      throw new MeloError(
        'BAD_DICOM',
        `malformed or truncated data set before Pixel Data (${parsed.parseError})`,
        {
          file,
        },
      );
    }
    throw noPixelData(dataSet, file);
  }
  const syntax = transferSyntax(parsed.transferSyntaxUid);
  if (syntax.codec === 'unsupported') {
    throw new MeloError('UNSUPPORTED', `${describeTransferSyntax(syntax)} is not supported`, { file });
  }
  if (
    parsed.parseError !== undefined &&
    (pixelData.encapsulatedPixelData || pixelData.length === 0xffffffff)
  ) {
    // Encapsulated data cut short cannot be trusted; native data is checked against its length below.
    throw new MeloError('BAD_DICOM', `malformed or truncated Pixel Data (${parsed.parseError})`, { file });
  }
  if (dataSet.elements.x00283000 !== undefined) {
    throw new MeloError('UNSUPPORTED', 'Modality LUT Sequence (0028,3000) is not supported', { file });
  }
  const module = readPixelModule(dataSet, file);
  checkPixels(module.columns, module.rows, limits, file);
  const frame = options.frame ?? 0;
  if (!Number.isInteger(frame) || frame < 0 || frame >= module.frames) {
    throw new MeloError(
      'BAD_INPUT',
      `frame ${frame} is out of range: the file has ${module.frames} frame(s)`,
      {
        file,
      },
    );
  }
  const stored = await decodeStoredFrame(dataSet, pixelData, syntax, module, frame, file);
  const data =
    stored.colorSpace === 'MONOCHROME'
      ? monochromeDisplay(stored, module, dataSet, options.window, file)
      : colorDisplay(stored, module);
  const modality = dataSet.string('x00080060');
  return {
    width: module.columns,
    height: module.rows,
    channels: module.samplesPerPixel,
    data,
    frames: module.frames,
    photometric: module.photometric,
    bitsStored: module.bitsStored,
    rows: module.rows,
    columns: module.columns,
    ...(modality !== undefined && modality !== '' ? { modality } : {}),
  };
}

function monochromeDisplay(
  stored: StoredFrame,
  module: PixelModule,
  dataSet: DataSet,
  window: Window | undefined,
  file: string,
): Float32Array {
  const slope = decimal(dataSet, 'x00281053', 'Rescale Slope (0028,1053)', file) ?? 1;
  const intercept = decimal(dataSet, 'x00281052', 'Rescale Intercept (0028,1052)', file) ?? 0;
  const values = rescale(stored.values, slope, intercept);
  let display: Float32Array;
  if (window !== undefined) {
    display = applyWindow(values, window, 'LINEAR');
  } else {
    const fileWindow = {
      center: dataSet.floatString('x00281050', 0) ?? Number.NaN,
      width: dataSet.floatString('x00281051', 0) ?? Number.NaN,
    };
    const fn = voiFunction(dataSet);
    display = isUsableWindow(fileWindow, fn) ? applyWindow(values, fileWindow, fn) : applyMinMax(values);
  }
  return module.photometric === 'MONOCHROME1' ? invertInPlace(display) : display;
}

function colorDisplay(stored: StoredFrame, module: PixelModule): Float32Array {
  const rgb =
    stored.colorSpace === 'YBR_FULL' ? ybrFullToRgb(stored.values, module.bitsStored) : stored.values;
  const max = 2 ** module.bitsStored - 1;
  const out = new Float32Array(rgb.length);
  for (let i = 0; i < rgb.length; i++) {
    const v = rgb[i]! / max;
    out[i] = Math.min(Math.max(v, 0), 1);
  }
  return out;
}

function voiFunction(dataSet: DataSet): VoiFunction {
  const value = dataSet.string('x00281056')?.trim().toUpperCase();
  return value === 'LINEAR_EXACT' || value === 'SIGMOID' ? value : 'LINEAR';
}

function decimal(dataSet: DataSet, tag: string, name: string, file: string): number | undefined {
  const text = dataSet.string(tag);
  if (text === undefined || text.trim() === '') return undefined;
  const value = Number(text.split('\\')[0]!.trim());
  if (!Number.isFinite(value)) {
    // The value itself is not echoed: a crafted file can fill any element with patient text.
    throw new MeloError('BAD_DICOM', `${name} is not a number`, { file });
  }
  return value;
}

function noPixelData(dataSet: DataSet, file: string): MeloError {
  if (dataSet.elements.x7fe00008 !== undefined || dataSet.elements.x7fe00009 !== undefined) {
    return new MeloError('UNSUPPORTED', 'Float/Double Float Pixel Data (7FE0,0008/0009) is not supported', {
      file,
    });
  }
  const sopClass = dataSet.string('x00080016') || dataSet.string('x00020002');
  const what = sopClass !== undefined && sopClass !== '' ? NON_IMAGE_SOP_CLASSES[sopClass] : undefined;
  const suffix =
    what !== undefined ? ` (the file is ${what})` : sopClass ? ` (SOP Class ${uidForMessage(sopClass)})` : '';
  return new MeloError(
    'BAD_DICOM',
    `no pixel data: the file has no Pixel Data (7FE0,0010) element${suffix}`,
    {
      file,
    },
  );
}
