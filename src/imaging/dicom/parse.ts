import dicomParser, { type DataSet, type Element, type ParseDicomOptions } from 'dicom-parser';
import { MeloError } from '../../errors.ts';
import { DEFAULT_IMAGE_LIMITS, type ImageLimits } from '../limits.ts';
import { boundedInflate, walkDataSet } from './bounds.ts';
import { hasPart10Prefix, isGzip, sniffDataSetEncoding, startsWithFileMeta } from './sniff.ts';
import {
  DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
  EXPLICIT_VR_BIG_ENDIAN,
  IMPLICIT_VR_LITTLE_ENDIAN,
} from './transfer-syntax.ts';

/**
 * Turning bytes into a dicom-parser DataSet, for Part 10 files and for the irregular files met in
 * practice: no preamble, no transfer syntax in the meta header, deflated data sets, and data sets
 * written with implicit VR under an explicit-VR transfer syntax.
 */
export interface ParsedDicom {
  readonly dataSet: DataSet;
  /** The transfer syntax the pixel data is encoded with (declared, or sniffed when none is declared). */
  readonly transferSyntaxUid: string;
  /** Set when the parser stopped early; `dataSet` then holds the elements read before the failure. */
  readonly parseError: string | undefined;
}

const PIXEL_DATA = 'x7fe00010';

/**
 * Parses a DICOM file within `limits` (element count, nesting, inflation; see bounds.ts): the walk that
 * checks them runs before dicom-parser builds its data set.
 */
export function parseDicomBytes(
  bytes: Uint8Array,
  file: string,
  limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
): ParsedDicom {
  if (hasPart10Prefix(bytes)) return parsePart10(bytes, file, limits);
  // File meta information without the 128-byte preamble: give it one, so the parser reads it as Part 10.
  if (startsWithFileMeta(bytes)) {
    const withPreamble = new Uint8Array(132 + bytes.length);
    withPreamble.set([0x44, 0x49, 0x43, 0x4d], 128);
    withPreamble.set(bytes, 132);
    return parsePart10(withPreamble, file, limits);
  }
  const sniffed = sniffDataSetEncoding(bytes, 0);
  if (sniffed !== undefined) return parseRaw(bytes, sniffed, file, limits);
  const hint = isGzip(bytes) ? ' (it is gzip-compressed; decompress it first)' : '';
  throw new MeloError(
    'BAD_DICOM',
    `not a DICOM file${hint}: no 'DICM' prefix at offset 128 and no recognisable data set at the start`,
    { file },
  );
}

function parsePart10(bytes: Uint8Array, file: string, limits: ImageLimits): ParsedDicom {
  let meta: DataSet & { position?: number };
  try {
    meta = dicomParser.readPart10Header(bytes);
  } catch (error) {
    throw new MeloError('BAD_DICOM', `malformed file meta information (${parserMessage(error)})`, { file });
  }
  const start = dataSetStart(meta);
  const declared = meta.string('x00020010');
  if (declared === undefined || declared === '') {
    // Transfer Syntax UID missing from the meta header: judge the encoding from the data set itself.
    const sniffed = sniffAnyGroup(bytes, start);
    if (sniffed === undefined) {
      throw new MeloError(
        'BAD_DICOM',
        'missing Transfer Syntax UID (0002,0010) and the data set encoding could not be recognised',
        { file },
      );
    }
    return parseRaw(bytes.subarray(start), sniffed, file, limits);
  }
  checkWalk(bytes, start, declared, limits, file);
  const inflater = (deflated: Uint8Array, position: number): Uint8Array => {
    const inflated = boundedInflate(deflated, position, limits, file);
    walkDataSet(inflated, position, true, limits, file);
    return inflated;
  };
  try {
    const dataSet = dicomParser.parseDicom(bytes, { inflater: inflater as ParseDicomOptions['inflater'] });
    return { dataSet, transferSyntaxUid: declared, parseError: undefined };
  } catch (error) {
    if (error instanceof MeloError) throw error;
    // Some writers declare an explicit-VR syntax but write the data set with implicit VR.
    if (declared !== IMPLICIT_VR_LITTLE_ENDIAN && sniffAnyGroup(bytes, start) === IMPLICIT_VR_LITTLE_ENDIAN) {
      const reread = parseRaw(bytes.subarray(start), IMPLICIT_VR_LITTLE_ENDIAN, file, limits);
      if (reread.parseError === undefined) return { ...reread, transferSyntaxUid: declared };
    }
    return partialOrThrow(error, declared, file);
  }
}

