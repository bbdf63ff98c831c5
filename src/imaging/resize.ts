/**
 * Separable resampling of float images with Pillow's filter semantics, so that a checkpoint sees the
 * same pixels it saw in training (HF and timm preprocess with PIL) while 16-bit sources keep their full
 * precision: Pillow itself can only resample 'F' images one channel at a time, and its 8-bit path rounds.
 *
 * Semantics copied from Pillow's Resample.c (read, not copied): for a downscale the filter support is
 * stretched by the scale factor (antialiasing), taps are normalised to sum to 1, bicubic uses a = -0.5,
 * and the horizontal pass runs before the vertical one with a float32 intermediate. 'nearest' picks the
 * source pixel under each output pixel centre, as Pillow's affine nearest transform does.
 * Unlike Pillow's 'F' mode (but like its 8-bit mode), each pass clamps to [0, 1], which keeps the
 * DecodedImage range invariant and removes bicubic overshoot the way PIL's uint8 path does.
 */
import type { Interpolation } from './image.ts';

/** A float image with any number of interleaved channels (DecodedImage is one). */
export interface FloatImage {
  readonly width: number;
  readonly height: number;
  readonly channels: number;
  readonly data: Float32Array;
}

/** An integer rectangle; `x`/`y` may be negative or the rectangle may overhang when used as an output window. */
export interface PixelRect {
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
}

export interface ResampleOptions {
  /** Resample only this part of the source (crop, then resize). Must lie inside the source. */
  readonly sourceRect?: PixelRect;
  /**
   * Produce only this window of the resized image (resize, then crop). Pixels of the window that fall
   * outside the resized image are 0, which is torchvision's center_crop padding.
   */
  readonly outputWindow?: PixelRect;
}

interface Filter {
  readonly support: number;
  readonly kernel: (x: number) => number;
}

const BILINEAR: Filter = {
  support: 1,
  kernel: (x) => {
    const ax = Math.abs(x);
    return ax < 1 ? 1 - ax : 0;
  },
};

// Keys' cubic with a = -0.5, Pillow's and OpenCV's choice.
const CUBIC_A = -0.5;
const BICUBIC: Filter = {
  support: 2,
  kernel: (x) => {
    const ax = Math.abs(x);
    if (ax < 1) return ((CUBIC_A + 2) * ax - (CUBIC_A + 3)) * ax * ax + 1;
    if (ax < 2) return (((ax - 5) * ax + 8) * ax - 4) * CUBIC_A;
    return 0;
  },
};

/** For each output index: the first source index and the weights of its taps (fixed stride `taps`). */
interface Taps {
  readonly first: Int32Array;
  readonly count: Int32Array;
  readonly weights: Float64Array;
  readonly taps: number;
}

function filterTaps(inSize: number, outSize: number, interpolation: Interpolation): Taps {
  const scale = inSize / outSize;
  if (interpolation === 'nearest') {
    // Pillow's ImagingScaleAffine accumulates the position (start at scale / 2, add scale per pixel);
    // the accumulated rounding decides ties such as 10.5 * 50 / 21 = 25, so it is mirrored here.
    const first = new Int32Array(outSize);
    let position = scale * 0.5;
    for (let i = 0; i < outSize; i++, position += scale)
      first[i] = Math.min(Math.trunc(position), inSize - 1);
    return {
      first,
      count: new Int32Array(outSize).fill(1),
      weights: new Float64Array(outSize).fill(1),
      taps: 1,
    };
  }
  const filter = interpolation === 'bicubic' ? BICUBIC : BILINEAR;
  const filterScale = Math.max(scale, 1);
  const support = filter.support * filterScale;
  const taps = Math.ceil(support) * 2 + 1;
  const first = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Float64Array(outSize * taps);
  const inverseScale = 1 / filterScale;
  for (let i = 0; i < outSize; i++) {
    const center = (i + 0.5) * scale;
    // Math.trunc mirrors C's (int) cast in Pillow, then the same clamps.
    const lo = Math.max(Math.trunc(center - support + 0.5), 0);
    const hi = Math.min(Math.trunc(center + support + 0.5), inSize);
    const n = hi - lo;
    let total = 0;
    for (let k = 0; k < n; k++) {
      const w = filter.kernel((k + lo - center + 0.5) * inverseScale);
      weights[i * taps + k] = w;
      total += w;
    }
    if (total !== 0) for (let k = 0; k < n; k++) weights[i * taps + k] /= total;
    first[i] = lo;
    count[i] = n;
  }
  return { first, count, weights, taps };
}

function clamp01(value: number): number {
  // biome-ignore lint/complexity/useMathMinMax: a plain comparison in the innermost loop
  return value < 0 ? 0 : value > 1 ? 1 : value;
}

/**
 * Resize `source` (or its `sourceRect`) to outWidth × outHeight and return `outputWindow` of the result
 * (the whole result by default).
 */
