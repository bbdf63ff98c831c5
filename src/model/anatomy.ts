/**
 * A backbone family's anatomy, declared once: which tensors it has (tokens, projections, norms, layer
 * scale), their canonical names and shapes in melo, the projections a LoRA plug-in can target, and where
 * each tensor lives in every on-disk layout the family is read from or written to (Hugging Face, timm,
 * open_clip; PEFT adapter keys follow the family's `peftLayout`). Checkpoint converters, the Hugging Face
 * writer, weight validation, parameter counts, LoRA target validation, adapter shapes, PEFT key mapping
 * and the graph all read this table instead of restating it (timm's one-model-class idea: variants are
 * options of `ViTConfig`, foreign names are a rename table).
 *
 * Canonical names: block tensors are `blocks.<i>.<module>.<weight|bias>`, global ones `<module>.<…>`;
 * projection weights are stored [in, out] (PyTorch's [out, in] transposed) so the forward is a plain
 * MatMul; the patch embedding is [C·p·p, D] (the stride-p convolution flattened in channel, row, column
 * order); the classifier head keeps PyTorch's [classes, features], the one orientation every head in melo
 * uses (backbone heads, task heads, adapter files, the serving stack).
 */
import { MeloError } from '../errors.ts';
import type { HostTensor } from '../tensor.ts';
import { patchGrid, pooledFeatureSize, type ViTConfig } from './vit-config.ts';

/** On-disk layouts a family's weights can be read from and written to. */
export type Layout = 'hf' | 'timm' | 'open_clip';

/** The projections a low-rank plug-in can target, by their `--targets` names. */
export const LORA_TARGETS = ['query', 'key', 'value', 'output', 'fc1', 'fc2', 'patch_embed'] as const;
export type LoraTarget = (typeof LORA_TARGETS)[number];

/**
 * Where one module (or bare parameter) sits in a layout. `part` marks a slice of a fused tensor: timm's
 * `attn.qkv` holds query, key and value as rows [0, D), [D, 2D), [2D, 3D) of one [3D, D] weight.
 */
export interface ModulePath {
  readonly path: string;
  readonly part?: { readonly index: number; readonly of: number };
}

type PathSpec = string | ModulePath;

/**
 * A linear map. `storage`: 'linear', a Linear on disk [out, in] held [in, out]; 'conv', the patch Conv2d
 * on disk [out, C, p, p] held [C·p·p, out]; 'head', a classifier held as on disk, [classes, features].
 */
export interface ProjectionDecl {
  readonly kind: 'projection';
  /** melo's module name: relative to `blocks.<i>` for block scope ('attn.query'), else global ('patch_embed'). */
  readonly name: string;
  readonly scope: 'block' | 'global';
  readonly storage: 'linear' | 'conv' | 'head';
  /** Set when LoRA can plug in here: the `--targets` name. */
  readonly target?: LoraTarget;
  readonly shape: (config: ViTConfig) => { readonly in: number; readonly out: number };
  readonly bias: (config: ViTConfig) => boolean;
  /** Declared but absent from a given config (the head when the checkpoint has none, CLIP's projection). */
  readonly present?: (config: ViTConfig) => boolean;
  readonly paths: Partial<Record<Layout, PathSpec>>;
}

/** A LayerNorm: weight and bias [D]. */
export interface NormDecl {
  readonly kind: 'norm';
  readonly name: string;
  readonly scope: 'block' | 'global';
  readonly present?: (config: ViTConfig) => boolean;
  readonly paths: Partial<Record<Layout, PathSpec>>;
}

/** A bare parameter (CLS token, position embeddings, register tokens, layer-scale γ). */
export interface ParameterDecl {
  readonly kind: 'parameter';
  readonly name: string;
  readonly scope: 'block' | 'global';
  readonly shape: (config: ViTConfig) => readonly number[];
  readonly present?: (config: ViTConfig) => boolean;
  readonly paths: Partial<Record<Layout, PathSpec>>;
}

export type ModuleDecl = ProjectionDecl | NormDecl | ParameterDecl;