/** Element count and nesting of a little-endian data set, before the parser reads it. */
function checkWalk(
  bytes: Uint8Array,
  start: number,
  syntax: string,
  limits: ImageLimits,
  file: string,
): void {
  // Deflated data sets are walked once inflated; big endian (retired, rare) is left to the parser.
  if (syntax === DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN || syntax === EXPLICIT_VR_BIG_ENDIAN) return;
  walkDataSet(bytes, start, syntax !== IMPLICIT_VR_LITTLE_ENDIAN, limits, file);
}

/**
 * Where the data set begins: after the meta group, as its Group Length (0002,0000) says. The parser's
 * own position is the fallback; it overshoots when the data set that follows is not explicit VR.
 */
function dataSetStart(meta: DataSet & { position?: number }): number {
  const element = meta.elements.x00020000;
  const length = element !== undefined ? meta.uint32('x00020000') : undefined;
  if (element !== undefined && length !== undefined) return element.dataOffset + 4 + length;
  return meta.position ?? 132;
}

/** The data set after a meta header may start with any group; take the group it declares. */
function sniffAnyGroup(bytes: Uint8Array, offset: number): string | undefined {
  if (offset + 8 > bytes.length) return undefined;
  const little = bytes[offset]! | (bytes[offset + 1]! << 8);
  const big = (bytes[offset]! << 8) | bytes[offset + 1]!;
  return sniffDataSetEncoding(bytes, offset, little) ?? sniffDataSetEncoding(bytes, offset, big);
}

function parseRaw(
  bytes: Uint8Array,
  transferSyntaxUid: string,
  file: string,
  limits: ImageLimits,
): ParsedDicom {
  checkWalk(bytes, 0, transferSyntaxUid, limits, file);
  try {
    const options = {
      TransferSyntaxUID: transferSyntaxUid,
      // Without a VR, undefined-length Pixel Data would be read as a sequence; it holds fragments.
      vrCallback: (tag: string) => (tag === PIXEL_DATA ? 'OB' : undefined),
    };
    const dataSet = dicomParser.parseDicom(bytes, options as ParseDicomOptions);
    const pixelData = dataSet.elements[PIXEL_DATA];
    if (pixelData?.hadUndefinedLength && transferSyntaxUid === IMPLICIT_VR_LITTLE_ENDIAN) {
      readFragments(dataSet.byteArray, pixelData);
    }
    return { dataSet, transferSyntaxUid, parseError: undefined };
  } catch (error) {
    return partialOrThrow(error, transferSyntaxUid, file);
  }
}

function partialOrThrow(error: unknown, transferSyntaxUid: string, file: string): ParsedDicom {
  const partial = partialDataSet(error);
  if (partial === undefined) {
    throw new MeloError('BAD_DICOM', `malformed DICOM data set (${parserMessage(error)})`, { file });
  }
  return { dataSet: partial, transferSyntaxUid, parseError: parserMessage(error) };
}

/**
 * Marks undefined-length Pixel Data read with implicit VR as encapsulated, listing its items the way
 * dicom-parser does for explicit VR: the first item is the Basic Offset Table, the rest are fragments
 * whose `offset` counts from the first fragment's item tag.
 */
function readFragments(bytes: Uint8Array, element: Element): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const end = Math.min(bytes.length, element.dataOffset + element.length);
  const items: { start: number; position: number; length: number }[] = [];
  let i = element.dataOffset;
  while (i + 8 <= end && view.getUint16(i, true) === 0xfffe && view.getUint16(i + 2, true) === 0xe000) {
    const length = view.getUint32(i + 4, true);
    if (i + 8 + length > end) break;
    items.push({ start: i, position: i + 8, length });
    i += 8 + length;
  }
  const [table, ...fragments] = items;
  if (table === undefined) return;
  const first = fragments[0]?.start ?? 0;
  element.encapsulatedPixelData = true;
  element.basicOffsetTable = Array.from({ length: Math.floor(table.length / 4) }, (_, k) =>
    view.getUint32(table.position + 4 * k, true),
  );
  element.fragments = fragments.map((f) => ({
    offset: f.start - first,
    position: f.position,
    length: f.length,
  }));
}

function partialDataSet(error: unknown): DataSet | undefined {
  if (typeof error === 'object' && error !== null && 'dataSet' in error) {
    const dataSet = (error as { dataSet?: DataSet }).dataSet;
    if (dataSet !== undefined && Object.keys(dataSet.elements).length > 0) return dataSet;
  }
  return undefined;
}

/** dicom-parser throws strings, Errors, or { exception, dataSet }; keep the first line of whichever. */
export function parserMessage(error: unknown): string {
  let value: unknown = error;
  if (typeof value === 'object' && value !== null && 'exception' in value) {
    value = (value as { exception: unknown }).exception;
  }
  const text = value instanceof Error ? value.message : String(value);
  return (text.split('\n')[0] ?? text).replace(/^dicomParser\.?:?\s*/, '').trim();
}
