import type { HostTensor } from '../tensor.ts';

/**
 * How a source library resamples position embeddings for another grid. Both are PyTorch's
 * `F.interpolate(mode='bicubic', align_corners=False)`, without and with `antialias`:
 * - 'bicubic': Hugging Face `vit`, `dinov2`, `clip` (`interpolate_pos_encoding`);
 * - 'bicubic-antialias': timm `resample_abs_pos_embed` (its default, used by `checkpoint_filter_fn` and
 *   `dynamic_img_size`; so also open_clip's timm trunks) and Hugging Face `dinov2_with_registers`.
 * They differ even when upsampling: the antialiased kernel is Keys' cubic with a = −0.5 (PIL's),
 * normalised over the taps that fall inside the grid; the plain one uses a = −0.75 with clamped borders.
 */
export type PositionInterpolation = 'bicubic' | 'bicubic-antialias';

/**
 * Resamples absolute position embeddings [1, prefix + gh·gw, D] to a new grid: keep the `prefixTokens`
 * rows (CLS, and registers where they have positions), interpolate the grid rows in `mode`, concatenate
 * back. Computed in float64 (the libraries compute in float32; the difference is float32 rounding).
 */
export function resamplePositionEmbedding(
  posEmbed: HostTensor,
  oldGrid: readonly [number, number],
  newGrid: readonly [number, number],
  prefixTokens = 1,
  mode: PositionInterpolation = 'bicubic',
): HostTensor {
  const [oldH, oldW] = oldGrid;
  const [newH, newW] = newGrid;
  const dim = posEmbed.shape[2]!;
  if (oldH === newH && oldW === newW) return posEmbed;
  const out = new Float32Array((prefixTokens + newH * newW) * dim);
  out.set(posEmbed.data.subarray(0, prefixTokens * dim));
  const taps = mode === 'bicubic' ? cubicTaps : antialiasedCubicTaps;
  const rows = taps(oldH, newH);
  const cols = taps(oldW, newW);
  const grid = posEmbed.data.subarray(prefixTokens * dim);
  // First along the width: [oldH, newW, D], then along the height.
  const widthPass = new Float64Array(oldH * newW * dim);
  for (let y = 0; y < oldH; y++) {
    for (let x = 0; x < newW; x++) {
      const { indices, weights } = cols[x]!;
      const target = (y * newW + x) * dim;
      for (let t = 0; t < indices.length; t++) {
        const source = (y * oldW + indices[t]!) * dim;
        const weight = weights[t]!;
        for (let c = 0; c < dim; c++) widthPass[target + c]! += weight * grid[source + c]!;
      }
    }
  }
  for (let y = 0; y < newH; y++) {
    const { indices, weights } = rows[y]!;
    for (let x = 0; x < newW; x++) {
      const target = (prefixTokens + y * newW + x) * dim;
      for (let c = 0; c < dim; c++) {
        let sum = 0;
        for (let t = 0; t < indices.length; t++)
          sum += weights[t]! * widthPass[(indices[t]! * newW + x) * dim + c]!;
        out[target + c] = sum;
      }
    }
  }
  return { shape: [1, prefixTokens + newH * newW, dim], data: out };
}

interface Taps {
  indices: number[];
  weights: number[];
}

/** Keys' cubic convolution kernel with parameter a, |x| < 2. */
function keys(a: number): (x: number) => number {
  return (x) => {
    const t = Math.abs(x);
    if (t < 1) return ((a + 2) * t - (a + 3)) * t * t + 1;
    if (t < 2) return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a;
    return 0;
  };
}

/** PyTorch's bicubic: Keys kernel with a = −0.75, source (dst + 0.5)·in/out − 0.5, borders clamped. */
function cubicTaps(inSize: number, outSize: number): Taps[] {
  const kernel = keys(-0.75);
  const scale = inSize / outSize;
  return Array.from({ length: outSize }, (_, dst) => {
    const source = (dst + 0.5) * scale - 0.5;
    const base = Math.floor(source);
    const t = source - base;
    const weights = [kernel(t + 1), kernel(t), kernel(1 - t), kernel(2 - t)];
    const indices = [-1, 0, 1, 2].map((offset) => Math.min(inSize - 1, Math.max(0, base + offset)));
    return { indices, weights };
  });
}

/**
 * PyTorch's antialiased bicubic (`_upsample_bicubic2d_aa`, PIL's scheme): Keys kernel with a = −0.5,
 * stretched by the scale when downsampling; taps are the source pixels within the support around
 * centre (dst + 0.5)·in/out, clipped to the grid, and their weights are normalised to sum to one.
 */
function antialiasedCubicTaps(inSize: number, outSize: number): Taps[] {
  const kernel = keys(-0.5);
  const scale = inSize / outSize;
  const support = scale >= 1 ? 2 * scale : 2;
  const invScale = scale >= 1 ? 1 / scale : 1;
  return Array.from({ length: outSize }, (_, dst) => {
    const center = scale * (dst + 0.5);
    const first = Math.max(Math.trunc(center - support + 0.5), 0);
    const last = Math.min(Math.trunc(center + support + 0.5), inSize);
    const indices: number[] = [];
    const weights: number[] = [];
    for (let j = first; j < last; j++) {
      indices.push(j);
      weights.push(kernel((j - center + 0.5) * invScale));
    }
    const total = weights.reduce((a, b) => a + b, 0);
    return { indices, weights: total === 0 ? weights : weights.map((w) => w / total) };
  });
}