/** How a layout names a family's tensors beyond the per-module paths. */
export interface LayoutDecl {
  /**
   * Prefix of every backbone tensor ('vit.' in ViTForImageClassification). The head is never prefixed.
   * With `prefixOptional` the loader accepts files with and without it (ViTModel has none).
   */
  readonly prefix: string;
  readonly prefixOptional?: boolean;
  /** Path of block `i`, '{i}' standing for the index ('encoder.layer.{i}'). */
  readonly block: string;
  /** Tensors the family does not use (ViTModel's pooler): skipped when reading. */
  readonly ignore?: RegExp;
}

export type BackboneFamily = 'vit' | 'dinov2' | 'dinov2_with_registers' | 'clip';

export interface FamilyDecl {
  readonly family: BackboneFamily;
  readonly layouts: Partial<Record<Layout, LayoutDecl>>;
  /** The layout whose module paths PEFT adapter keys use (PEFT names modules as that library's model does). */
  readonly peftLayout: Layout;
  readonly modules: readonly ModuleDecl[];
}

const always = () => true;
const square = (config: ViTConfig) => ({ in: config.hiddenSize, out: config.hiddenSize });

/** Where each standard ViT tensor sits in one layout (module paths relative to the prefix / block). */
interface ViTPathTable {
  readonly patch: PathSpec;
  readonly cls: PathSpec;
  readonly registers?: PathSpec;
  readonly pos: PathSpec;
  readonly preNorm?: PathSpec;
  readonly norm1: PathSpec;
  readonly query: PathSpec;
  readonly key: PathSpec;
  readonly value: PathSpec;
  readonly output: PathSpec;
  readonly ls1?: PathSpec;
  readonly norm2: PathSpec;
  readonly fc1: PathSpec;
  readonly fc2: PathSpec;
  readonly ls2?: PathSpec;
  readonly norm?: PathSpec;
  readonly fcNorm?: PathSpec;
  readonly head?: PathSpec;
  readonly projection?: PathSpec;
}

/** Every path of one tensor across the layouts that have it. */
function pathsOf(
  tables: Partial<Record<Layout, ViTPathTable>>,
  key: keyof ViTPathTable,
): Partial<Record<Layout, PathSpec>> {
  const out: Partial<Record<Layout, PathSpec>> = {};
  for (const [layout, table] of Object.entries(tables) as [Layout, ViTPathTable][]) {
    const path = table[key];
    if (path !== undefined) out[layout] = path;
  }
  return out;
}

/** The pooled vector before any projection: D, or 2D for CLS ++ mean patch (HF `Dinov2ForImageClassification`). */
function pooledSize(config: ViTConfig): number {
  return config.pooling === 'cls+mean' ? 2 * config.hiddenSize : config.hiddenSize;
}

/**
 * The modules of one ViT in forward order, every variant an option of the config (timm's one model
 * class): register tokens, a pre-norm, layer scale, a final norm on the tokens or on the pooled vector,
 * a bias-free projection after pooling. Families differ only in the names their layouts give them.
 */
