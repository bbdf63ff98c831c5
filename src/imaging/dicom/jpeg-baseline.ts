import type { CodecOutput } from './codec-output.ts';
import { type JpegHeader, readJpegHeader } from './jpeg-header.ts';
import { type EmbindDecoder, runEmbindDecoder, WasmCodec } from './wasm-codec.ts';

/** JPEG baseline and 8-bit extended (processes 1 and 2) through libjpeg-turbo's 8-bit build. */
interface LibJpegTurboModule {
  JPEGDecoder: new () => EmbindDecoder;
}

const codec = new WasmCodec<LibJpegTurboModule>(
  'JPEG',
  '@cornerstonejs/codec-libjpeg-turbo-8bit/decodewasmjs',
);

/** An Adobe APP14 segment with transform 0: tells libjpeg the three components are RGB as they are. */
const ADOBE_NO_TRANSFORM = [
  0xff, 0xee, 0x00, 0x0e, 0x41, 0x64, 0x6f, 0x62, 0x65, 0x00, 0x64, 0x00, 0x00, 0x00, 0x00, 0x00,
];

export async function decodeJpegBaseline(encoded: Uint8Array, photometric: string): Promise<CodecOutput> {
  const header = readJpegHeader(encoded);
  const stream =
    header !== undefined && isUntransformedRgb(header, photometric) ? markedRgb(encoded) : encoded;
  const { info, decoded } = await codec.run((module) => runEmbindDecoder(new module.JPEGDecoder(), stream));
  return {
    width: info.width,
    height: info.height,
    components: info.componentCount,
    words: decoded,
    signed: false,
    planar: false,
    // libjpeg returns three components as RGB, having converted YCbCr itself where the stream says so.
    rgb: info.componentCount === 3,
  };
}

/**
 * A stream with no JFIF or Adobe segment and no 'R','G','B' component ids gives libjpeg no colour
 * signal, and it assumes YCbCr. DICOM's Photometric Interpretation then decides: RGB means the
 * components were stored untransformed (whole-slide tiles do this), unless chroma is subsampled,
 * which only makes sense for YCbCr data mislabelled RGB.
 */
function isUntransformedRgb(header: JpegHeader, photometric: string): boolean {
  if (photometric !== 'RGB' || header.components.length !== 3) return false;
  if (header.jfif || header.adobeTransform !== undefined) return false;
  const [r, g, b] = header.components;
  if (r!.id === 0x52 && g!.id === 0x47 && b!.id === 0x42) return false; // libjpeg reads these as RGB itself
  return header.components.every((c) => c.h === r!.h && c.v === r!.v);
}

function markedRgb(encoded: Uint8Array): Uint8Array {
  const out = new Uint8Array(encoded.length + ADOBE_NO_TRANSFORM.length);
  out.set(encoded.subarray(0, 2), 0);
  out.set(ADOBE_NO_TRANSFORM, 2);
  out.set(encoded.subarray(2), 2 + ADOBE_NO_TRANSFORM.length);
  return out;
}