export function resample(
  source: FloatImage,
  outWidth: number,
  outHeight: number,
  interpolation: Interpolation,
  options: ResampleOptions = {},
): FloatImage {
  const channels = source.channels;
  const rect = options.sourceRect ?? { x: 0, y: 0, width: source.width, height: source.height };
  const window = options.outputWindow ?? { x: 0, y: 0, width: outWidth, height: outHeight };
  if (
    rect.x < 0 ||
    rect.y < 0 ||
    rect.width < 1 ||
    rect.height < 1 ||
    rect.x + rect.width > source.width ||
    rect.y + rect.height > source.height
  ) {
    throw new RangeError(
      `source rect ${rect.x},${rect.y} ${rect.width}x${rect.height} is outside the ${source.width}x${source.height} image`,
    );
  }
  if (outWidth < 1 || outHeight < 1 || !Number.isInteger(outWidth) || !Number.isInteger(outHeight)) {
    throw new RangeError(`resize target ${outWidth}x${outHeight} is not a positive integer size`);
  }

  // The part of the window that lies inside the resized image; the rest stays 0.
  const x0 = Math.max(window.x, 0);
  const x1 = Math.min(window.x + window.width, outWidth);
  const y0 = Math.max(window.y, 0);
  const y1 = Math.min(window.y + window.height, outHeight);
  const out = new Float32Array(window.width * window.height * channels);
  if (x0 >= x1 || y0 >= y1) return { width: window.width, height: window.height, channels, data: out };

  const xTaps = rect.width === outWidth ? undefined : filterTaps(rect.width, outWidth, interpolation);
  const yTaps = rect.height === outHeight ? undefined : filterTaps(rect.height, outHeight, interpolation);

  // Source rows that the vertical pass will read (relative to rect).
  let rowLo = y0;
  let rowHi = y1;
  if (yTaps) {
    rowLo = yTaps.first[y0];
    rowHi = 0;
    for (let y = y0; y < y1; y++) rowHi = Math.max(rowHi, yTaps.first[y] + yTaps.count[y]);
  }

  // Horizontal pass: rows rowLo..rowHi of the rect, columns x0..x1 of the output.
  const midWidth = x1 - x0;
  const mid = horizontalPass(source, rect, rowLo, rowHi - rowLo, x0, x1, xTaps);

  // Vertical pass from `mid` into the window.
  const rowLength = midWidth * channels;
  const rowAcc = new Float64Array(rowLength);
  for (let y = y0; y < y1; y++) {
    const outBase = ((y - window.y) * window.width + (x0 - window.x)) * channels;
    if (!yTaps) {
      out.set(mid.subarray((y - rowLo) * rowLength, (y - rowLo + 1) * rowLength), outBase);
      continue;
    }
    const weights = yTaps.weights;
    const first = yTaps.first[y] - rowLo;
    const n = yTaps.count[y];
    const wBase = y * yTaps.taps;
    // Row-wise accumulation keeps memory access sequential.
    rowAcc.fill(0);
    for (let k = 0; k < n; k++) {
      const w = weights[wBase + k];
      const m = (first + k) * rowLength;
      for (let i = 0; i < rowLength; i++) rowAcc[i] += w * mid[m + i];
    }
    for (let i = 0; i < rowLength; i++) out[outBase + i] = clamp01(rowAcc[i]);
  }
  return { width: window.width, height: window.height, channels, data: out };
}

/** Resample `rows` rows of `rect` (from rect row `firstRow`) horizontally to output columns x0..x1. */
function horizontalPass(
  source: FloatImage,
  rect: PixelRect,
  firstRow: number,
  rows: number,
  x0: number,
  x1: number,
  taps: Taps | undefined,
): Float32Array {
  const channels = source.channels;
  const src = source.data;
  const width = x1 - x0;
  const rowLength = width * channels;
  const mid = new Float32Array(rowLength * rows);
  const srcStride = source.width * channels;
  const rowOrigin = (rect.y + firstRow) * srcStride + rect.x * channels;
  if (!taps) {
    for (let r = 0; r < rows; r++) {
      const from = rowOrigin + r * srcStride + x0 * channels;
      mid.set(src.subarray(from, from + rowLength), r * rowLength);
    }
    return mid;
  }
  const { first, count, weights } = taps;
  const stride = taps.taps;
  if (channels === 3) {
    for (let r = 0; r < rows; r++) {
      const rowBase = rowOrigin + r * srcStride;
      let o = r * rowLength;
      for (let x = x0; x < x1; x++, o += 3) {
        const n = count[x];
        const wBase = x * stride;
        let s = rowBase + first[x] * 3;
        let s0 = 0;
        let s1 = 0;
        let s2 = 0;
        for (let k = 0; k < n; k++, s += 3) {
          const w = weights[wBase + k];
          s0 += w * src[s];
          s1 += w * src[s + 1];
          s2 += w * src[s + 2];
        }
        mid[o] = clamp01(s0);
        mid[o + 1] = clamp01(s1);
        mid[o + 2] = clamp01(s2);
      }
    }
    return mid;
  }
  for (let r = 0; r < rows; r++) {
    const rowBase = rowOrigin + r * srcStride;
    for (let x = x0; x < x1; x++) {
      const n = count[x];
      const wBase = x * stride;
      const s = rowBase + first[x] * channels;
      const o = r * rowLength + (x - x0) * channels;
      for (let c = 0; c < channels; c++) {
        let sum = 0;
        for (let k = 0, i = s + c; k < n; k++, i += channels) sum += weights[wBase + k] * src[i];
        mid[o + c] = clamp01(sum);
      }
    }
  }
  return mid;
}
