import type { DataSet, Element } from 'dicom-parser';
import { MeloError } from '../../errors.ts';
import type { CodecOutput } from './codec-output.ts';
import { expandYbr422, interleavePlanes } from './color.ts';
import { encapsulatedFrame } from './encapsulated-frame.ts';
import { decodeJpeg2000 } from './jpeg-2000.ts';
import { decodeJpegBaseline } from './jpeg-baseline.ts';
import { readJpegHeader } from './jpeg-header.ts';
import { decodeJpegLossless } from './jpeg-lossless.ts';
import { decodeJpegLs } from './jpeg-ls.ts';
import { nativeByteLength, nativeFrameWords } from './native.ts';
import type { PixelModule } from './pixel-module.ts';
import { decodeRleFrame, RleError } from './rle.ts';
import { toStoredValues } from './stored-values.ts';
import { describeTransferSyntax, EXPLICIT_VR_BIG_ENDIAN, type TransferSyntax } from './transfer-syntax.ts';
import { CodecFailure } from './wasm-codec.ts';

/** One frame's stored values, pixel-interleaved, and the colour space they are in. */
export interface StoredFrame {
  readonly values: Float64Array;
  readonly colorSpace: 'MONOCHROME' | 'RGB' | 'YBR_FULL';
}

export async function decodeStoredFrame(
  dataSet: DataSet,
  pixelData: Element,
  syntax: TransferSyntax,
  module: PixelModule,
  frameIndex: number,
  file: string,
): Promise<StoredFrame> {
  if (syntax.codec === 'native') return nativeFrame(dataSet, pixelData, syntax, module, frameIndex, file);
  if (!pixelData.encapsulatedPixelData) {
    throw new MeloError(
      'BAD_DICOM',
      `${describeTransferSyntax(syntax)} needs encapsulated Pixel Data, but it is stored uncompressed`,
      { file },
    );
  }
  const isJpeg =
    syntax.codec === 'jpeg-baseline' || syntax.codec === 'jpeg-extended' || syntax.codec === 'jpeg-lossless';
  const encoded = encapsulatedFrame(dataSet, pixelData, frameIndex, module.frames, isJpeg, file);
  const pixels = module.rows * module.columns;
  // No codec here expands data when it compresses: a frame much larger than its raw size is not one.
  const rawBytes = pixels * module.samplesPerPixel * Math.ceil(module.bitsAllocated / 8);
  if (encoded.length > 2 * rawBytes + 65_536) {
    throw new MeloError(
      'TOO_LARGE',
      `compressed frame ${frameIndex + 1} holds ${encoded.length} bytes, more than twice its ${rawBytes} uncompressed bytes`,
      { file },
    );
  }
  if (syntax.codec === 'rle') {
    let words: Float64Array;
    try {
      words = decodeRleFrame(encoded, pixels, module.samplesPerPixel, module.bitsAllocated);
    } catch (error) {
      if (!(error instanceof RleError)) throw error;
      throw new MeloError(
        'BAD_DICOM',
        `cannot decode frame ${frameIndex + 1} (RLE Lossless): ${error.message}`,
        {
          file,
        },
      );
    }
    return { values: toStoredValues(words, module), colorSpace: colorSpaceOf(module, false) };
  }
  const output = await runCodec(syntax, encoded, module, frameIndex, file);
  if (
    output.width !== module.columns ||
    output.height !== module.rows ||
    output.components !== module.samplesPerPixel
  ) {
    throw new MeloError(
      'BAD_DICOM',
      `${syntax.name} data decodes to ${output.height}x${output.width} with ${output.components} component(s), ` +
        `but the header declares ${module.rows}x${module.columns} with ${module.samplesPerPixel}`,
      { file },
    );
  }
  // A codec that reports signed samples already produced the values; otherwise they are raw words.
  let values = output.signed ? Float64Array.from(output.words) : toStoredValues(output.words, module);
  if (output.planar) values = interleavePlanes(values, pixels);
  return { values, colorSpace: colorSpaceOf(module, output.rgb) };
}

