import type { PixelModule } from './pixel-module.ts';

/**
 * Raw sample words of one frame of uncompressed (native) Pixel Data, in the order they are stored.
 * 1-bit data is packed least significant bit first (PS3.5 8.1.1 and Annex D); frames of 1-bit data
 * need not start on a byte boundary.
 */
export function nativeFrameWords(
  pixelData: Uint8Array,
  module: PixelModule,
  frameIndex: number,
  littleEndian: boolean,
): Float64Array {
  const count = samplesPerFrame(module);
  const words = new Float64Array(count);
  const bits = module.bitsAllocated;
  if (bits === 1) {
    const firstBit = frameIndex * count;
    for (let i = 0; i < count; i++) {
      const bit = firstBit + i;
      words[i] = (pixelData[bit >> 3]! >> (bit & 7)) & 1;
    }
    return words;
  }
  const bytesPerWord = bits / 8;
  const start = frameIndex * count * bytesPerWord;
  const view = new DataView(pixelData.buffer, pixelData.byteOffset + start, count * bytesPerWord);
  if (bits === 8) {
    for (let i = 0; i < count; i++) words[i] = view.getUint8(i);
  } else if (bits === 16) {
    for (let i = 0; i < count; i++) words[i] = view.getUint16(2 * i, littleEndian);
  } else {
    for (let i = 0; i < count; i++) words[i] = view.getUint32(4 * i, littleEndian);
  }
  return words;
}

/** Samples one frame stores: YBR_FULL_422 keeps two chroma samples per pair of pixels (PS3.3 C.7.6.3.1.2). */
export function samplesPerFrame(module: PixelModule): number {
  const pixels = module.rows * module.columns;
  return module.photometric === 'YBR_FULL_422' ? pixels * 2 : pixels * module.samplesPerPixel;
}

/** Bytes all frames of native Pixel Data need, rounding bit-packed data up to a whole byte. */
export function nativeByteLength(module: PixelModule): number {
  return Math.ceil((samplesPerFrame(module) * module.bitsAllocated * module.frames) / 8);
}
