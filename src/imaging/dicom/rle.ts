/**
 * RLE Lossless (PS3.5 Annex G). One frame is a 64-byte header (segment count, then 15 segment
 * offsets, little endian) followed by PackBits-compressed segments: one per byte of each sample, the
 * most significant byte first, samples in order (so a 16-bit RGB frame has R-high, R-low, G-high ...).
 * Returns raw sample words, pixel-interleaved.
 */
export class RleError extends Error {}

export function decodeRleFrame(
  frame: Uint8Array,
  pixels: number,
  samplesPerPixel: number,
  bitsAllocated: number,
): Float64Array {
  if (bitsAllocated % 8 !== 0) throw new RleError(`Bits Allocated ${bitsAllocated} cannot be RLE-encoded`);
  const bytesPerSample = bitsAllocated / 8;
  const expected = samplesPerPixel * bytesPerSample;
  if (frame.length < 64)
    throw new RleError(`frame of ${frame.length} bytes is shorter than the 64-byte RLE header`);
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const count = view.getUint32(0, true);
  if (count !== expected) {
    throw new RleError(`RLE header declares ${count} segments, but the image needs ${expected}`);
  }
  const offsets: number[] = [];
  for (let i = 0; i < count; i++) offsets.push(view.getUint32(4 + 4 * i, true));
  const words = new Float64Array(pixels * samplesPerPixel);
  for (let segment = 0; segment < count; segment++) {
    const start = offsets[segment]!;
    const end = segment + 1 < count ? offsets[segment + 1]! : frame.length;
    if (start < 64 || end > frame.length || end < start) {
      throw new RleError(`RLE segment ${segment + 1} has an invalid offset ${start}`);
    }
    const bytes = unpackBits(frame.subarray(start, end), pixels, segment + 1);
    const sample = Math.floor(segment / bytesPerSample);
    const weight = 2 ** (8 * (bytesPerSample - 1 - (segment % bytesPerSample)));
    for (let p = 0; p < pixels; p++) words[p * samplesPerPixel + sample]! += bytes[p]! * weight;
  }
  return words;
}

/** PackBits: n in 0..127 copies n+1 literal bytes, -127..-1 repeats the next byte 1-n times, -128 is a no-op. */
function unpackBits(segment: Uint8Array, length: number, index: number): Uint8Array {
  const out = new Uint8Array(length);
  let o = 0;
  let i = 0;
  while (o < length && i < segment.length) {
    const header = segment[i++]!;
    const n = header > 127 ? header - 256 : header;
    if (n >= 0) {
      const run = Math.min(n + 1, length - o, segment.length - i);
      out.set(segment.subarray(i, i + run), o);
      o += run;
      i += n + 1;
    } else if (n !== -128) {
      if (i >= segment.length) break;
      const run = Math.min(1 - n, length - o);
      out.fill(segment[i++]!, o, o + run);
      o += run;
    }
  }
  if (o < length)
    throw new RleError(`RLE segment ${index} decodes to ${o} bytes, fewer than the ${length} pixels`);
  return out;
}
