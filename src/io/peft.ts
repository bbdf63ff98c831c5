import { mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { RE2JS } from 're2js';
import { readSafetensors, writeSafetensors } from '../checkpoints/safetensors.ts';
import { errorMessage, listSome, MeloError, shortText } from '../errors.ts';
import type { Adapter, LoraPair, TaskMetadata, TaskType } from '../model/adapter.ts';
import {
  type BackboneFamily,
  FAMILIES,
  type FamilyDecl,
  familyTargets,
  type Layout,
  LORA_TARGETS,
  type LoraSlot,
  type LoraTarget,
  parseSlotKey,
  peftDeclaredPaths,
  peftModulePath,
  slotKey,
  targetProjection,
  VIT_FAMILY,
} from '../model/anatomy.ts';
import { type LoraConfig, validateLoraConfig } from '../model/lora-config.ts';
import type { ViTConfig } from '../model/vit-config.ts';
import { parseRouting, type TaskRouting } from '../pacs/routing.ts';
import type { HostTensor } from '../tensor.ts';
import { assertFiniteTensors } from '../util/finite.ts';
import { writeBoundary } from '../util/write-boundary.ts';
import { writeJsonAtomic } from './atomic.ts';

export const ADAPTER_CONFIG_FILE = 'adapter_config.json';
export const ADAPTER_WEIGHTS_FILE = 'adapter_model.safetensors';

const PREFIX = 'base_model.model.';

function loraKey(family: FamilyDecl, slot: LoraSlot, factor: 'A' | 'B'): string {
  return `${PREFIX}${peftModulePath(family, slot)}.lora_${factor}.weight`;
}

/**
 * PEFT's `target_modules`: plain names match a module path's last components (PEFT's suffix rule). A
 * target's last path component is used when no other module the family declares ends with it (query,
 * key, value in a HF ViT); 'output.dense' would also catch 'attention.output.dense', so otherwise melo
 * writes a regular expression (PEFT full-matches a string).
 */
function targetModulesField(family: FamilyDecl, targets: readonly LoraTarget[]): string[] | string {
  const declared = peftDeclaredPaths(family).map((path) => path.split('.').pop()!);
  const leaf = (target: LoraTarget) => modulePathOf(family, target).split('.').pop()!;
  if (targets.every((target) => declared.filter((name) => name === leaf(target)).length === 1))
    return targets.map(leaf);
  const escaped = (text: string) => text.replaceAll('.', '\\.');
  const inBlock = targets.filter((target) => targetProjection(family, target).scope === 'block');
  const global = targets.filter((target) => targetProjection(family, target).scope === 'global');
  const block = family.layouts[family.peftLayout]!.block.split('{i}').map(escaped).join('\\d+');
  const parts = [
    ...(inBlock.length > 0
      ? [`${block}\\.(${inBlock.map((target) => escaped(modulePathOf(family, target))).join('|')})`]
      : []),
    ...global.map((target) => escaped(modulePathOf(family, target))),
  ];
  return parts.length === 1 ? `.*\\.${parts[0]}` : `.*\\.(?:${parts.join('|')})`;
}

/** A target's module path in the family's PEFT layout, relative to its block for block projections. */
function modulePathOf(family: FamilyDecl, target: LoraTarget): string {
  const spec = targetProjection(family, target).paths[family.peftLayout]!;
  return typeof spec === 'string' ? spec : spec.path;
}

/** Longest `target_modules` pattern accepted; PEFT configs in the wild are well under 200 characters. */
const MAX_TARGET_PATTERN = 4096;

/**
 * `target_modules` comes from a file a stranger may have written, so a string is compiled by RE2JS
 * (linear-time matching, no backtracking) rather than `RegExp`: `(([a-z.0-9_])+)+Z|…` hung `RegExp`
 * for ever and answers in about a millisecond here. RE2 has no backreferences or lookaround; a pattern
 * using them is refused with a clear error instead of being run.
 */
export function targetsFromField(
  field: unknown,
  file: string,
  family: FamilyDecl = VIT_FAMILY,
): LoraTarget[] {
  const paths = familyTargets(family).map(
    (target) =>
      [
        target,
        peftModulePath(family, {
          layer: targetProjection(family, target).scope === 'block' ? 0 : undefined,
          target,
        }),
      ] as const,
  );
  if (typeof field === 'string') {
    if (field.length > MAX_TARGET_PATTERN)
      throw new MeloError(
        'BAD_ADAPTER',
        `target_modules pattern is ${field.length} characters long (at most ${MAX_TARGET_PATTERN})`,
        { file },
      );
    let pattern: RE2JS;
    try {
      pattern = RE2JS.compile(field);
    } catch (error) {
      throw new MeloError(
        'BAD_ADAPTER',
        `target_modules is not a regular expression melo can match in linear time (RE2 syntax: no backreferences or lookaround): ${quoted(field)} (${errorMessage(error)})`,
        { file },
      );
    }
    // PEFT full-matches a string pattern (re.fullmatch); RE2JS's matches() is a full match too.
    return paths.filter(([, path]) => pattern.matches(path)).map(([target]) => target);
  }
  if (Array.isArray(field)) {
    const names = field.map(String);
    return paths
      .filter(([, path]) => names.some((name) => path === name || path.endsWith(`.${name}`)))
      .map(([target]) => target);
  }
  throw new MeloError(
    'BAD_ADAPTER',
    'target_modules must be a list of module names or a regular expression',
    { file },
  );
}

/**
 * Writes an adapter in PEFT's layout (adapter_config.json + adapter_model.safetensors) so Python's PEFT
 * loads it; melo's task metadata goes under `melo` and into the safetensors `__metadata__`. Both files
 * are written to a temporary directory first and moved into place, so a crash never leaves half an adapter.
 */
export async function saveAdapter(
  dir: string,
  adapter: Adapter,
  /**
   * `backbone`: the config of the backbone the adapter plugs into (its family names the PEFT keys), or
   * `family` alone (re-saving a loaded adapter); `layout`: the checkpoint layout the backbone was read
   * from, so an adapter for a fused-qkv (timm, open_clip) checkpoint says how its keys relate to it.
   */
  options: {
    dtype?: 'F32' | 'F16';
    backbone?: ViTConfig;
    family?: BackboneFamily;
    layout?: Layout;
    /** Keep the note of an adapter read back (`loadAdapter`'s `peftNote`) when re-saving it. */
    peftNote?: string;
  } = {},
): Promise<void> {
  const family = FAMILIES[options.backbone?.family ?? options.family ?? 'vit'];
  const tensors = new Map<string, HostTensor>();
  for (const [key, pair] of adapter.pairs) {
    const slot = parseSlotKey(key);
    const shapes = peftShapes(family, slot.target, pair, options.backbone, dir);
    tensors.set(loraKey(family, slot, 'A'), { shape: shapes.A, data: pair.A.data });
    tensors.set(loraKey(family, slot, 'B'), { shape: shapes.B, data: pair.B.data });
  }
  tensors.set(`${PREFIX}classifier.weight`, adapter.head.weight);
  tensors.set(`${PREFIX}classifier.bias`, adapter.head.bias);
  const peftNote = fusedQkvNote(options.layout, adapter) ?? options.peftNote;
  const melo = { ...metadataJson(adapter.metadata), ...(peftNote ? { peftNote } : {}) };
  const config: Record<string, unknown> = {
    peft_type: 'LORA',
    task_type: null,
    base_model_name_or_path: null,
    r: adapter.lora.rank,
    lora_alpha: adapter.lora.alpha,
    lora_dropout: adapter.lora.dropout,
    bias: 'none',
    fan_in_fan_out: false,
    init_lora_weights: true,
    inference_mode: true,
    target_modules: targetModulesField(family, adapter.lora.targets),
    layers_to_transform: adapter.lora.layers ? [...adapter.lora.layers] : null,
    modules_to_save: ['classifier'],
    melo,
  };
  await mkdir(dir, { recursive: true });
  const staging = join(dir, `.staging-${process.pid}-${Date.now()}`);
  await mkdir(staging);
  writeBoundary('created adapter staging directory');
  try {
    await writeSafetensors(join(staging, ADAPTER_WEIGHTS_FILE), tensors, {
      dtype: options.dtype ?? 'F32',
      metadata: { format: 'pt', melo: JSON.stringify(melo) },
    });
    await writeJsonAtomic(join(staging, ADAPTER_CONFIG_FILE), config);
    // Weights first, config last: a reader that sees the new config also sees the new weights.
    await rename(join(staging, ADAPTER_WEIGHTS_FILE), join(dir, ADAPTER_WEIGHTS_FILE));
    writeBoundary('published adapter weights');
    await rename(join(staging, ADAPTER_CONFIG_FILE), join(dir, ADAPTER_CONFIG_FILE));
    writeBoundary('published adapter config');
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
  writeBoundary('removed adapter staging directory');
}

/**
 * What PEFT cannot express, said in the adapter itself: timm and open_clip checkpoints hold query, key
 * and value in one fused `attn.qkv` Linear, and PEFT wraps a module whole, so it has no place for
 * separate query and value factors on that model. melo writes the keys the Hugging Face layout of the
 * same architecture has (where they are separate modules) and loads them onto either layout.
 */
function fusedQkvNote(layout: Layout | undefined, adapter: Adapter): string | undefined {
  if (layout !== 'timm' && layout !== 'open_clip') return undefined;
  const sliced = [...adapter.pairs.keys()].some((key) => /\.(query|key|value)$/.test(key));
  if (!sliced) return undefined;
  return `trained on a ${layout} checkpoint whose attention is one fused attn.qkv projection; LoRA sits on its query/value row slices (as official MeLo does for timm). PEFT cannot express slices of a fused module, so these keys name the projections as the Hugging Face layout of the same architecture does; melo loads them onto either layout`;
}

function metadataJson(metadata: TaskMetadata): Record<string, unknown> {
  return { version: 1, ...metadata };
}

/**
 * The shapes PEFT stores a slot's factors in: melo's [rank, in] / [out, rank] for a Linear; for a Conv2d
 * target (the patch embedding) PEFT's lora_A is a Conv2d [rank, C, p, p] and lora_B a 1×1 Conv2d
 * [out, rank, 1, 1], the same numbers in the same order.
 */
function peftShapes(
  family: FamilyDecl,
  target: LoraTarget,
  pair: LoraPair,
  backbone: ViTConfig | undefined,
  dir: string,
): { A: readonly number[]; B: readonly number[] } {
  if (targetProjection(family, target).storage !== 'conv') return { A: pair.A.shape, B: pair.B.shape };
  if (!backbone) {
    if (pair.peftShape) return pair.peftShape;
    throw new MeloError('USAGE', `saving a ${target} plug-in in PEFT's layout needs the backbone's config`, {
      file: dir,
    });
  }
  const rank = pair.A.shape[0]!;
  return {
    A: [rank, backbone.channels, backbone.patchSize, backbone.patchSize],
    B: [pair.B.shape[0]!, rank, 1, 1],
  };
}

/** PEFT's factor → melo's 2-D form ([rank, in] or [out, rank]): a Conv2d factor flattened after its first axis. */
function asMatrix(tensor: HostTensor): HostTensor {
  if (tensor.shape.length <= 2) return tensor;
  return { shape: [tensor.shape[0]!, tensor.data.length / tensor.shape[0]!], data: tensor.data };
}

/**
 * The family whose PEFT layout names an adapter's LoRA factors: the one whose module prefix the keys
 * carry ('dinov2_with_registers.encoder.layer.3…', 'vision_model.encoder.layers.3…'); the plain ViT
 * (whose prefix is optional) otherwise.
 */
function adapterFamily(names: Iterable<string>): FamilyDecl {
  const factors = [...names].filter((name) => /\.lora_[AB]\./.test(name));
  const candidates = Object.values(FAMILIES)
    .filter((family) => family.layouts[family.peftLayout]!.prefix !== '')
    .sort((a, b) => b.layouts[b.peftLayout]!.prefix.length - a.layouts[a.peftLayout]!.prefix.length);
  for (const family of candidates) {
    const prefix = `${PREFIX}${family.layouts[family.peftLayout]!.prefix}`;
    if (factors.length > 0 && factors.every((name) => name.startsWith(prefix))) return family;
  }
  return VIT_FAMILY;
}

/**
 * Reads a PEFT LoRA adapter directory, with or without melo's metadata. Without it the task is named
 * after the directory and labels are filled in later (from the backbone or as 0, 1, …).
 */
export async function loadAdapter(
  dir: string,
): Promise<
  Adapter & { readonly hasMeloMetadata: boolean; readonly family: BackboneFamily; readonly peftNote?: string }
> {
  const configPath = join(dir, ADAPTER_CONFIG_FILE);
  const info = await stat(dir).catch(() => undefined);
  if (!info?.isDirectory())
    throw new MeloError('BAD_ADAPTER', 'adapter directory does not exist', { file: dir });
  const configSize = (await stat(configPath).catch(() => undefined))?.size ?? 0;
  if (configSize > MAX_ADAPTER_CONFIG_BYTES)
    throw new MeloError(
      'BAD_ADAPTER',
      `is ${configSize} bytes; an adapter_config.json is at most ${MAX_ADAPTER_CONFIG_BYTES} (even with thousands of labels)`,
      { file: configPath },
    );
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(await readFile(configPath, 'utf8')) as Record<string, unknown>;
  } catch (error) {
    const missing = (error as NodeJS.ErrnoException).code === 'ENOENT';
    throw new MeloError(
      'BAD_ADAPTER',
      missing
        ? `no ${ADAPTER_CONFIG_FILE} (expected a PEFT LoRA adapter)`
        : `invalid JSON (${(error as Error).message})`,
      {
        file: missing ? dir : configPath,
      },
    );
  }
  if (config === null || typeof config !== 'object' || config.peft_type !== 'LORA') {
    throw new MeloError(
      'BAD_ADAPTER',
      `peft_type must be "LORA", got ${shortText(String(JSON.stringify(config?.peft_type)))}`,
      {
        file: configPath,
      },
    );
  }
  const weightsPath = join(dir, ADAPTER_WEIGHTS_FILE);
  // The header bound counts the targets target_modules lists (every target for a pattern); the family,
  // which names the targets, is read from the factors' key prefix.
  const listed = Array.isArray(config.target_modules) ? config.target_modules.length : LORA_TARGETS.length;
  const weights = await readSafetensors(weightsPath, {
    maxHeaderBytes: adapterHeaderLimit(Math.min(listed, LORA_TARGETS.length), config.layers_to_transform),
  });
  assertFiniteTensors(weights.tensors, { code: 'BAD_ADAPTER', file: weightsPath });
  const family = adapterFamily(weights.tensors.keys());
  const targets = targetsFromField(config.target_modules, configPath, family);
  const slotOfPath = new Map<string, LoraTarget>(
    familyTargets(family).map((target) => [modulePathOf(family, target), target]),
  );
  const block = new RegExp(
    `^${family.layouts[family.peftLayout]!.block.split('{i}')
      .map((part) => part.replaceAll('.', '\\.'))
      .join('(\\d+)')}\\.(.+)$`,
  );
  const prefix = `${PREFIX}${family.layouts[family.peftLayout]!.prefix}`;
  const layersField = config.layers_to_transform;
  const rank = Number(config.r);
  const lora: LoraConfig = validateLoraConfig(
    {
      rank,
      alpha: Number(config.lora_alpha ?? rank),
      dropout: Number(config.lora_dropout ?? 0),
      targets,
      ...(Array.isArray(layersField)
        ? { layers: layersField.map(Number) }
        : typeof layersField === 'number'
          ? { layers: [layersField] }
          : {}),
    },
    undefined,
    configPath,
  );
  if (config.use_dora === true)
    throw new MeloError('UNSUPPORTED', 'DoRA adapters are not supported', { file: configPath });

  const pairs = new Map<string, LoraPair>();
  const unexpected: string[] = [];
  let head: { weight?: HostTensor; bias?: HostTensor } = {};
  const partial = new Map<
    string,
    { A?: HostTensor; B?: HostTensor; diskA?: readonly number[]; diskB?: readonly number[] }
  >();
  for (const [name, tensor] of weights.tensors) {
    const stripped = name.replace(/\.default(?=\.(?:weight|bias)$)/, '');
    if (
      stripped === `${PREFIX}classifier.weight` ||
      stripped === `${PREFIX}classifier.modules_to_save.weight`
    ) {
      head = { ...head, weight: tensor };
      continue;
    }
    if (stripped === `${PREFIX}classifier.bias` || stripped === `${PREFIX}classifier.modules_to_save.bias`) {
      head = { ...head, bias: tensor };
      continue;
    }
    const factor = /^(.+)\.lora_(A|B)\.weight$/.exec(stripped);
    const path = factor?.[1]?.startsWith(prefix) ? factor[1].slice(prefix.length) : undefined;
    const inBlock = path === undefined ? null : block.exec(path);
    const target = inBlock
      ? slotOfPath.get(inBlock[2]!)
      : path === undefined
        ? undefined
        : slotOfPath.get(path);
    const scopeFits =
      target !== undefined && (targetProjection(family, target).scope === 'block') === (inBlock !== null);
    if (!factor || !target || !scopeFits) {
      unexpected.push(name);
      continue;
    }
    const key = slotKey({ layer: inBlock ? Number(inBlock[1]) : undefined, target });
    const conv = targetProjection(family, target).storage === 'conv';
    const side = factor[2] as 'A' | 'B';
    // PEFT's Conv2d factors: A [r, C, p, p], B [out, r, 1, 1]; a Linear's are 2-D.
    const fits = conv
      ? tensor.shape.length === 4 && (side === 'A' || (tensor.shape[2] === 1 && tensor.shape[3] === 1))
      : tensor.shape.length === 2;
    if (!fits)
      throw new MeloError(
        'BAD_ADAPTER',
        `${name} has shape [${tensor.shape}]; PEFT stores a ${conv ? 'Conv2d' : 'Linear'} target's lora_${side} as ${conv ? (side === 'A' ? '[r, C, p, p]' : '[out, r, 1, 1]') : side === 'A' ? '[r, in]' : '[out, r]'}`,
        { file: weightsPath },
      );
    const entry = partial.get(key) ?? {};
    entry[side] = asMatrix(tensor);
    if (conv) entry[side === 'A' ? 'diskA' : 'diskB'] = tensor.shape;
    partial.set(key, entry);
  }
  if (unexpected.length > 0)
    throw new MeloError(
      'BAD_ADAPTER',
      `${unexpected.length} unexpected tensor${unexpected.length === 1 ? '' : 's'}: ${listSome(unexpected)}`,
      { file: weightsPath },
    );
  for (const [key, entry] of partial) {
    if (!entry.A || !entry.B)
      throw new MeloError('BAD_ADAPTER', `layer ${key} has lora_${entry.A ? 'B' : 'A'} missing`, {
        file: weightsPath,
      });
    if (entry.A.shape[0] !== rank || entry.B.shape[1] !== rank) {
      throw new MeloError(
        'BAD_ADAPTER',
        `layer ${key}: factors [${entry.A.shape}] / [${entry.B.shape}] do not have rank ${rank}`,
        { file: weightsPath },
      );
    }
    const { target } = parseSlotKey(key);
    if (!targets.includes(target))
      throw new MeloError('BAD_ADAPTER', `layer ${key} is not in target_modules`, { file: weightsPath });
    pairs.set(
      key,
      entry.diskA && entry.diskB
        ? { A: entry.A, B: entry.B, peftShape: { A: entry.diskA, B: entry.diskB } }
        : { A: entry.A, B: entry.B },
    );
  }
  if (!head.weight || !head.bias) {
    throw new MeloError(
      'BAD_ADAPTER',
      'no classifier.weight/classifier.bias (modules_to_save ["classifier"])',
      { file: weightsPath },
    );
  }
  if (head.weight.shape.length !== 2 || head.bias.shape[0] !== head.weight.shape[0]) {
    throw new MeloError(
      'BAD_ADAPTER',
      `classifier weight [${head.weight.shape}] and bias [${head.bias.shape}] disagree`,
      { file: weightsPath },
    );
  }
  const classes = head.weight.shape[0]!;
  const meloField = config.melo as Record<string, unknown> | undefined;
  const metadata = meloField ? parseMetadata(meloField, classes, configPath) : defaultMetadata(dir, classes);
  return {
    lora,
    pairs,
    head: { weight: head.weight, bias: head.bias },
    metadata,
    hasMeloMetadata: meloField !== undefined,
    family: family.family,
    ...(typeof meloField?.peftNote === 'string' ? { peftNote: meloField.peftNote } : {}),
  };
}

function parseMetadata(field: Record<string, unknown>, classes: number, file: string): TaskMetadata {
  const labels = Array.isArray(field.labels) ? field.labels.map(String) : [];
  if (labels.length !== classes) {
    throw new MeloError(
      'BAD_ADAPTER',
      `melo.labels has ${labels.length} names but the classifier has ${classes} outputs`,
      { file },
    );
  }
  const taskType = (field.taskType ?? (classes === 2 ? 'binary' : 'multiclass')) as TaskType;
  if (!['binary', 'multiclass', 'multilabel'].includes(taskType))
    throw new MeloError('BAD_ADAPTER', `melo.taskType '${taskType}' is unknown`, { file });
  const task = String(field.task ?? '');
  if (!isValidTaskName(task))
    throw new MeloError('BAD_ADAPTER', `melo.task '${task}' is not a valid task name`, { file });
  return {
    task,
    taskType,
    labels,
    ...(Array.isArray(field.imageSize) ? { imageSize: field.imageSize as [number, number] } : {}),
    ...(Array.isArray(field.mean) ? { mean: field.mean as [number, number, number] } : {}),
    ...(Array.isArray(field.std) ? { std: field.std as [number, number, number] } : {}),
    ...(typeof field.backboneFingerprint === 'string'
      ? { backboneFingerprint: field.backboneFingerprint }
      : {}),
    ...(typeof field.method === 'string' ? { method: field.method as 'lora' | 'full' | 'linear' } : {}),
    ...routingField(field.routing, file),
    ...positiveField(field.positive, labels, taskType, file),
    ...(field.ordinal === true ? { ordinal: true } : {}),
  };
}

function positiveField(
  field: unknown,
  labels: readonly string[],
  taskType: TaskType,
  file: string,
): { positive?: string } {
  if (field === undefined) return {};
  if (taskType !== 'binary' || typeof field !== 'string' || !labels.includes(field))
    throw new MeloError(
      'BAD_ADAPTER',
      `melo.positive must name one of the binary task's two labels, got ${JSON.stringify(field)}`,
      { file },
    );
  return { positive: field };
}

function routingField(field: unknown, file: string): { routing?: TaskRouting } {
  const routing = parseRouting(field, file);
  return routing ? { routing } : {};
}

function defaultMetadata(dir: string, classes: number): TaskMetadata {
  return {
    task: basename(dir.replace(/\/+$/, '')),
    taskType: classes === 2 ? 'binary' : 'multiclass',
    labels: Array.from({ length: classes }, (_, i) => String(i)),
  };
}

/** Largest adapter_config.json read: 1,000 labels of 100 characters take 0.1 MB. */
const MAX_ADAPTER_CONFIG_BYTES = 16 * 1024 * 1024;

/** Blocks an adapter may plug into when `layers_to_transform` does not say (ViT-g has 40). */
const MAX_ADAPTER_BLOCKS = 256;

/**
 * The header bytes an adapter's expected tensors can need: two factors per target and block plus the
 * head, 512 bytes each (name, dtype, shape, offsets take under 200), and 1 MiB for metadata (melo's labels).
 * A header listing a million names (tens of MB) is refused before it is read.
 */
export function adapterHeaderLimit(targets: number, layersField: unknown): number {
  const blocks = Array.isArray(layersField)
    ? Math.min(layersField.length, MAX_ADAPTER_BLOCKS)
    : typeof layersField === 'number'
      ? 1
      : MAX_ADAPTER_BLOCKS;
  return 1024 * 1024 + 512 * (2 + 2 * Math.max(1, targets) * blocks);
}

/** A value from a file, quoted and shortened for an error message. */
function quoted(text: string, max = 80): string {
  return text.length <= max
    ? JSON.stringify(text)
    : `${JSON.stringify(text.slice(0, max))}… (${text.length} characters)`;
}

/** Task names end up in URLs and file names: letters, digits, '.', '_' and '-', no path separators. */
export function isValidTaskName(name: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(name);
}