function vitModules(tables: Partial<Record<Layout, ViTPathTable>>): ModuleDecl[] {
  const paths = (key: keyof ViTPathTable) => pathsOf(tables, key);
  const d = (config: ViTConfig) => [config.hiddenSize];
  return [
    {
      kind: 'projection',
      name: 'patch_embed',
      scope: 'global',
      storage: 'conv',
      target: 'patch_embed',
      shape: (config) => ({ in: config.channels * config.patchSize ** 2, out: config.hiddenSize }),
      // timm drops the patch bias when it adds a pre-norm (CLIP), as CLIP's own patch_embedding has none.
      bias: (config) => !config.preNorm,
      paths: paths('patch'),
    },
    {
      kind: 'parameter',
      name: 'cls_token',
      scope: 'global',
      shape: (config) => [1, 1, config.hiddenSize],
      paths: paths('cls'),
    },
    {
      kind: 'parameter',
      name: 'reg_token',
      scope: 'global',
      shape: (config) => [1, config.registerTokens, config.hiddenSize],
      present: (config) => config.registerTokens > 0,
      paths: paths('registers'),
    },
    {
      kind: 'parameter',
      name: 'pos_embed',
      scope: 'global',
      shape: (config) => {
        const [gh, gw] = patchGrid(config);
        return [1, (config.positionEmbedding === 'patches' ? 0 : 1) + gh * gw, config.hiddenSize];
      },
      paths: paths('pos'),
    },
    {
      kind: 'norm',
      name: 'norm_pre',
      scope: 'global',
      present: (config) => config.preNorm,
      paths: paths('preNorm'),
    },
    { kind: 'norm', name: 'norm1', scope: 'block', paths: paths('norm1') },
    ...(['query', 'key', 'value'] as const).map(
      (target): ProjectionDecl => ({
        kind: 'projection',
        name: `attn.${target}`,
        scope: 'block',
        storage: 'linear',
        target,
        shape: square,
        bias: (config) => config.qkvBias,
        paths: paths(target),
      }),
    ),
    {
      kind: 'projection',
      name: 'attn.proj',
      scope: 'block',
      storage: 'linear',
      target: 'output',
      shape: square,
      bias: always,
      paths: paths('output'),
    },
    {
      kind: 'parameter',
      name: 'ls1',
      scope: 'block',
      shape: d,
      present: (config) => config.layerScale,
      paths: paths('ls1'),
    },
    { kind: 'norm', name: 'norm2', scope: 'block', paths: paths('norm2') },
    {
      kind: 'projection',
      name: 'mlp.fc1',
      scope: 'block',
      storage: 'linear',
      target: 'fc1',
      shape: (config) => ({ in: config.hiddenSize, out: config.mlpSize }),
      bias: always,
      paths: paths('fc1'),
    },
    {
      kind: 'projection',
      name: 'mlp.fc2',
      scope: 'block',
      storage: 'linear',
      target: 'fc2',
      shape: (config) => ({ in: config.mlpSize, out: config.hiddenSize }),
      bias: always,
      paths: paths('fc2'),
    },
    {
      kind: 'parameter',
      name: 'ls2',
      scope: 'block',
      shape: d,
      present: (config) => config.layerScale,
      paths: paths('ls2'),
    },
    {
      kind: 'norm',
      name: 'norm',
      scope: 'global',
      present: (config) => config.finalNorm === 'tokens',
      paths: paths('norm'),
    },
    {
      kind: 'norm',
      name: 'fc_norm',
      scope: 'global',
      present: (config) => config.finalNorm === 'pooled',
      paths: paths('fcNorm'),
    },
    {
      kind: 'projection',
      name: 'projection',
      scope: 'global',
      storage: 'head',
      shape: (config) => ({ in: pooledSize(config), out: config.projectionSize }),
      bias: () => false,
      present: (config) => config.projectionSize > 0,
      paths: paths('projection'),
    },
    {
      kind: 'projection',
      name: 'head',
      scope: 'global',
      storage: 'head',
      shape: (config) => ({ in: pooledFeatureSize(config), out: config.numClasses }),
      bias: always,
      present: (config) => config.numClasses > 0,
      paths: paths('head'),
    },
  ];
}

/** timm's VisionTransformer names (and open_clip's timm trunk, under `visual.trunk.`). */
const TIMM_PATHS: ViTPathTable = {
  patch: 'patch_embed.proj',
  cls: 'cls_token',
  registers: 'reg_token',
  pos: 'pos_embed',
  preNorm: 'norm_pre',
  norm1: 'norm1',
  query: { path: 'attn.qkv', part: { index: 0, of: 3 } },
  key: { path: 'attn.qkv', part: { index: 1, of: 3 } },
  value: { path: 'attn.qkv', part: { index: 2, of: 3 } },
  output: 'attn.proj',
  ls1: 'ls1.gamma',
  norm2: 'norm2',
  fc1: 'mlp.fc1',
  fc2: 'mlp.fc2',
  ls2: 'ls2.gamma',
  norm: 'norm',
  fcNorm: 'fc_norm',
  head: 'head',
};

const TIMM_LAYOUT: LayoutDecl = { prefix: '', block: 'blocks.{i}' };

/**
 * The plain ViT (Dosovitskiy et al. 2021) and its timm variants: Hugging Face `vit` (`ViTModel`,
 * `ViTForImageClassification`), timm `vit_*` (fused qkv; MAE / RETFound: `global_pool='avg'` with
 * `fc_norm`), and open_clip models whose vision tower is a timm ViT (BiomedCLIP: `visual.trunk.*` and the
 * projection `visual.head.proj`; the text tower is not read).
 */
