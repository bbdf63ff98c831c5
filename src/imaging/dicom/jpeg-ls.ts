import type { CodecOutput } from './codec-output.ts';
import { CodecFailure, type EmbindDecoder, runEmbindDecoder, WasmCodec } from './wasm-codec.ts';

/** JPEG-LS (lossless and near-lossless) through CharLS. */
interface JpegLsDecoder extends EmbindDecoder {
  getInterleaveMode(): number;
}

interface CharLsModule {
  JpegLSDecoder: new () => JpegLsDecoder;
}

const codec = new WasmCodec<CharLsModule>('JPEG-LS', '@cornerstonejs/codec-charls/decodewasmjs');

export async function decodeJpegLs(encoded: Uint8Array): Promise<CodecOutput> {
  const { info, decoded, interleave } = await codec.run((module) => {
    const decoder = new module.JpegLSDecoder();
    let mode = 0;
    const result = runEmbindDecoder(
      {
        getEncodedBuffer: (length) => decoder.getEncodedBuffer(length),
        decode: () => {
          decoder.decode();
          mode = decoder.getInterleaveMode();
        },
        getFrameInfo: () => decoder.getFrameInfo(),
        getDecodedBuffer: () => decoder.getDecodedBuffer(),
        delete: () => decoder.delete(),
      },
      encoded,
    );
    return { ...result, interleave: mode };
  });
  if (info.bitsPerSample > 16)
    throw new CodecFailure(`${info.bitsPerSample}-bit JPEG-LS samples are not supported`);
  const words =
    info.bitsPerSample > 8
      ? new Uint16Array(decoded.buffer, decoded.byteOffset, decoded.byteLength / 2)
      : decoded;
  return {
    width: info.width,
    height: info.height,
    components: info.componentCount,
    words,
    signed: false,
    // CharLS returns interleave mode 'none' (0) plane by plane; 'line' and 'sample' come back per pixel.
    planar: info.componentCount > 1 && interleave === 0,
    rgb: false,
  };
}
