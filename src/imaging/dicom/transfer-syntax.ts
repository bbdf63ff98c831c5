import { uidForMessage } from './text.ts';

/**
 * Transfer syntaxes this reader knows by name, and how each one's pixel data is decoded. Names appear
 * in errors, so that a user learns which encoding a file uses even when it cannot be read.
 */
export type PixelCodec =
  | 'native'
  | 'rle'
  | 'jpeg-baseline'
  | 'jpeg-extended'
  | 'jpeg-lossless'
  | 'jpeg-ls'
  | 'jpeg-2000'
  | 'unsupported';

export interface TransferSyntax {
  readonly uid: string;
  readonly name: string;
  readonly codec: PixelCodec;
}

export const IMPLICIT_VR_LITTLE_ENDIAN = '1.2.840.10008.1.2';
export const EXPLICIT_VR_LITTLE_ENDIAN = '1.2.840.10008.1.2.1';
export const DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = '1.2.840.10008.1.2.1.99';
export const EXPLICIT_VR_BIG_ENDIAN = '1.2.840.10008.1.2.2';

const KNOWN: readonly TransferSyntax[] = [
  { uid: IMPLICIT_VR_LITTLE_ENDIAN, name: 'Implicit VR Little Endian', codec: 'native' },
  { uid: EXPLICIT_VR_LITTLE_ENDIAN, name: 'Explicit VR Little Endian', codec: 'native' },
  { uid: DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, name: 'Deflated Explicit VR Little Endian', codec: 'native' },
  { uid: EXPLICIT_VR_BIG_ENDIAN, name: 'Explicit VR Big Endian', codec: 'native' },
  { uid: '1.2.840.10008.1.2.5', name: 'RLE Lossless', codec: 'rle' },
  { uid: '1.2.840.10008.1.2.4.50', name: 'JPEG Baseline 8-bit', codec: 'jpeg-baseline' },
  { uid: '1.2.840.10008.1.2.4.51', name: 'JPEG Extended 12-bit', codec: 'jpeg-extended' },
  { uid: '1.2.840.10008.1.2.4.57', name: 'JPEG Lossless, Non-Hierarchical', codec: 'jpeg-lossless' },
  { uid: '1.2.840.10008.1.2.4.70', name: 'JPEG Lossless SV1', codec: 'jpeg-lossless' },
  { uid: '1.2.840.10008.1.2.4.80', name: 'JPEG-LS Lossless', codec: 'jpeg-ls' },
  { uid: '1.2.840.10008.1.2.4.81', name: 'JPEG-LS Near-Lossless', codec: 'jpeg-ls' },
  { uid: '1.2.840.10008.1.2.4.90', name: 'JPEG 2000 Lossless', codec: 'jpeg-2000' },
  { uid: '1.2.840.10008.1.2.4.91', name: 'JPEG 2000', codec: 'jpeg-2000' },
  { uid: '1.2.840.10008.1.2.4.92', name: 'JPEG 2000 Part 2 Multi-component Lossless', codec: 'unsupported' },
  { uid: '1.2.840.10008.1.2.4.93', name: 'JPEG 2000 Part 2 Multi-component', codec: 'unsupported' },
  { uid: '1.2.840.10008.1.2.4.94', name: 'JPIP Referenced', codec: 'unsupported' },
  { uid: '1.2.840.10008.1.2.4.95', name: 'JPIP Referenced Deflate', codec: 'unsupported' },
  { uid: '1.2.840.10008.1.2.4.100', name: 'MPEG2 Main Profile', codec: 'unsupported' },
  { uid: '1.2.840.10008.1.2.4.101', name: 'MPEG2 High Profile', codec: 'unsupported' },
  { uid: '1.2.840.10008.1.2.4.102', name: 'MPEG-4 AVC/H.264 High Profile', codec: 'unsupported' },
  {
    uid: '1.2.840.10008.1.2.4.103',
    name: 'MPEG-4 AVC/H.264 BD-compatible High Profile',
    codec: 'unsupported',
  },
  {
    uid: '1.2.840.10008.1.2.4.104',
    name: 'MPEG-4 AVC/H.264 High Profile For 2D Video',
    codec: 'unsupported',
  },
  {
    uid: '1.2.840.10008.1.2.4.105',
    name: 'MPEG-4 AVC/H.264 High Profile For 3D Video',
    codec: 'unsupported',
  },
  { uid: '1.2.840.10008.1.2.4.106', name: 'MPEG-4 AVC/H.264 Stereo High Profile', codec: 'unsupported' },
  { uid: '1.2.840.10008.1.2.4.107', name: 'HEVC/H.265 Main Profile', codec: 'unsupported' },
  { uid: '1.2.840.10008.1.2.4.108', name: 'HEVC/H.265 Main 10 Profile', codec: 'unsupported' },
  { uid: '1.2.840.10008.1.2.4.201', name: 'High-Throughput JPEG 2000 Lossless', codec: 'unsupported' },
  { uid: '1.2.840.10008.1.2.4.202', name: 'High-Throughput JPEG 2000 RPCL Lossless', codec: 'unsupported' },
  { uid: '1.2.840.10008.1.2.4.203', name: 'High-Throughput JPEG 2000', codec: 'unsupported' },
  { uid: '1.2.840.10008.1.2.6.1', name: 'RFC 2557 MIME encapsulation', codec: 'unsupported' },
];

const BY_UID = new Map(KNOWN.map((syntax) => [syntax.uid, syntax]));

/** Retired JPEG processes (PS3.5 Table A-1, 1.2.840.10008.1.2.4.52 to .66) carry no codec here. */
const RETIRED_JPEG = /^1\.2\.840\.10008\.1\.2\.4\.(5[2-9]|6\d)$/;

export function transferSyntax(uid: string): TransferSyntax {
  const known = BY_UID.get(uid);
  if (known !== undefined) return known;
  if (RETIRED_JPEG.test(uid)) return { uid, name: 'retired JPEG process', codec: 'unsupported' };
  return { uid, name: 'unknown', codec: 'unsupported' };
}

export function describeTransferSyntax(syntax: TransferSyntax): string {
  return `transfer syntax ${uidForMessage(syntax.uid)} (${syntax.name})`;
}
