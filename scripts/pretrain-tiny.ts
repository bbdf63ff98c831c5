/**
 * Reproduces the small backbone shipped in models/melo-vit-tiny-fmnist: a ViT for 28-px input trained from
 * scratch by melo's own full fine-tuning on Fashion-MNIST (../shared/data/fashion-mnist, or
 * MELO_FASHION_DIR). Run with `npm run pretrain:tiny`; it takes a while on 2 cores (see the model card).
 *
 *   1. write a randomly initialised checkpoint (timm's ViT init: truncated normal std 0.02 for weights and
 *      position embeddings, zeros for biases, LayerNorm 1/0) in the Hugging Face layout;
 *   2. `melo train --method full` on the Fashion-MNIST training split (val: a stratified 10%);
 *   3. `melo eval` on the test split, whose numbers go into the model card.
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { saveHfCheckpoint } from '../src/checkpoints/save-hf.ts';
import type { PreprocessConfig } from '../src/imaging/image.ts';
import { PLAIN_VIT, type ViTConfig } from '../src/model/vit-config.ts';
import { expectedWeightShapes, type ViTWeights } from '../src/model/weights.ts';
import { numel } from '../src/tensor.ts';
import { Random } from '../src/util/random.ts';

export const TINY_CONFIG: ViTConfig = {
  imageSize: [28, 28],
  patchSize: 4,
  channels: 3,
  hiddenSize: 64,
  depth: 6,
  heads: 4,
  mlpSize: 256,
  layerNormEps: 1e-6,
  qkvBias: true,
  ...PLAIN_VIT,
  numClasses: 0,
};

export const TINY_PREPROCESS: PreprocessConfig = {
  inputSize: [28, 28],
  resizeMode: 'exact',
  resizeSize: [28, 28],
  interpolation: 'bilinear',
  mean: [0.5, 0.5, 0.5],
  std: [0.5, 0.5, 0.5],
};

/** timm's ViT initialisation, seeded. */
export function initViTWeights(config: ViTConfig, seed: number): ViTWeights {
  const random = new Random(seed);
  const truncNormal = (std: number) => {
    for (;;) {
      const value = random.normal();
      if (Math.abs(value) <= 2) return value * std;
    }
  };
  const weights: ViTWeights = new Map();
  for (const [name, shape] of expectedWeightShapes(config)) {
    const data = new Float32Array(numel(shape));
    if (name.endsWith('.bias')) {
      // zeros
    } else if (/norm\d?\.weight$/.test(name)) data.fill(1);
    else if (name === 'cls_token') for (let i = 0; i < data.length; i++) data[i] = random.normal() * 1e-6;
    else for (let i = 0; i < data.length; i++) data[i] = truncNormal(0.02);
    weights.set(name, { shape, data });
  }
  return weights;
}

async function main(): Promise<void> {
  const root = new URL('..', import.meta.url).pathname;
  const fashion = process.env.MELO_FASHION_DIR ?? join(root, '../shared/data/fashion-mnist');
  const out = process.argv[2] ?? join(root, 'models/melo-vit-tiny-fmnist');
  const init = join(root, 'tmp/pretrain-init');
  await rm(init, { recursive: true, force: true });
  await mkdir(init, { recursive: true });
  await saveHfCheckpoint(init, TINY_CONFIG, initViTWeights(TINY_CONFIG, 0), TINY_PREPROCESS);
  const epochs = process.env.MELO_PRETRAIN_EPOCHS ?? '5';
  const { main: cli } = await import('../src/cli/main.ts');
  const args = [
    'train',
    '--backbone',
    init,
    '--data',
    fashion,
    '--method',
    'full',
    '--lr',
    '1e-3',
    '--weight-decay',
    '0.05',
    '--warmup-steps',
    '200',
    '--epochs',
    epochs,
    '--batch-size',
    '128',
    '--label-smoothing',
    '0.1',
    '--metric',
    'accuracy',
    '--limit',
    process.env.MELO_PRETRAIN_LIMIT ?? '24000',
    '--seed',
    '0',
    '--task-name',
    'fashion-mnist',
    '--out',
    out,
  ];
  process.stderr.write(`melo ${args.join(' ')}\n`);
  const code = await cli(args);
  if (code !== 0) process.exit(code);
}

if (process.argv[1]?.endsWith('pretrain-tiny.ts')) await main();