export const VIT_FAMILY: FamilyDecl = {
  family: 'vit',
  layouts: {
    hf: { prefix: 'vit.', prefixOptional: true, block: 'encoder.layer.{i}', ignore: /^(?:vit\.)?pooler\./ },
    timm: TIMM_LAYOUT,
    open_clip: { prefix: 'visual.trunk.', block: 'blocks.{i}', ignore: /^(?!visual\.)/ },
  },
  peftLayout: 'hf',
  modules: vitModules({
    hf: {
      patch: 'embeddings.patch_embeddings.projection',
      cls: 'embeddings.cls_token',
      pos: 'embeddings.position_embeddings',
      norm1: 'layernorm_before',
      query: 'attention.attention.query',
      key: 'attention.attention.key',
      value: 'attention.attention.value',
      output: 'attention.output.dense',
      norm2: 'layernorm_after',
      fc1: 'intermediate.dense',
      fc2: 'output.dense',
      norm: 'layernorm',
      head: 'classifier',
    },
    timm: TIMM_PATHS,
    open_clip: { ...TIMM_PATHS, projection: 'visual.head.proj' },
  }),
};

/** Hugging Face `dinov2` / `dinov2_with_registers` names (layer scale `lambda1`, MLP `mlp.fc1`). */
const HF_DINOV2_PATHS: ViTPathTable = {
  patch: 'embeddings.patch_embeddings.projection',
  cls: 'embeddings.cls_token',
  registers: 'embeddings.register_tokens',
  pos: 'embeddings.position_embeddings',
  norm1: 'norm1',
  query: 'attention.attention.query',
  key: 'attention.attention.key',
  value: 'attention.attention.value',
  output: 'attention.output.dense',
  ls1: 'layer_scale1.lambda1',
  norm2: 'norm2',
  fc1: 'mlp.fc1',
  fc2: 'mlp.fc2',
  ls2: 'layer_scale2.lambda1',
  norm: 'layernorm',
  head: 'classifier',
};

/**
 * DINOv2 (Oquab et al. 2024; RAD-DINO is one): Hugging Face `dinov2` (`Dinov2Model`,
 * `Dinov2ForImageClassification`, whose head reads CLS ++ mean patch) and timm `vit_*_dinov2`. Layer
 * scale on both residual branches; `mask_token` is a pre-training tensor and is not read.
 */
export const DINOV2_FAMILY: FamilyDecl = {
  family: 'dinov2',
  layouts: {
    hf: {
      prefix: 'dinov2.',
      prefixOptional: true,
      block: 'encoder.layer.{i}',
      ignore: /^(?:dinov2\.)?embeddings\.mask_token$/,
    },
    timm: TIMM_LAYOUT,
  },
  peftLayout: 'hf',
  modules: vitModules({ hf: HF_DINOV2_PATHS, timm: TIMM_PATHS }),
};

/**
 * DINOv2 with registers (Darcet et al. 2024): Hugging Face `dinov2_with_registers` (registers inserted
 * after CLS once positions are added) and timm `vit_*_reg4_dinov2` (`no_embed_class`: CLS and registers
 * have no position). The registers are never pooled.
 */
export const DINOV2_WITH_REGISTERS_FAMILY: FamilyDecl = {
  family: 'dinov2_with_registers',
  layouts: {
    hf: {
      prefix: 'dinov2_with_registers.',
      prefixOptional: true,
      block: 'encoder.layer.{i}',
      ignore: /^(?:dinov2_with_registers\.)?embeddings\.mask_token$/,
    },
    timm: TIMM_LAYOUT,
  },
  peftLayout: 'hf',
  modules: vitModules({ hf: HF_DINOV2_PATHS, timm: TIMM_PATHS }),
};

/**
 * CLIP's vision tower (Radford et al. 2021): Hugging Face `clip_vision_model` and the vision part of a
 * full `clip` checkpoint (the text tower is not read). Pre-norm `pre_layrnorm`, quick GELU, no patch bias,
 * `post_layernorm` on the pooled CLS, then the bias-free `visual_projection`. The class embedding [D] and
 * the position table [1 + N, D] are stored flat; they are reshaped to melo's [1, 1, D] and [1, 1 + N, D].
 */
