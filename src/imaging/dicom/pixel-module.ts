import type { DataSet } from 'dicom-parser';
import { MeloError } from '../../errors.ts';
import { definedTermForMessage, PHOTOMETRIC_TERMS } from './text.ts';

/** The Image Pixel module attributes (PS3.3 C.7.6.3) that say how to read Pixel Data, validated. */
export interface PixelModule {
  readonly rows: number;
  readonly columns: number;
  readonly samplesPerPixel: 1 | 3;
  readonly bitsAllocated: number;
  readonly bitsStored: number;
  readonly highBit: number;
  readonly pixelRepresentation: 0 | 1;
  readonly photometric: string;
  /** 0: samples interleaved per pixel, 1: one plane per sample. */
  readonly planarConfiguration: 0 | 1;
  readonly frames: number;
}

/** Larger frames than this are refused: a corrupt Rows/Columns must not allocate gigabytes. */
const MAX_PIXELS_PER_FRAME = 1 << 28;

const SUPPORTED_PHOTOMETRIC = new Set([
  'MONOCHROME1',
  'MONOCHROME2',
  'RGB',
  'YBR_FULL',
  'YBR_FULL_422',
  'YBR_RCT',
  'YBR_ICT',
]);

export function readPixelModule(dataSet: DataSet, file: string): PixelModule {
  const rows = requiredUint16(dataSet, 'x00280010', 'Rows (0028,0010)', file);
  const columns = requiredUint16(dataSet, 'x00280011', 'Columns (0028,0011)', file);
  if (rows === 0 || columns === 0) {
    throw new MeloError('BAD_DICOM', `image has no pixels (Rows ${rows}, Columns ${columns})`, { file });
  }
  if (rows * columns > MAX_PIXELS_PER_FRAME) {
    throw new MeloError('BAD_DICOM', `image of ${rows}x${columns} pixels is too large to decode`, { file });
  }
  const samples = dataSet.uint16('x00280002') ?? 1;
  if (samples !== 1 && samples !== 3) {
    throw new MeloError(
      'UNSUPPORTED',
      `Samples per Pixel (0028,0002) of ${samples} is not supported (1 or 3)`,
      {
        file,
      },
    );
  }
  const bitsAllocated = requiredUint16(dataSet, 'x00280100', 'Bits Allocated (0028,0100)', file);
  if (bitsAllocated !== 1 && bitsAllocated !== 8 && bitsAllocated !== 16 && bitsAllocated !== 32) {
    throw new MeloError('UNSUPPORTED', `Bits Allocated (0028,0100) of ${bitsAllocated} is not supported`, {
      file,
    });
  }
  const bitsStored = dataSet.uint16('x00280101') ?? bitsAllocated;
  if (bitsStored < 1 || bitsStored > bitsAllocated) {
    throw new MeloError(
      'BAD_DICOM',
      `Bits Stored (0028,0101) of ${bitsStored} does not fit Bits Allocated ${bitsAllocated}`,
      { file },
    );
  }
  const highBit = dataSet.uint16('x00280102') ?? bitsStored - 1;
  if (highBit < bitsStored - 1 || highBit >= bitsAllocated) {
    throw new MeloError(
      'BAD_DICOM',
      `High Bit (0028,0102) of ${highBit} does not fit Bits Stored ${bitsStored} and Bits Allocated ${bitsAllocated}`,
      { file },
    );
  }
  const representation = dataSet.uint16('x00280103') ?? 0;
  if (representation !== 0 && representation !== 1) {
    throw new MeloError(
      'BAD_DICOM',
      `Pixel Representation (0028,0103) must be 0 or 1, not ${representation}`,
      {
        file,
      },
    );
  }
  const photometric = readPhotometric(dataSet, samples, file);
  const planar = samples === 3 ? (dataSet.uint16('x00280006') ?? 0) : 0;
  if (planar !== 0 && planar !== 1) {
    throw new MeloError('BAD_DICOM', `Planar Configuration (0028,0006) must be 0 or 1, not ${planar}`, {
      file,
    });
  }
  return {
    rows,
    columns,
    samplesPerPixel: samples,
    bitsAllocated,
    bitsStored,
    highBit,
    pixelRepresentation: representation,
    photometric,
    planarConfiguration: planar,
    frames: readNumberOfFrames(dataSet, file),
  };
}

function readPhotometric(dataSet: DataSet, samples: 1 | 3, file: string): string {
  const value = dataSet.string('x00280004')?.trim().toUpperCase();
  if (value === undefined || value === '') {
    if (samples === 1) return 'MONOCHROME2';
    throw new MeloError('BAD_DICOM', 'missing Photometric Interpretation (0028,0004) for a 3-sample image', {
      file,
    });
  }
  if (!SUPPORTED_PHOTOMETRIC.has(value)) {
    throw new MeloError(
      'UNSUPPORTED',
      `photometric interpretation ${definedTermForMessage(value, PHOTOMETRIC_TERMS)} is not supported`,
      { file },
    );
  }
  const expected = value.startsWith('MONOCHROME') ? 1 : 3;
  if (samples !== expected) {
    throw new MeloError(
      'BAD_DICOM',
      `photometric interpretation ${value} needs ${expected} sample(s) per pixel, but Samples per Pixel is ${samples}`,
      { file },
    );
  }
  return value;
}

function readNumberOfFrames(dataSet: DataSet, file: string): number {
  const raw = dataSet.string('x00280008');
  if (raw === undefined || raw.trim() === '') return 1;
  const text = raw.trim();
  if (!/^\+?\d+$/.test(text)) {
    throw new MeloError('BAD_DICOM', 'Number of Frames (0028,0008) is not an integer', {
      file,
    });
  }
  const frames = Number.parseInt(text, 10);
  if (frames < 1) throw new MeloError('BAD_DICOM', `Number of Frames (0028,0008) is ${frames}`, { file });
  return frames;
}

function requiredUint16(dataSet: DataSet, tag: string, name: string, file: string): number {
  const value = dataSet.elements[tag] !== undefined ? dataSet.uint16(tag) : undefined;
  if (value === undefined) throw new MeloError('BAD_DICOM', `missing ${name}`, { file });
  return value;
}
