import { MeloError } from '../../errors.ts';
import { type ConvertedCheckpoint, fromLayout } from '../../model/anatomy.ts';
import { PLAIN_VIT, type ViTConfig, validateViTConfig } from '../../model/vit-config.ts';
import type { HostTensor } from '../../tensor.ts';

/** Hugging Face transformers `ViTModel` / `ViTForImageClassification` (`config.json` with model_type "vit"). */
export function isHfViTConfig(config: Record<string, unknown>): boolean {
  return config.model_type === 'vit';
}

export function hfViTConfig(
  json: Record<string, unknown>,
  file: string,
): { config: ViTConfig; labels?: string[] } {
  const number = (key: string, fallback?: number): number => {
    const value = json[key] ?? fallback;
    if (typeof value !== 'number')
      throw new MeloError('BAD_CHECKPOINT', `config field '${key}' must be a number`, { file });
    return value;
  };
  const act = json.hidden_act ?? 'gelu';
  if (act !== 'gelu') {
    throw new MeloError(
      'UNSUPPORTED',
      `hidden_act '${String(act)}' is not supported (melo's ViT uses exact GELU)`,
      { file },
    );
  }
  const imageSizeField = json.image_size ?? 224;
  const imageSize: [number, number] = Array.isArray(imageSizeField)
    ? [Number(imageSizeField[0]), Number(imageSizeField[1])]
    : [Number(imageSizeField), Number(imageSizeField)];
  const labels = labelsFromId2Label(json.id2label);
  const config: ViTConfig = {
    imageSize,
    patchSize: number('patch_size', 16),
    channels: number('num_channels', 3),
    hiddenSize: number('hidden_size', 768),
    depth: number('num_hidden_layers', 12),
    heads: number('num_attention_heads', 12),
    mlpSize: number('intermediate_size', 3072),
    layerNormEps: number('layer_norm_eps', 1e-12),
    qkvBias: json.qkv_bias === undefined ? true : Boolean(json.qkv_bias),
    ...PLAIN_VIT,
    numClasses: 0,
  };
  validateViTConfig(config, file);
  return labels ? { config, labels } : { config };
}

export function labelsFromId2Label(id2label: unknown): string[] | undefined {
  if (id2label === null || typeof id2label !== 'object') return undefined;
  const entries = Object.entries(id2label as Record<string, unknown>);
  if (entries.length === 0) return undefined;
  const labels: string[] = [];
  for (const [index, label] of entries) labels[Number(index)] = String(label);
  return labels.length === entries.length && labels.every((label) => label !== undefined)
    ? labels
    : undefined;
}

/** Renames and reshapes HF ViT tensors into melo's layout (model/anatomy.ts); unknown names are returned. */
export function convertHfViT(tensors: Map<string, HostTensor>, config: ViTConfig): ConvertedCheckpoint {
  return fromLayout(config, 'hf', tensors);
}