function nativeFrame(
  dataSet: DataSet,
  pixelData: Element,
  syntax: TransferSyntax,
  module: PixelModule,
  frameIndex: number,
  file: string,
): StoredFrame {
  if (pixelData.encapsulatedPixelData) {
    throw new MeloError(
      'BAD_DICOM',
      `Pixel Data is encapsulated, but ${describeTransferSyntax(syntax)} is not`,
      {
        file,
      },
    );
  }
  const bytes = dataSet.byteArray;
  const available = Math.max(0, Math.min(pixelData.length, bytes.length - pixelData.dataOffset));
  const needed = nativeByteLength(module);
  if (available < needed) {
    throw new MeloError(
      'BAD_DICOM',
      `truncated: Pixel Data has ${available} bytes, fewer than the ${needed} ${shape(module)} need`,
      {
        file,
      },
    );
  }
  const pixels = module.rows * module.columns;
  if (module.photometric === 'YBR_FULL_422' && pixels % 2 !== 0) {
    throw new MeloError('BAD_DICOM', `YBR_FULL_422 needs an even number of pixels, not ${pixels}`, { file });
  }
  const data = bytes.subarray(pixelData.dataOffset, pixelData.dataOffset + available);
  const words = nativeFrameWords(data, module, frameIndex, syntax.uid !== EXPLICIT_VR_BIG_ENDIAN);
  let values = toStoredValues(words, module);
  if (module.photometric === 'YBR_FULL_422') values = expandYbr422(values, pixels);
  else if (module.samplesPerPixel === 3 && module.planarConfiguration === 1)
    values = interleavePlanes(values, pixels);
  return { values, colorSpace: colorSpaceOf(module, false) };
}

async function runCodec(
  syntax: TransferSyntax,
  encoded: Uint8Array,
  module: PixelModule,
  frameIndex: number,
  file: string,
): Promise<CodecOutput> {
  if (syntax.codec === 'jpeg-baseline' || syntax.codec === 'jpeg-extended') {
    const precision = readJpegHeader(encoded)?.precision ?? 8;
    if (precision > 8) {
      throw new MeloError(
        'UNSUPPORTED',
        `${describeTransferSyntax(syntax)} is not supported: its ${precision}-bit samples need a 12-bit JPEG codec`,
        { file },
      );
    }
  }
  try {
    switch (syntax.codec) {
      case 'jpeg-baseline':
      case 'jpeg-extended':
        return await decodeJpegBaseline(encoded, module.photometric);
      case 'jpeg-lossless':
        return decodeJpegLossless(encoded);
      case 'jpeg-ls':
        return await decodeJpegLs(encoded);
      case 'jpeg-2000':
        return await decodeJpeg2000(encoded);
      default:
        throw new MeloError('UNSUPPORTED', `${describeTransferSyntax(syntax)} is not supported`, { file });
    }
  } catch (error) {
    if (error instanceof MeloError) throw error;
    const reason =
      error instanceof CodecFailure ? error.message : `unexpected codec failure (${String(error)})`;
    throw new MeloError(
      'BAD_DICOM',
      `cannot decode frame ${frameIndex + 1} of ${shape(module)} (${syntax.name}): ${reason}`,
      { file },
    );
  }
}

/**
 * What the decoded samples are: JPEG codecs may have converted YCbCr to RGB already, and J2K's
 * YBR_RCT/YBR_ICT are undone by the codec, so only YBR_FULL(_422) left as such needs converting.
 */
function colorSpaceOf(module: PixelModule, codecMadeRgb: boolean): StoredFrame['colorSpace'] {
  if (module.samplesPerPixel === 1) return 'MONOCHROME';
  if (codecMadeRgb) return 'RGB';
  return module.photometric === 'YBR_FULL' || module.photometric === 'YBR_FULL_422' ? 'YBR_FULL' : 'RGB';
}

function shape(module: PixelModule): string {
  const samples = module.samplesPerPixel === 1 ? '1 sample' : `${module.samplesPerPixel} samples`;
  const frames = module.frames === 1 ? '1 frame' : `${module.frames} frames`;
  return `${module.rows}x${module.columns} x ${samples} x ${module.bitsAllocated} bits x ${frames}`;
}
