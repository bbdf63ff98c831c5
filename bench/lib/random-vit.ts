import type { Backbone } from '../../src/checkpoints/load.ts';
import { preprocessConfigFromTimm } from '../../src/imaging/preprocess.ts';
import type { ViTConfig } from '../../src/model/vit-config.ts';
import { expectedWeightShapes, type ViTWeights } from '../../src/model/weights.ts';
import { numel } from '../../src/tensor.ts';
import { Random } from '../../src/util/random.ts';

/**
 * Weights of the real shapes with a ViT-like spread: matrices N(0, 0.02²) (timm's init), LayerNorm scales
 * 1, biases 0. Values do not change the work done, but sane activations keep denormals (which are slow on
 * x86) out of the timings. Drawn from uniforms with matching variance: Box–Muller over 86M values is slow.
 */
export function randomViTWeights(config: ViTConfig, seed: number): ViTWeights {
  const random = new Random(seed);
  const halfWidth = 0.02 * Math.sqrt(3);
  const weights: ViTWeights = new Map();
  for (const [name, shape] of expectedWeightShapes(config)) {
    const data = new Float32Array(numel(shape));
    const isNormScale = shape.length === 1 && /norm\d?\.weight$/.test(name);
    if (isNormScale) data.fill(1);
    else if (!name.endsWith('.bias'))
      for (let i = 0; i < data.length; i++) data[i] = random.uniform(-halfWidth, halfWidth);
    weights.set(name, { shape, data });
  }
  return weights;
}

/** A Backbone around random weights, so benchmarks run melo's real inference path without a checkpoint. */
export function randomBackbone(config: ViTConfig, seed: number): Backbone {
  return {
    dir: '(random weights)',
    layout: 'timm',
    config,
    weights: randomViTWeights(config, seed),
    preprocess: preprocessConfigFromTimm({ input_size: [config.channels, ...config.imageSize] }),
    labels: undefined,
    fingerprint: `random-${seed}`,
  };
}

/** Pixels of `batch` images [batch, C, H, W], uniform in the normalised range. */
export function randomPixels(
  config: ViTConfig,
  batch: number,
  imageSize: readonly [number, number],
  seed: number,
): Float32Array {
  const random = new Random(seed);
  const data = new Float32Array(batch * config.channels * imageSize[0] * imageSize[1]);
  for (let i = 0; i < data.length; i++) data[i] = random.uniform(-2, 2);
  return data;
}
