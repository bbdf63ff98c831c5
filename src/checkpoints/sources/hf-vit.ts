import { MeloError } from '../../errors.ts';
import type { ViTConfig } from '../../model/vit-config.ts';
import { validateViTConfig } from '../../model/vit-config.ts';
import { transpose2d, type ViTWeights } from '../../model/weights.ts';
import type { HostTensor } from '../../tensor.ts';
import type { ConvertedCheckpoint } from './types.ts';

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
    pooling: 'cls',
    numClasses: 0,
  };
  validateViTConfig(config, file);
  return labels ? { config, labels } : { config };
}

function labelsFromId2Label(id2label: unknown): string[] | undefined {
  if (id2label === null || typeof id2label !== 'object') return undefined;
  const entries = Object.entries(id2label as Record<string, unknown>);
  if (entries.length === 0) return undefined;
  const labels: string[] = [];
  for (const [index, label] of entries) labels[Number(index)] = String(label);
  return labels.length === entries.length && labels.every((label) => label !== undefined)
    ? labels
    : undefined;
}

// Ordered rename table from HF names (after the optional `vit.` prefix) to melo's canonical names.
const BLOCK_RENAMES: readonly [string, string, boolean][] = [
  // [HF suffix, canonical suffix, is a linear weight to transpose]
  ['layernorm_before', 'norm1', false],
  ['attention.attention.query', 'attn.query', true],
  ['attention.attention.key', 'attn.key', true],
  ['attention.attention.value', 'attn.value', true],
  ['attention.output.dense', 'attn.proj', true],
  ['layernorm_after', 'norm2', false],
  ['intermediate.dense', 'mlp.fc1', true],
  ['output.dense', 'mlp.fc2', true],
];

/** Renames and reshapes HF ViT tensors into melo's layout; unknown names are returned for the error. */
export function convertHfViT(tensors: Map<string, HostTensor>): ConvertedCheckpoint {
  const weights: ViTWeights = new Map();
  const sourceNames = new Map<string, string>();
  const unexpected: string[] = [];
  const prefix = [...tensors.keys()].some((name) => name.startsWith('vit.')) ? 'vit.' : '';
  const put = (canonical: string, source: string, tensor: HostTensor) => {
    weights.set(canonical, tensor);
    sourceNames.set(canonical, source);
  };
  for (const [name, tensor] of tensors) {
    if (name.startsWith('pooler.') || name.startsWith(`${prefix}pooler.`)) continue; // ViTModel's pooler is unused.
    if (name === 'classifier.weight') {
      put('head.weight', name, transpose2d(tensor));
      continue;
    }
    if (name === 'classifier.bias') {
      put('head.bias', name, tensor);
      continue;
    }
    if (!name.startsWith(prefix)) {
      unexpected.push(name);
      continue;
    }
    const rest = name.slice(prefix.length);
    const canonical = renameBackboneTensor(rest, tensor);
    if (canonical) put(canonical.name, name, canonical.tensor);
    else unexpected.push(name);
  }
  return { weights, sourceNames, unexpected };
}

function renameBackboneTensor(
  name: string,
  tensor: HostTensor,
): { name: string; tensor: HostTensor } | undefined {
  switch (name) {
    case 'embeddings.cls_token':
      return { name: 'cls_token', tensor };
    case 'embeddings.position_embeddings':
      return { name: 'pos_embed', tensor };
    case 'embeddings.patch_embeddings.projection.weight':
      return { name: 'patch_embed.weight', tensor: flattenConvWeight(tensor) };
    case 'embeddings.patch_embeddings.projection.bias':
      return { name: 'patch_embed.bias', tensor };
    case 'layernorm.weight':
      return { name: 'norm.weight', tensor };
    case 'layernorm.bias':
      return { name: 'norm.bias', tensor };
  }
  const match = /^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$/.exec(name);
  if (!match) return undefined;
  const [, layer, module, kind] = match as unknown as [string, string, string, 'weight' | 'bias'];
  const rename = BLOCK_RENAMES.find(([source]) => source === module);
  if (!rename) return undefined;
  const [, target, isLinear] = rename;
  return {
    name: `blocks.${layer}.${target}.${kind}`,
    tensor: isLinear && kind === 'weight' && tensor.shape.length === 2 ? transpose2d(tensor) : tensor,
  };
}

/** Conv weight [D, C, p, p] → [C·p·p, D], matching the patchify order (channel, row, column). */
export function flattenConvWeight(tensor: HostTensor): HostTensor {
  if (tensor.shape.length !== 4) return tensor; // the shape check reports it
  const [d] = tensor.shape as [number];
  const perPatch = tensor.data.length / d;
  return transpose2d({ shape: [d, perPatch], data: tensor.data });
}