export const CLIP_FAMILY: FamilyDecl = {
  family: 'clip',
  layouts: {
    hf: {
      prefix: 'vision_model.',
      block: 'encoder.layers.{i}',
      ignore: /^(?:text_model\.|text_projection\.|logit_scale$|vision_model\.embeddings\.position_ids$)/,
    },
  },
  peftLayout: 'hf',
  modules: vitModules({
    hf: {
      patch: 'embeddings.patch_embedding',
      cls: 'embeddings.class_embedding',
      pos: 'embeddings.position_embedding.weight',
      preNorm: 'pre_layrnorm',
      norm1: 'layer_norm1',
      query: 'self_attn.q_proj',
      key: 'self_attn.k_proj',
      value: 'self_attn.v_proj',
      output: 'self_attn.out_proj',
      norm2: 'layer_norm2',
      fc1: 'mlp.fc1',
      fc2: 'mlp.fc2',
      fcNorm: 'post_layernorm',
      projection: 'visual_projection',
      head: 'classifier',
    },
  }),
};

export const FAMILIES: Readonly<Record<BackboneFamily, FamilyDecl>> = {
  vit: VIT_FAMILY,
  dinov2: DINOV2_FAMILY,
  dinov2_with_registers: DINOV2_WITH_REGISTERS_FAMILY,
  clip: CLIP_FAMILY,
};

export function familyOf(config: ViTConfig): FamilyDecl {
  return FAMILIES[config.family];
}

// ---------------------------------------------------------------------------------------------------
// LoRA slots and the "<layer>.<target>" key (parsed here and nowhere else)

/** One projection LoRA plugs into: a block's (layer defined) or a global one (layer undefined). */
export interface LoraSlot {
  readonly layer: number | undefined;
  readonly target: LoraTarget;
}

/** An adapter's key for a slot: `"<layer>.<target>"` in a block, `"<target>"` for a global projection. */
export function slotKey(slot: LoraSlot): string {
  return slot.layer === undefined ? slot.target : `${slot.layer}.${slot.target}`;
}

export function parseSlotKey(key: string): LoraSlot {
  const match = /^(?:(\d+)\.)?([a-z_0-9]+)$/.exec(key);
  const target = match?.[2] as LoraTarget | undefined;
  if (!match || !target || !LORA_TARGETS.includes(target))
    throw new RangeError(`'${key}' is not a LoRA slot key (<layer>.<target> or <target>)`);
  return { layer: match[1] === undefined ? undefined : Number(match[1]), target };
}

/** The projection a target names, in a family (or a config's family). */
export function targetProjection(of: ViTConfig | FamilyDecl, target: LoraTarget): ProjectionDecl {
  const family = 'modules' in of ? of : familyOf(of);
  const found = family.modules.find(
    (module): module is ProjectionDecl => module.kind === 'projection' && module.target === target,
  );
  if (!found) throw new MeloError('USAGE', `the ${family.family} family has no '${target}' projection`);
  return found;
}

/** The `--targets` names a family declares. */
export function familyTargets(family: FamilyDecl): LoraTarget[] {
  return LORA_TARGETS.filter((target) =>
    family.modules.some((module) => module.kind === 'projection' && module.target === target),
  );
}

/** Whether the target's projection sits in every block (layers_to_transform applies) or once. */
export function isBlockTarget(config: ViTConfig, target: LoraTarget): boolean {
  return targetProjection(config, target).scope === 'block';
}

/** [in, out] of the projection a slot plugs into: A is [rank, in], B [out, rank]. */
export function projectionShape(config: ViTConfig, target: LoraTarget): { in: number; out: number } {
  return targetProjection(config, target).shape(config);
}

/** The canonical weight name of a slot's projection ('blocks.3.attn.query.weight', 'patch_embed.weight'). */
export function slotWeightName(config: ViTConfig, slot: LoraSlot): string {
  const projection = targetProjection(config, slot.target);
  return `${moduleName(projection, slot.layer)}.weight`;
}

/**
 * The slots `targets` make on the given blocks: global ones first (they run first), then block by block
 * in the order `targets` lists them (the order a fresh adapter draws its random factors in).
 */
