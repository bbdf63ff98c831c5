import { MeloError } from '../../errors.ts';
import {
  VIT_PRESETS,
  type ViTConfig,
  type ViTPresetName,
  validateViTConfig,
} from '../../model/vit-config.ts';
import { transpose2d, type ViTWeights } from '../../model/weights.ts';
import type { HostTensor } from '../../tensor.ts';
import { flattenConvWeight } from './hf-vit.ts';
import type { ConvertedCheckpoint } from './types.ts';

/** timm's hub layout: `config.json` with `architecture`, optional `model_args`, and `pretrained_cfg`. */
export function isTimmConfig(config: Record<string, unknown>): boolean {
  return typeof config.architecture === 'string';
}

const SIZE_NAMES: Record<string, ViTPresetName> = {
  tiny: 'tiny',
  small: 'small',
  base: 'base',
  large: 'large',
  huge: 'huge',
};

export function timmViTConfig(
  json: Record<string, unknown>,
  file: string,
): { config: ViTConfig; labels?: string[] } {
  const architecture = String(json.architecture);
  const match = /^vit_(tiny|small|base|large|huge)_patch(\d+)_(?:clip_)?(\d+)/.exec(architecture);
  const args = (json.model_args ?? {}) as Record<string, unknown>;
  if (!match && args.embed_dim === undefined) {
    throw new MeloError(
      'UNSUPPORTED',
      `timm architecture '${architecture}' is not a standard ViT name (vit_<size>_patch<p>_<res>) and model_args gives no sizes`,
      { file },
    );
  }
  const preset = VIT_PRESETS[SIZE_NAMES[match?.[1] ?? 'base']!];
  const unsupported = (
    [
      ['class_token', false],
      ['no_embed_class', true],
      ['reg_tokens', (v: unknown) => typeof v === 'number' && v > 0],
      ['global_pool', (v: unknown) => v !== undefined && v !== 'token'],
      ['fc_norm', true],
      ['pre_norm', true],
    ] as const
  ).find(([key, bad]) => (typeof bad === 'function' ? bad(args[key] ?? json[key]) : args[key] === bad));
  if (unsupported) {
    throw new MeloError(
      'UNSUPPORTED',
      `timm option ${unsupported[0]}=${JSON.stringify(args[unsupported[0]] ?? json[unsupported[0]])} is not supported (melo pools the CLS token of a standard ViT)`,
      { file },
    );
  }
  const imageSizeArg = args.img_size ?? Number(match?.[3] ?? 224);
  const imageSize: [number, number] = Array.isArray(imageSizeArg)
    ? [Number(imageSizeArg[0]), Number(imageSizeArg[1])]
    : [Number(imageSizeArg), Number(imageSizeArg)];
  const hiddenSize = Number(args.embed_dim ?? preset.hiddenSize);
  const mlpRatio = args.mlp_ratio === undefined ? preset.mlpSize / preset.hiddenSize : Number(args.mlp_ratio);
  const pretrained = (json.pretrained_cfg ?? {}) as Record<string, unknown>;
  const labelNames = json.label_names ?? pretrained.label_names;
  const config: ViTConfig = {
    imageSize,
    patchSize: Number(args.patch_size ?? match?.[2] ?? 16),
    channels: Number(args.in_chans ?? 3),
    hiddenSize,
    depth: Number(args.depth ?? preset.depth),
    heads: Number(args.num_heads ?? preset.heads),
    mlpSize: Math.round(hiddenSize * mlpRatio),
    layerNormEps: 1e-6,
    qkvBias: args.qkv_bias === undefined ? true : Boolean(args.qkv_bias),
    pooling: 'cls',
    numClasses: 0,
  };
  validateViTConfig(config, file);
  return Array.isArray(labelNames) ? { config, labels: labelNames.map(String) } : { config };
}

const DIRECT: Record<string, string> = {
  cls_token: 'cls_token',
  pos_embed: 'pos_embed',
  'patch_embed.proj.bias': 'patch_embed.bias',
  'norm.weight': 'norm.weight',
  'norm.bias': 'norm.bias',
  'head.bias': 'head.bias',
};

/** Renames timm tensors, splitting the fused qkv projection into query/key/value. */
export function convertTimmViT(tensors: Map<string, HostTensor>): ConvertedCheckpoint {
  const weights: ViTWeights = new Map();
  const sourceNames = new Map<string, string>();
  const unexpected: string[] = [];
  const put = (canonical: string, source: string, tensor: HostTensor) => {
    weights.set(canonical, tensor);
    sourceNames.set(canonical, source);
  };
  for (const [name, tensor] of tensors) {
    const direct = DIRECT[name];
    if (direct) {
      put(direct, name, tensor);
      continue;
    }
    if (name === 'patch_embed.proj.weight') {
      put('patch_embed.weight', name, flattenConvWeight(tensor));
      continue;
    }
    if (name === 'head.weight') {
      put('head.weight', name, transpose2d(tensor));
      continue;
    }
    const match = /^blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$/.exec(
      name,
    );
    if (!match) {
      unexpected.push(name);
      continue;
    }
    const [, layer, module, kind] = match as unknown as [string, string, string, 'weight' | 'bias'];
    const block = `blocks.${layer}`;
    if (module === 'attn.qkv') {
      const parts = splitQkv(tensor, kind);
      if (!parts) {
        unexpected.push(name);
        continue;
      }
      (['query', 'key', 'value'] as const).forEach((projection, i) => {
        put(`${block}.attn.${projection}.${kind}`, `${name}[${projection}]`, parts[i]!);
      });
      continue;
    }
    const isLinear = module !== 'norm1' && module !== 'norm2';
    put(
      `${block}.${module}.${kind}`,
      name,
      isLinear && kind === 'weight' && tensor.shape.length === 2 ? transpose2d(tensor) : tensor,
    );
  }
  return { weights, sourceNames, unexpected };
}

/** qkv weight [3D, D] (rows q, then k, then v) → three [D, D] in melo's [in, out]; bias [3D] → three [D]. */
function splitQkv(tensor: HostTensor, kind: 'weight' | 'bias'): HostTensor[] | undefined {
  const rows = tensor.shape[0]!;
  if (rows % 3 !== 0) return undefined;
  const d = rows / 3;
  const width = kind === 'weight' ? tensor.shape[1]! : 1;
  return [0, 1, 2].map((part) => {
    const data = tensor.data.slice(part * d * width, (part + 1) * d * width);
    return kind === 'weight' ? transpose2d({ shape: [d, width], data }) : { shape: [d], data };
  });
}
