/**
 * Colour sample rearrangements and conversions, on stored values held as numbers. All return
 * pixel-interleaved samples (R G B R G B ...).
 */

/** Planar Configuration 1 (RRR... GGG... BBB...) to interleaved. */
export function interleavePlanes(planar: Float64Array, pixels: number): Float64Array {
  const out = new Float64Array(pixels * 3);
  for (let i = 0; i < pixels; i++) {
    out[3 * i] = planar[i]!;
    out[3 * i + 1] = planar[pixels + i]!;
    out[3 * i + 2] = planar[2 * pixels + i]!;
  }
  return out;
}

/**
 * YBR_FULL_422 as stored natively (Y1 Y2 Cb Cr for each horizontal pair of pixels) to full-resolution
 * YBR_FULL, repeating each pair's chroma for both pixels.
 */
export function expandYbr422(stored: Float64Array, pixels: number): Float64Array {
  const out = new Float64Array(pixels * 3);
  for (let pair = 0; 2 * pair + 1 < pixels; pair++) {
    const s = 4 * pair;
    const d = 6 * pair;
    out[d] = stored[s]!;
    out[d + 1] = stored[s + 2]!;
    out[d + 2] = stored[s + 3]!;
    out[d + 3] = stored[s + 1]!;
    out[d + 4] = stored[s + 2]!;
    out[d + 5] = stored[s + 3]!;
  }
  return out;
}

/**
 * YBR_FULL to RGB with the ITU-R BT.601 full-range equations given in PS3.3 C.7.6.3.1.2, generalised
 * to `bits` per sample (chroma centred on half the range), clamped to the sample range.
 */
export function ybrFullToRgb(ybr: Float64Array, bits: number): Float64Array {
  const max = 2 ** bits - 1;
  const half = 2 ** (bits - 1);
  const out = new Float64Array(ybr.length);
  for (let i = 0; i < ybr.length; i += 3) {
    const y = ybr[i]!;
    const cb = ybr[i + 1]! - half;
    const cr = ybr[i + 2]! - half;
    out[i] = clamp(y + 1.402 * cr, max);
    out[i + 1] = clamp(y - 0.344136 * cb - 0.714136 * cr, max);
    out[i + 2] = clamp(y + 1.772 * cb, max);
  }
  return out;
}

function clamp(value: number, max: number): number {
  return Math.min(Math.max(value, 0), max);
}