export function loraSlots(
  config: ViTConfig,
  targets: readonly LoraTarget[],
  layers: readonly number[],
): LoraSlot[] {
  const slots: LoraSlot[] = [];
  for (const target of targets) if (!isBlockTarget(config, target)) slots.push({ layer: undefined, target });
  for (const layer of layers) {
    for (const target of targets) if (isBlockTarget(config, target)) slots.push({ layer, target });
  }
  return slots;
}

/** Forward order of two slots (global first, then by block, then in LORA_TARGETS order). */
export function compareSlots(a: LoraSlot, b: LoraSlot): number {
  return (a.layer ?? -1) - (b.layer ?? -1) || LORA_TARGETS.indexOf(a.target) - LORA_TARGETS.indexOf(b.target);
}

/**
 * Where the low-rank factors sit when an adapter file stores them as PEFT does: for a Linear, A [r, in]
 * and B [out, r] as melo holds them; for a Conv2d target PEFT's lora_A is a Conv2d (r, C, p, p) and its
 * lora_B a 1×1 Conv2d (out, r, 1, 1) — the same numbers, other shapes.
 */
export function peftFactorShapes(
  config: ViTConfig,
  target: LoraTarget,
  rank: number,
): { A: readonly number[]; B: readonly number[] } {
  const projection = targetProjection(config, target);
  const { in: inFeatures, out } = projection.shape(config);
  if (projection.storage === 'conv')
    return { A: [rank, config.channels, config.patchSize, config.patchSize], B: [out, rank, 1, 1] };
  return { A: [rank, inFeatures], B: [out, rank] };
}

/**
 * The module path a slot has in the family's PEFT layout, as PEFT names it (without `base_model.model.`):
 * 'vit.encoder.layer.3.attention.attention.query'. With `pattern` it is a regular expression source
 * matching that path in any block (dots escaped, the block index `\d+`).
 */
export function peftModulePath(family: FamilyDecl, slot: LoraSlot, pattern = false): string {
  const layout = family.layouts[family.peftLayout]!;
  const projection = targetProjection(family, slot.target);
  const spec = projection.paths[family.peftLayout];
  if (spec === undefined || typeof spec !== 'string')
    throw new MeloError(
      'UNSUPPORTED',
      `PEFT cannot name the ${slot.target} projection of a ${family.family}`,
    );
  const escaped = (text: string) => (pattern ? text.replaceAll('.', '\\.') : text);
  const block =
    projection.scope === 'block'
      ? `${layout.block
          .split('{i}')
          .map(escaped)
          .join(pattern ? '\\d+' : String(slot.layer))}${escaped('.')}`
      : '';
  return `${escaped(layout.prefix)}${block}${escaped(spec)}`;
}

/** Every module path the family declares in its PEFT layout (to tell whether a short name is ambiguous). */
export function peftDeclaredPaths(family: FamilyDecl): string[] {
  return family.modules.flatMap((module) => {
    const spec = module.paths[family.peftLayout];
    return spec === undefined ? [] : [typeof spec === 'string' ? spec : spec.path];
  });
}

// ---------------------------------------------------------------------------------------------------
// Canonical tensors, shapes and counts

/** One canonical tensor: its name, shape, and the declaration it comes from. */
export interface CanonicalTensor {
  readonly name: string;
  readonly shape: readonly number[];
  readonly module: ModuleDecl;
  readonly layer: number | undefined;
  readonly role: 'weight' | 'bias' | 'parameter';
}

function moduleName(module: ModuleDecl, layer: number | undefined): string {
  return module.scope === 'block' ? `blocks.${layer}.${module.name}` : module.name;
}

