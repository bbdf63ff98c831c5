/**
 * What a JPEG stream's markers say (ITU T.81 B.2): its frame header (process, precision, components
 * with their ids and sampling factors) and the colour-transform signals a decoder goes by, the JFIF
 * APP0 and Adobe APP14 segments. Read up to the first scan.
 */
export interface JpegHeader {
  /** SOF marker low nibble: 0 baseline, 1 extended, 3 lossless, ... */
  readonly process: number;
  readonly precision: number;
  readonly components: readonly { readonly id: number; readonly h: number; readonly v: number }[];
  readonly jfif: boolean;
  /** Adobe APP14 transform flag (0: none, 1: YCbCr, 2: YCCK), undefined without a valid APP14. */
  readonly adobeTransform: number | undefined;
}

export function readJpegHeader(bytes: Uint8Array): JpegHeader | undefined {
  if (bytes.length < 4 || bytes[0] !== 0xff || bytes[1] !== 0xd8) return undefined;
  let jfif = false;
  let adobeTransform: number | undefined;
  let i = 2;
  while (i + 4 <= bytes.length) {
    if (bytes[i] !== 0xff) return undefined;
    const marker = bytes[i + 1]!;
    if (marker === 0xff) {
      i++; // fill byte
      continue;
    }
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd8)) {
      i += 2; // markers without a length
      continue;
    }
    const length = (bytes[i + 2]! << 8) | bytes[i + 3]!;
    const data = i + 4;
    if (marker === 0xe0 && length >= 7 && ascii(bytes, data, 5) === 'JFIF\0') jfif = true;
    // libjpeg reads the transform flag only from a full-length (12 data bytes) Adobe segment.
    if (marker === 0xee && length >= 14 && ascii(bytes, data, 5) === 'Adobe')
      adobeTransform = bytes[data + 11];
    const isFrame = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
    if (isFrame) {
      if (data + 6 > bytes.length) return undefined;
      const count = bytes[data + 5]!;
      const components = [];
      for (let c = 0; c < count && data + 8 + 3 * c < bytes.length; c++) {
        const sampling = bytes[data + 7 + 3 * c]!;
        components.push({ id: bytes[data + 6 + 3 * c]!, h: sampling >> 4, v: sampling & 0x0f });
      }
      return { process: marker & 0x0f, precision: bytes[data]!, components, jfif, adobeTransform };
    }
    if (marker === 0xda || marker === 0xd9 || length < 2) return undefined;
    i += 2 + length;
  }
  return undefined;
}

function ascii(bytes: Uint8Array, start: number, length: number): string {
  return String.fromCharCode(...bytes.subarray(start, start + length));
}
