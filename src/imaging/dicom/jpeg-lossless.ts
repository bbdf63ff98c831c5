import { Decoder } from 'jpeg-lossless-decoder-js';
import type { CodecOutput } from './codec-output.ts';
import { readJpegHeader } from './jpeg-header.ts';
import { CodecFailure } from './wasm-codec.ts';

/** JPEG lossless (process 14, any selection value) through jpeg-lossless-decoder-js. */
export function decodeJpegLossless(encoded: Uint8Array): CodecOutput {
  const header = readJpegHeader(encoded);
  if (header === undefined) throw new CodecFailure('no JPEG frame header found');
  if (header.precision > 16) throw new CodecFailure(`sample precision ${header.precision} is not valid`);
  const bytesPerSample = header.precision > 8 ? 2 : 1;
  if (header.components.length !== 1 && !(header.components.length === 3 && bytesPerSample === 1)) {
    throw new CodecFailure(
      `${header.components.length} components of ${header.precision} bits are not supported`,
    );
  }
  const decoder = new Decoder();
  let words: Uint8Array | Uint16Array;
  try {
    const copy = encoded.slice();
    words = decoder.decode(copy.buffer, 0, copy.length, bytesPerSample);
  } catch (error) {
    throw new CodecFailure(error instanceof Error ? error.message : String(error));
  }
  return {
    width: decoder.xDim,
    height: decoder.yDim,
    components: decoder.numComp,
    words,
    signed: false,
    planar: false,
    rgb: false,
  };
}