/** Every tensor a config's backbone has, in forward order (blocks expanded). */
export function canonicalTensors(config: ViTConfig): CanonicalTensor[] {
  const modules = familyOf(config).modules.filter((module) => (module.present ?? always)(config));
  const out: CanonicalTensor[] = [];
  const emit = (module: ModuleDecl, layer: number | undefined) => {
    const name = moduleName(module, layer);
    if (module.kind === 'parameter') {
      out.push({ name, shape: module.shape(config), module, layer, role: 'parameter' });
      return;
    }
    if (module.kind === 'norm') {
      const d = [config.hiddenSize];
      out.push({ name: `${name}.weight`, shape: d, module, layer, role: 'weight' });
      out.push({ name: `${name}.bias`, shape: d, module, layer, role: 'bias' });
      return;
    }
    const { in: inFeatures, out: outFeatures } = module.shape(config);
    const weight = module.storage === 'head' ? [outFeatures, inFeatures] : [inFeatures, outFeatures];
    out.push({ name: `${name}.weight`, shape: weight, module, layer, role: 'weight' });
    if (module.bias(config))
      out.push({ name: `${name}.bias`, shape: [outFeatures], module, layer, role: 'bias' });
  };
  // Global modules before the first block stay first, those after the last block come last.
  const firstBlock = modules.findIndex((module) => module.scope === 'block');
  const before = modules.slice(0, firstBlock < 0 ? modules.length : firstBlock);
  const blocks = modules.filter((module) => module.scope === 'block');
  const after = firstBlock < 0 ? [] : modules.slice(firstBlock).filter((module) => module.scope === 'global');
  for (const module of before) emit(module, undefined);
  for (let layer = 0; layer < config.depth; layer++) for (const module of blocks) emit(module, layer);
  for (const module of after) emit(module, undefined);
  return out;
}

/** Parameters of the backbone (without head), for reporting shares such as LoRA's 0.17%. */
export function backboneParameterCount(config: ViTConfig): number {
  return canonicalTensors({ ...config, numClasses: 0 }).reduce(
    (total, tensor) => total + tensor.shape.reduce((a, b) => a * b, 1),
    0,
  );
}

// ---------------------------------------------------------------------------------------------------
// Layout conversion (read: timm's checkpoint_filter_fn; write: its inverse)

function blockPath(layout: LayoutDecl, layer: number): string {
  return layout.block.replace('{i}', String(layer));
}

/** The file name and slice of one canonical tensor in a layout, or undefined when the layout lacks it. */
export function layoutLocation(
  config: ViTConfig,
  layout: Layout,
  tensor: CanonicalTensor,
  prefix?: string,
): { name: string; part?: { index: number; of: number } } | undefined {
  const declared = familyOf(config).layouts[layout];
  const spec = tensor.module.paths[layout];
  if (!declared || spec === undefined) return undefined;
  const { path, part } = typeof spec === 'string' ? { path: spec, part: undefined } : spec;
  const isHead = tensor.module.kind === 'projection' && tensor.module.storage === 'head';
  const base = isHead ? '' : (prefix ?? declared.prefix);
  const module = tensor.module.scope === 'block' ? `${blockPath(declared, tensor.layer!)}.${path}` : path;
  const name = tensor.role === 'parameter' ? `${base}${module}` : `${base}${module}.${tensor.role}`;
  return part ? { name, part } : { name };
}

/** What converting a checkpoint gives: canonical weights and where each came from. */
export interface ConvertedCheckpoint {
  readonly weights: Map<string, HostTensor>;
  /** canonical name → the name in the checkpoint file, so errors speak the user's names. */
  readonly sourceNames: Map<string, string>;
  /** Tensors in the file that the converter did not recognise. */
  readonly unexpected: string[];
}

/**
 * Renames and reshapes a checkpoint's tensors in `layout` into melo's canonical form: Linear weights
 * transposed to [in, out], the patch convolution flattened, fused projections sliced. The head is read
 * when the file has one (its class count then comes from it). Tensors that do not have their declared
 * rank are passed through unchanged for the shape check to report by name.
 */
export function fromLayout(
  config: ViTConfig,
  layout: Layout,
  tensors: ReadonlyMap<string, HostTensor>,
): ConvertedCheckpoint {
  const declared = familyOf(config).layouts[layout];
  if (!declared) throw new MeloError('UNSUPPORTED', `the ${config.family} family has no ${layout} layout`);
  const hasPrefix =
    declared.prefix === '' || [...tensors.keys()].some((name) => name.startsWith(declared.prefix));
  const prefix = hasPrefix || !declared.prefixOptional ? declared.prefix : '';
  const weights = new Map<string, HostTensor>();
  const sourceNames = new Map<string, string>();
  const used = new Set<string>();
  // The head's class count is not known before the file is read: declare it with the file's own count.
  const headRows = tensors.get(headSourceName(config, layout))?.shape[0] ?? 0;
  for (const tensor of canonicalTensors({ ...config, numClasses: headRows })) {
    const location = layoutLocation(config, layout, tensor, prefix);
    if (!location) continue;
    const source = tensors.get(location.name);
    if (!source) continue;
    const sliced = location.part ? slicePart(source, location.part, tensor.role) : source;
    if (!sliced) continue; // left unused: reported as unexpected, its parts as missing
    used.add(location.name);
    weights.set(tensor.name, toCanonical(tensor, sliced));
    sourceNames.set(
      tensor.name,
      location.part ? `${location.name}[${tensor.module.name.split('.').pop()}]` : location.name,
    );
  }
  const unexpected = [...tensors.keys()].filter(
    (name) => !used.has(name) && !(declared.ignore?.test(name) ?? false),
  );
  return { weights, sourceNames, unexpected };
}

