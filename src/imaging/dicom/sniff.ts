import {
  EXPLICIT_VR_BIG_ENDIAN,
  EXPLICIT_VR_LITTLE_ENDIAN,
  IMPLICIT_VR_LITTLE_ENDIAN,
} from './transfer-syntax.ts';

/**
 * Recognising DICOM by content. A Part 10 file has 'DICM' at offset 128; older or hand-made files
 * start straight with a data set, so the first element is checked for a plausible tag, VR and length.
 */

const VALUE_REPRESENTATIONS = new Set([
  'AE',
  'AS',
  'AT',
  'CS',
  'DA',
  'DS',
  'DT',
  'FD',
  'FL',
  'IS',
  'LO',
  'LT',
  'OB',
  'OD',
  'OF',
  'OL',
  'OV',
  'OW',
  'PN',
  'SH',
  'SL',
  'SQ',
  'SS',
  'ST',
  'SV',
  'TM',
  'UC',
  'UI',
  'UL',
  'UN',
  'UR',
  'US',
  'UT',
  'UV',
]);

const UNDEFINED_LENGTH = 0xffffffff;

export function hasPart10Prefix(bytes: Uint8Array): boolean {
  return (
    bytes.length >= 132 &&
    bytes[128] === 0x44 &&
    bytes[129] === 0x49 &&
    bytes[130] === 0x43 &&
    bytes[131] === 0x4d
  );
}

export function isValueRepresentation(bytes: Uint8Array, offset: number): boolean {
  if (offset + 2 > bytes.length) return false;
  return VALUE_REPRESENTATIONS.has(String.fromCharCode(bytes[offset]!, bytes[offset + 1]!));
}

/**
 * The encoding of a data set that starts at `offset` without file meta information, judged from its
 * first element, whose group must be `group` (0x0008 for a bare data set). Returns a transfer syntax
 * UID for the three uncompressed encodings, or undefined when the bytes do not look like one.
 */
export function sniffDataSetEncoding(bytes: Uint8Array, offset: number, group = 0x0008): string | undefined {
  if (offset + 8 > bytes.length) return undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const explicit = isValueRepresentation(bytes, offset + 4);
  if (view.getUint16(offset, true) === group) {
    if (explicit) return EXPLICIT_VR_LITTLE_ENDIAN;
    const length = view.getUint32(offset + 4, true);
    // An implicit element's length must fit in the file (or be undefined, for a sequence).
    if (length === UNDEFINED_LENGTH || offset + 8 + length <= bytes.length) return IMPLICIT_VR_LITTLE_ENDIAN;
    return undefined;
  }
  // Big endian exists only as explicit VR (implicit VR big endian was never a DICOM transfer syntax).
  if (view.getUint16(offset, false) === group && explicit) return EXPLICIT_VR_BIG_ENDIAN;
  return undefined;
}

/** File meta information (group 0002, always explicit VR little endian) written without the preamble. */
export function startsWithFileMeta(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && bytes[0] === 0x02 && bytes[1] === 0x00 && isValueRepresentation(bytes, 4);
}

export function isGzip(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b;
}

/**
 * True when the bytes are DICOM by content: 'DICM' at offset 128, file meta information without a
 * preamble, or a bare data set whose first element is a plausible group-0008 element.
 */
export function isDicom(bytes: Uint8Array): boolean {
  return hasPart10Prefix(bytes) || startsWithFileMeta(bytes) || sniffDataSetEncoding(bytes, 0) !== undefined;
}
