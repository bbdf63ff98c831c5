import type { CodecOutput } from './codec-output.ts';
import { type EmbindDecoder, runEmbindDecoder, WasmCodec } from './wasm-codec.ts';

/** JPEG 2000 (lossless and lossy) through OpenJPEG. */
interface OpenJpegModule {
  J2KDecoder: new () => EmbindDecoder;
}

const codec = new WasmCodec<OpenJpegModule>('JPEG 2000', '@cornerstonejs/codec-openjpeg/decodewasmjs');

export async function decodeJpeg2000(encoded: Uint8Array): Promise<CodecOutput> {
  const stream = codestream(encoded);
  const { info, decoded } = await codec.run((module) => {
    const result = runEmbindDecoder(new module.J2KDecoder(), stream);
    // OpenJPEG reports some corrupt codestreams only by printing and returning an empty image.
    if (result.info.width === 0 || result.info.height === 0) throw new Error('no image decoded');
    return result;
  });
  const wide = info.bitsPerSample > 8;
  const buffer = decoded.buffer;
  const words = wide
    ? info.isSigned
      ? new Int16Array(buffer, decoded.byteOffset, decoded.byteLength / 2)
      : new Uint16Array(buffer, decoded.byteOffset, decoded.byteLength / 2)
    : info.isSigned
      ? new Int8Array(buffer, decoded.byteOffset, decoded.byteLength)
      : decoded;
  return {
    width: info.width,
    height: info.height,
    components: info.componentCount,
    words,
    signed: info.isSigned,
    planar: false,
    // OpenJPEG undoes the component transform of YBR_RCT/YBR_ICT itself; the caller reads those as RGB.
    rgb: false,
  };
}

/**
 * DICOM requires a bare codestream, but some writers store a JP2 file (signature box, header boxes,
 * then the codestream in a 'jp2c' box). Returns the codestream inside such a wrapper.
 */
export function codestream(bytes: Uint8Array): Uint8Array {
  const isJp2 =
    bytes.length >= 12 &&
    bytes[0] === 0 &&
    bytes[1] === 0 &&
    bytes[2] === 0 &&
    bytes[3] === 0x0c &&
    bytes[4] === 0x6a &&
    bytes[5] === 0x50;
  if (!isJp2) return bytes;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let i = 0;
  while (i + 8 <= bytes.length) {
    let length = view.getUint32(i);
    const type = String.fromCharCode(bytes[i + 4]!, bytes[i + 5]!, bytes[i + 6]!, bytes[i + 7]!);
    let header = 8;
    if (length === 1 && i + 16 <= bytes.length) {
      length = Number(view.getBigUint64(i + 8));
      header = 16;
    } else if (length === 0) {
      length = bytes.length - i;
    }
    if (type === 'jp2c') return bytes.subarray(i + header, Math.min(bytes.length, i + length));
    if (length < header) break;
    i += length;
  }
  return bytes;
}
