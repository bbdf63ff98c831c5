import { mkdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { MeloError } from '../errors.ts';
import type { PreprocessConfig } from '../imaging/image.ts';
import { writeJsonAtomic } from '../io/atomic.ts';
import { toLayout } from '../model/anatomy.ts';
import { PLAIN_VIT, type ViTConfig } from '../model/vit-config.ts';
import type { ViTWeights } from '../model/weights.ts';
import type { HostTensor } from '../tensor.ts';
import { writeBoundary } from '../util/write-boundary.ts';
import { writeSafetensors } from './safetensors.ts';

/** melo's canonical weights → Hugging Face `ViTForImageClassification` tensors (the converter's inverse). */
export function toHfTensors(config: ViTConfig, weights: ViTWeights): Map<string, HostTensor> {
  return toLayout(config, 'hf', weights);
}

const PIL_CODES = { nearest: 0, bilinear: 2, bicubic: 3 } as const;

/**
 * Refuses, before any work, a backbone that transformers' `vit` cannot hold: other families, and timm /
 * open_clip variants of the ViT whose options `ViTForImageClassification` lacks (mean pooling with
 * `fc_norm`, registers, layer scale, a pre-norm, a projection). Full fine-tuning writes its result here.
 */
export function assertHfWritable(config: ViTConfig): void {
  const differing = Object.entries(PLAIN_VIT)
    .filter(([key, plain]) => config[key as keyof typeof PLAIN_VIT] !== plain)
    .map(([key]) => `${key} ${JSON.stringify(config[key as keyof typeof PLAIN_VIT])}`);
  if (differing.length === 0) return;
  throw new MeloError(
    'UNSUPPORTED',
    `a fully fine-tuned backbone is written as a Hugging Face ViT, which cannot hold this one (${differing.join(', ')}); train a LoRA adapter or a linear probe instead`,
  );
}

export function hfConfigJson(config: ViTConfig, labels?: readonly string[]): Record<string, unknown> {
  assertHfWritable(config);
  return {
    architectures: [labels ? 'ViTForImageClassification' : 'ViTModel'],
    model_type: 'vit',
    image_size: config.imageSize[0] === config.imageSize[1] ? config.imageSize[0] : [...config.imageSize],
    patch_size: config.patchSize,
    num_channels: config.channels,
    hidden_size: config.hiddenSize,
    num_hidden_layers: config.depth,
    num_attention_heads: config.heads,
    intermediate_size: config.mlpSize,
    hidden_act: 'gelu',
    layer_norm_eps: config.layerNormEps,
    qkv_bias: config.qkvBias,
    hidden_dropout_prob: 0,
    attention_probs_dropout_prob: 0,
    ...(labels
      ? {
          id2label: Object.fromEntries(labels.map((label, i) => [String(i), label])),
          label2id: Object.fromEntries(labels.map((label, i) => [label, i])),
        }
      : {}),
  };
}

export function hfPreprocessorJson(preprocess: PreprocessConfig): Record<string, unknown> {
  const [height, width] = preprocess.inputSize;
  const resize =
    preprocess.resizeMode === 'exact'
      ? { size: { height: preprocess.resizeSize[0], width: preprocess.resizeSize[1] } }
      : {
          size: { shortest_edge: preprocess.resizeSize[0] },
          do_center_crop: true,
          crop_size: { height, width },
        };
  return {
    image_processor_type: 'ViTImageProcessor',
    do_resize: true,
    ...resize,
    resample: PIL_CODES[preprocess.interpolation],
    do_rescale: true,
    rescale_factor: 1 / 255,
    do_normalize: true,
    image_mean: [...preprocess.mean],
    image_std: [...preprocess.std],
  };
}

/**
 * Writes a Hugging Face ViT checkpoint directory (config.json, preprocessor_config.json, model.safetensors)
 * atomically: everything goes to a staging directory, then each file is renamed into place.
 */
export async function saveHfCheckpoint(
  dir: string,
  config: ViTConfig,
  weights: ViTWeights,
  preprocess: PreprocessConfig,
  labels?: readonly string[],
  metadata: Record<string, string> = {},
): Promise<void> {
  await mkdir(dir, { recursive: true });
  const staging = join(dir, `.staging-${process.pid}-${Date.now()}`);
  await mkdir(staging);
  try {
    await writeSafetensors(join(staging, 'model.safetensors'), toHfTensors(config, weights), {
      metadata: { format: 'pt', ...metadata },
    });
    await writeJsonAtomic(join(staging, 'preprocessor_config.json'), hfPreprocessorJson(preprocess));
    await writeJsonAtomic(join(staging, 'config.json'), hfConfigJson(config, labels));
    for (const file of ['model.safetensors', 'preprocessor_config.json', 'config.json']) {
      await rename(join(staging, file), join(dir, file));
      writeBoundary(`published ${file}`);
    }
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
  writeBoundary('removed checkpoint staging directory');
}
