import type { HostTensor } from '../tensor.ts';

/**
 * Resamples absolute position embeddings [1, prefix + gh·gw, D] to a new grid, like timm's
 * `resample_abs_pos_embed`: keep the prefix (CLS) tokens, interpolate the grid bicubically in the
 * convention of PyTorch's `F.interpolate(mode='bicubic', align_corners=False, antialias=False)`, and
 * concatenate back. Computed in float64.
 */
export function resamplePositionEmbedding(
  posEmbed: HostTensor,
  oldGrid: readonly [number, number],
  newGrid: readonly [number, number],
  prefixTokens = 1,
): HostTensor {
  const [oldH, oldW] = oldGrid;
  const [newH, newW] = newGrid;
  const dim = posEmbed.shape[2]!;
  if (oldH === newH && oldW === newW) return posEmbed;
  const out = new Float32Array((prefixTokens + newH * newW) * dim);
  out.set(posEmbed.data.subarray(0, prefixTokens * dim));
  const rows = cubicTaps(oldH, newH);
  const cols = cubicTaps(oldW, newW);
  const grid = posEmbed.data.subarray(prefixTokens * dim);
  // First along the width: [oldH, newW, D], then along the height.
  const widthPass = new Float64Array(oldH * newW * dim);
  for (let y = 0; y < oldH; y++) {
    for (let x = 0; x < newW; x++) {
      const { indices, weights } = cols[x]!;
      const target = (y * newW + x) * dim;
      for (let t = 0; t < 4; t++) {
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
        for (let t = 0; t < 4; t++) sum += weights[t]! * widthPass[(indices[t]! * newW + x) * dim + c]!;
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

/** PyTorch's bicubic: Keys kernel with A = −0.75, source (dst + 0.5)·in/out − 0.5, borders clamped. */
function cubicTaps(inSize: number, outSize: number): Taps[] {
  const A = -0.75;
  const near = (t: number) => ((A + 2) * t - (A + 3)) * t * t + 1;
  const far = (t: number) => ((A * t - 5 * A) * t + 8 * A) * t - 4 * A;
  const scale = inSize / outSize;
  return Array.from({ length: outSize }, (_, dst) => {
    const source = (dst + 0.5) * scale - 0.5;
    const base = Math.floor(source);
    const t = source - base;
    const weights = [far(t + 1), near(t), near(1 - t), far(2 - t)];
    const indices = [-1, 0, 1, 2].map((offset) => Math.min(inSize - 1, Math.max(0, base + offset)));
    return { indices, weights };
  });
}