function headSourceName(config: ViTConfig, layout: Layout): string {
  const head = familyOf(config).modules.find(
    (module) => module.kind === 'projection' && module.name === 'head',
  );
  const spec = head?.paths[layout];
  if (!spec) return '';
  return `${typeof spec === 'string' ? spec : spec.path}.weight`;
}

/** The inverse of fromLayout, for layouts melo writes (fused parts are not written). */
export function toLayout(
  config: ViTConfig,
  layout: Layout,
  weights: ReadonlyMap<string, HostTensor>,
): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const tensor of canonicalTensors(config)) {
    const value = weights.get(tensor.name);
    const location = layoutLocation(config, layout, tensor);
    if (!value || !location) continue;
    if (location.part)
      throw new MeloError('UNSUPPORTED', `writing the fused ${location.name} of a ${layout} layout`);
    out.set(location.name, fromCanonical(config, tensor, value));
  }
  return out;
}

function toCanonical(tensor: CanonicalTensor, source: HostTensor): HostTensor {
  if (tensor.role === 'parameter') {
    // CLIP stores its class embedding [D] and position table [1 + N, D] without the leading ones.
    const count = tensor.shape.reduce((a, b) => a * b, 1);
    const sameShape = source.shape.join(',') === tensor.shape.join(',');
    return !sameShape && source.data.length === count && source.shape.length < tensor.shape.length
      ? { shape: tensor.shape, data: source.data }
      : source;
  }
  if (tensor.role !== 'weight' || tensor.module.kind !== 'projection') return source;
  if (tensor.module.storage === 'head') return source;
  if (tensor.module.storage === 'conv') {
    if (source.shape.length !== 4) return source;
    const rows = source.shape[0]!;
    return transposeMatrix({ shape: [rows, source.data.length / rows], data: source.data });
  }
  return source.shape.length === 2 ? transposeMatrix(source) : source;
}

function fromCanonical(config: ViTConfig, tensor: CanonicalTensor, value: HostTensor): HostTensor {
  if (tensor.role !== 'weight' || tensor.module.kind !== 'projection') return value;
  if (tensor.module.storage === 'head') return value;
  const transposed = transposeMatrix(value);
  if (tensor.module.storage === 'conv') {
    return {
      shape: [config.hiddenSize, config.channels, config.patchSize, config.patchSize],
      data: transposed.data,
    };
  }
  return transposed;
}

/** Rows [index·n, (index+1)·n) of a fused [of·n, …] weight or [of·n] bias; undefined when it does not split. */
function slicePart(
  tensor: HostTensor,
  part: { index: number; of: number },
  role: CanonicalTensor['role'],
): HostTensor | undefined {
  const rows = tensor.shape[0]!;
  if (rows % part.of !== 0) return undefined;
  const n = rows / part.of;
  const width = role === 'weight' ? tensor.data.length / rows : 1;
  const data = tensor.data.slice(part.index * n * width, (part.index + 1) * n * width);
  return { shape: role === 'weight' ? [n, ...tensor.shape.slice(1)] : [n], data };
}

/** Transposes a 2-D [rows, cols] row-major matrix (e.g. PyTorch's [out, in] to melo's [in, out]). */
export function transposeMatrix(tensor: HostTensor): HostTensor {
  const [rows, cols] = tensor.shape as [number, number];
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = tensor.data[r * cols + c]!;
  }
  return { shape: [cols, rows], data: out };
}
