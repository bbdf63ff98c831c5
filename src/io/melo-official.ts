/**
 * The official MeLo code's adapter files (github.com/JamesQFreeman/LoRA-ViT, `lora.py`), read and written.
 *
 * Layout of `save_lora_parameters` / `save_fc_parameters` (safetensors, float32 from PyTorch):
 *  - `w_a_{i:03d}` [r, dim] and `w_b_{i:03d}` [dim, r]: the weights of `nn.Linear(dim, r)` and
 *    `nn.Linear(r, dim)`, i.e. PEFT's lora_A / lora_B orientation. Entries come in (query, value) pairs
 *    per LoRA'd block, in block order: entry 2k is the k-th LoRA'd block's query, 2k + 1 its value. With
 *    every block LoRA'd (the default, and what the multi-adapter loader assumes) k is the block index.
 *  - `fc_{in}in_{out}out` [out, in]: the classifier weight only; its bias is never saved.
 *
 * The forward is y = W x + (alpha // r) · B A x with Python's integer division. Code before the alpha option
 * (before 2024-03-18) had no scale at all, i.e. scale 1; since such files do not record alpha, scale 1 is
 * the import default and the import says so. melo's LoRA scales by alpha / rank, so an official scale s
 * is imported exactly as alpha = s · r.
 */
import { readSafetensors, writeSafetensors } from '../checkpoints/safetensors.ts';
import { MeloError } from '../errors.ts';
import type { Adapter, LoraPair, TaskMetadata, TaskType } from '../model/adapter.ts';
import { pairKey } from '../model/adapter.ts';
import { parseSlotKey } from '../model/anatomy.ts';
import { type LoraConfig, loraScale, validateLoraConfig } from '../model/lora-config.ts';
import type { HostTensor } from '../tensor.ts';
import { assertFiniteTensors } from '../util/finite.ts';
import { adapterHeaderLimit, isValidTaskName } from './peft.ts';

/** Scale assumed when neither alpha nor scale is given: files from before the official alpha option. */
export const MELO_OFFICIAL_DEFAULT_SCALE = 1;

/** Safetensors metadata keys melo adds to the official files it writes (the official reader ignores them). */
const SCALE_METADATA_KEY = 'melo_scale';
const TASK_METADATA_KEY = 'melo';

export interface MeloOfficialFiles {
  /** The `save_lora_parameters` file (w_a_/w_b_ entries, usually with the fc_ head too). */
  readonly lora: string;
  /** A separate `save_fc_parameters` file; it wins over a head inside the LoRA file. */
  readonly head?: string;
}

export interface MeloOfficialImportOptions {
  readonly task: string;
  /** Class names, one per head row; default: the names melo recorded when it wrote the file, else 0, 1, …. */
  readonly labels?: readonly string[];
  readonly taskType?: TaskType;
  /** The official training's --alpha (an integer); the scale is then alpha // rank. */
  readonly alpha?: number;
  /** The official scale directly; default 1 (files from before the official alpha option). */
  readonly scale?: number;
  /** Blocks that were LoRA'd (the official `lora_layer`), in order; default: blocks 0 … n-1. */
  readonly layers?: readonly number[];
}

/** An imported adapter plus what the import had to assume, for the CLI to show. */
export interface ImportedAdapter extends Adapter {
  readonly notes: readonly string[];
}

/** The official scale: `alpha // r`, Python's integer division (floor; alpha and r are positive). */
export function officialScale(alpha: number, rank: number): number {
  return Math.floor(alpha / rank);
}

/** Tensors of an official file, sorted out: LoRA entries by index and the head, if any. */
interface OfficialTensors {
  readonly a: Map<number, HostTensor>;
  readonly b: Map<number, HostTensor>;
  readonly head?: { readonly key: string; readonly weight: HostTensor };
  readonly metadata: Record<string, string>;
}

async function readOfficialFile(path: string): Promise<OfficialTensors> {
  // w_a/w_b per query and value of every block plus one head: bounded like a PEFT adapter's header.
  const file = await readSafetensors(path, { maxHeaderBytes: adapterHeaderLimit(2, undefined) });
  assertFiniteTensors(file.tensors, { code: 'BAD_ADAPTER', file: path });
  const a = new Map<number, HostTensor>();
  const b = new Map<number, HostTensor>();
  let head: { key: string; weight: HostTensor } | undefined;
  for (const [name, tensor] of file.tensors) {
    const lora = /^w_(a|b)_(\d{3,})$/.exec(name);
    if (lora) {
      (lora[1] === 'a' ? a : b).set(Number(lora[2]), tensor);
      continue;
    }
    const fc = /^fc_(\d+)in_(\d+)out$/.exec(name);
    if (fc) {
      if (head)
        throw new MeloError('BAD_ADAPTER', `two heads (${head.key} and ${name}); expected one`, {
          file: path,
        });
      const [inFeatures, outFeatures] = [Number(fc[1]), Number(fc[2])];
      if (tensor.shape.length !== 2 || tensor.shape[0] !== outFeatures || tensor.shape[1] !== inFeatures) {
        throw new MeloError(
          'BAD_ADAPTER',
          `${name} has shape [${tensor.shape}] but its name says [${outFeatures}, ${inFeatures}]`,
          { file: path },
        );
      }
      head = { key: name, weight: tensor };
      continue;
    }
    throw new MeloError(
      'BAD_ADAPTER',
      `unexpected tensor '${name}' (an official MeLo file holds w_a_NNN, w_b_NNN and fc_{in}in_{out}out)`,
      { file: path },
    );
  }
  return { a, b, ...(head ? { head } : {}), metadata: file.metadata };
}

/**
 * Reads official MeLo adapter files into a melo adapter (targets query and value, PEFT orientation). The
 * head bias is zero because the official files carry none; the notes say so, and say which scale was used.
 */
export async function importMeloOfficial(
  files: MeloOfficialFiles,
  options: MeloOfficialImportOptions,
): Promise<ImportedAdapter> {
  const file = files.lora;
  const fail = (message: string, where = file): never => {
    throw new MeloError('BAD_ADAPTER', message, { file: where });
  };
  if (!isValidTaskName(options.task))
    throw new MeloError(
      'USAGE',
      `task name '${options.task}' may only use letters, digits, '.', '_' and '-'`,
    );
  if (options.alpha !== undefined && options.scale !== undefined)
    throw new MeloError('USAGE', 'give alpha (the official --alpha) or scale, not both');

  const lora = await readOfficialFile(file);
  const notes: string[] = [];
  const count = lora.a.size;
  if (count === 0) fail('no w_a_NNN entries: not an official MeLo LoRA file');
  for (let i = 0; i < count; i++) {
    if (!lora.a.has(i) || !lora.b.has(i)) {
      fail(
        `entries must be w_a_000…w_a_${pad(count - 1)} and w_b_000…w_b_${pad(count - 1)}; w_${lora.a.has(i) ? 'b' : 'a'}_${pad(i)} is missing`,
      );
    }
  }
  if (lora.b.size !== count) fail(`${lora.a.size} w_a entries but ${lora.b.size} w_b entries`);
  if (count % 2 !== 0) fail(`${count} entries: expected (query, value) pairs, an even number`);

  const first = lora.a.get(0)!;
  if (first.shape.length !== 2) fail(`w_a_000 has shape [${first.shape}], expected [rank, dim]`);
  const [rank, dim] = first.shape as [number, number];
  for (let i = 0; i < count; i++) {
    const a = lora.a.get(i)!;
    const b = lora.b.get(i)!;
    if (a.shape.length !== 2 || a.shape[0] !== rank || a.shape[1] !== dim)
      fail(`w_a_${pad(i)} has shape [${a.shape}], expected [${rank}, ${dim}] like w_a_000`);
    if (b.shape.length !== 2 || b.shape[0] !== dim || b.shape[1] !== rank)
      fail(`w_b_${pad(i)} has shape [${b.shape}], expected [${dim}, ${rank}] (B is [dim, rank])`);
  }

  const blocks = count / 2;
  const layers = options.layers ? [...options.layers] : undefined;
  if (layers && layers.length !== blocks) {
    throw new MeloError(
      'USAGE',
      `${blocks} LoRA'd blocks in the file but ${layers.length} layers given (${layers.join(',')})`,
      { file },
    );
  }
  if (layers?.some((layer, i) => i > 0 && layer <= layers[i - 1]!))
    throw new MeloError('USAGE', `layers must be increasing block indices, got ${layers.join(',')}`);

  const scale = resolveScale(options, rank, lora.metadata, file, notes);
  const config: LoraConfig = validateLoraConfig(
    {
      rank,
      alpha: scale * rank,
      dropout: 0,
      targets: ['query', 'value'],
      ...(layers ? { layers } : {}),
    },
    undefined,
    file,
  );

  const pairs = new Map<string, LoraPair>();
  for (let k = 0; k < blocks; k++) {
    const block = layers ? layers[k]! : k;
    pairs.set(pairKey(block, 'query'), { A: lora.a.get(2 * k)!, B: lora.b.get(2 * k)! });
    pairs.set(pairKey(block, 'value'), { A: lora.a.get(2 * k + 1)!, B: lora.b.get(2 * k + 1)! });
  }

  let head = lora.head;
  let headFile = file;
  if (files.head !== undefined) {
    const separate = await readOfficialFile(files.head);
    if (separate.a.size > 0 || separate.b.size > 0)
      fail('holds LoRA entries; the head file should hold only fc_{in}in_{out}out', files.head);
    if (!separate.head) fail('no fc_{in}in_{out}out tensor', files.head);
    if (head) notes.push(`head taken from ${files.head}; the ${head.key} inside ${file} was ignored`);
    head = separate.head;
    headFile = files.head;
  }
  if (!head) fail('no fc_{in}in_{out}out head in the file; pass the head file (save_fc_parameters) as well');
  if (head!.weight.shape[1] !== dim) {
    fail(
      `${head!.key} takes ${head!.weight.shape[1]} features but the LoRA entries have dim ${dim}`,
      headFile,
    );
  }
  const classes = head!.weight.shape[0]!;
  notes.push(`head bias set to zero: official MeLo files store the ${head!.key} weight only`);

  const recorded = recordedMetadata(lora.metadata);
  const labels = options.labels
    ? [...options.labels]
    : recorded?.labels.length === classes
      ? [...recorded.labels]
      : Array.from({ length: classes }, (_, i) => String(i));
  if (labels.length !== classes) {
    throw new MeloError('USAGE', `${labels.length} labels given but ${head!.key} has ${classes} classes`, {
      file: headFile,
    });
  }
  const taskType = options.taskType ?? recorded?.taskType ?? (classes === 2 ? 'binary' : 'multiclass');
  const metadata: TaskMetadata = { task: options.task, taskType, labels, method: 'lora' };
  return {
    lora: config,
    pairs,
    head: { weight: head!.weight, bias: { shape: [classes], data: new Float32Array(classes) } },
    metadata,
    notes,
  };
}

function resolveScale(
  options: MeloOfficialImportOptions,
  rank: number,
  metadata: Record<string, string>,
  file: string,
  notes: string[],
): number {
  if (options.alpha !== undefined) {
    if (!Number.isInteger(options.alpha) || options.alpha <= 0)
      throw new MeloError(
        'USAGE',
        `alpha must be a positive integer (the official --alpha), got ${options.alpha}`,
      );
    const scale = officialScale(options.alpha, rank);
    if (scale === 0) {
      throw new MeloError(
        'USAGE',
        `alpha ${options.alpha} < rank ${rank}: the official scale alpha // r is 0, so the LoRA entries had no effect`,
        { file },
      );
    }
    if (scale * rank !== options.alpha)
      notes.push(`official scale is alpha // r = ${options.alpha} // ${rank} = ${scale} (integer division)`);
    return scale;
  }
  if (options.scale !== undefined) {
    if (!Number.isFinite(options.scale) || options.scale <= 0)
      throw new MeloError('USAGE', `scale must be a positive number, got ${options.scale}`);
    return options.scale;
  }
  const written = Number(metadata[SCALE_METADATA_KEY]);
  if (metadata[SCALE_METADATA_KEY] !== undefined && Number.isFinite(written) && written > 0) {
    notes.push(`scale ${written} as recorded by melo in the file`);
    return written;
  }
  notes.push(
    `scale ${MELO_OFFICIAL_DEFAULT_SCALE} assumed (the file does not record alpha; files from before the official alpha option used scale 1); pass alpha or scale if training used another`,
  );
  return MELO_OFFICIAL_DEFAULT_SCALE;
}

function recordedMetadata(
  metadata: Record<string, string>,
): { labels: string[]; taskType?: TaskType } | undefined {
  const text = metadata[TASK_METADATA_KEY];
  if (text === undefined) return undefined;
  try {
    const parsed = JSON.parse(text) as { labels?: unknown; taskType?: unknown };
    const labels = Array.isArray(parsed.labels) ? parsed.labels.map(String) : [];
    const taskType = ['binary', 'multiclass', 'multilabel'].includes(String(parsed.taskType))
      ? (parsed.taskType as TaskType)
      : undefined;
    return { labels, ...(taskType ? { taskType } : {}) };
  } catch {
    return undefined;
  }
}

/** What an official file holds, without choosing a scale or a task (for `melo adapter inspect`). */
export interface MeloOfficialSummary {
  readonly rank: number;
  readonly dim: number;
  /** LoRA'd blocks: entries / 2. */
  readonly blocks: number;
  readonly head?: { readonly key: string; readonly classes: number };
  /** The scale melo recorded when it wrote the file; official files do not record one. */
  readonly recordedScale?: number;
  readonly labels?: readonly string[];
}

export async function describeMeloOfficial(path: string): Promise<MeloOfficialSummary> {
  const file = await readOfficialFile(path);
  const first = file.a.get(0);
  if (first?.shape.length !== 2)
    throw new MeloError('BAD_ADAPTER', 'no w_a_000 entry: not an official MeLo LoRA file', { file: path });
  const scale = Number(file.metadata[SCALE_METADATA_KEY]);
  const recorded = recordedMetadata(file.metadata);
  return {
    rank: first.shape[0]!,
    dim: first.shape[1]!,
    blocks: Math.floor(file.a.size / 2),
    ...(file.head ? { head: { key: file.head.key, classes: file.head.weight.shape[0]! } } : {}),
    ...(Number.isFinite(scale) && scale > 0 ? { recordedScale: scale } : {}),
    ...(recorded && recorded.labels.length > 0 ? { labels: recorded.labels } : {}),
  };
}

function pad(index: number): string {
  return String(index).padStart(3, '0');
}

export interface MeloOfficialExportOptions {
  readonly dtype?: 'F32' | 'F16';
  /** The official format has no head bias: without this a non-zero bias is refused, not silently dropped. */
  readonly dropBias?: boolean;
}

/**
 * The file name the official multi-adapter loader (`LoRA_ViT_timm_x`) parses: it splits the name at '_'
 * and reads rank, alpha and classes from fields 3, 4 and 5, so the task name goes last.
 */
export function meloOfficialFileName(adapter: Adapter): string {
  const { rank } = adapter.lora;
  const alpha = loraScale(adapter.lora) * rank;
  return `melo_vit_lora_${rank}_${alpha}_${adapter.head.weight.shape[0]}_${adapter.metadata.task}.safetensors`;
}

/**
 * Writes an adapter as one official MeLo file (LoRA entries plus the fc_ head, as `save_lora_parameters`
 * does). Only what the official code can express is accepted: query and value targets on every listed
 * block, and an integer scale (official alpha = scale · r gives alpha // r = scale back). Returns notes.
 */
export async function exportMeloOfficial(
  adapter: Adapter,
  path: string,
  options: MeloOfficialExportOptions = {},
): Promise<string[]> {
  const fail = (message: string): never => {
    throw new MeloError('UNSUPPORTED', `cannot write the official MeLo format: ${message}`, { file: path });
  };
  const notes: string[] = [];
  const { lora } = adapter;
  if (adapter.pairs.size === 0) fail('the adapter has no LoRA factors (a linear-probe head only)');
  if (lora.targets.length !== 2 || !lora.targets.includes('query') || !lora.targets.includes('value'))
    fail(`targets are ${lora.targets.join(',')}; the official code adapts exactly query and value`);
  const scale = loraScale(lora);
  if (!Number.isInteger(scale) || scale < 1)
    fail(
      `scale alpha/r = ${lora.alpha}/${lora.rank} = ${scale}; the official alpha // r can only express integers ≥ 1`,
    );
  const maxBias = adapter.head.bias.data.reduce((max, value) => Math.max(max, Math.abs(value)), 0);
  if (maxBias > 0) {
    if (!options.dropBias)
      fail(
        `the head bias is non-zero (max |b| = ${maxBias.toPrecision(3)}) and the format has no bias; allow dropping it explicitly`,
      );
    notes.push(`head bias dropped (max |b| = ${maxBias.toPrecision(3)}): predictions change`);
  }
  const blocks = [...new Set([...adapter.pairs.keys()].map((key) => parseSlotKey(key).layer ?? -1))].sort(
    (x, y) => x - y,
  );
  const tensors = new Map<string, HostTensor>();
  blocks.forEach((block, k) => {
    const query = adapter.pairs.get(pairKey(block, 'query'));
    const value = adapter.pairs.get(pairKey(block, 'value'));
    if (!query || !value) fail(`block ${block} lacks its ${query ? 'value' : 'query'} factors`);
    tensors.set(`w_a_${pad(2 * k)}`, query!.A).set(`w_b_${pad(2 * k)}`, query!.B);
    tensors.set(`w_a_${pad(2 * k + 1)}`, value!.A).set(`w_b_${pad(2 * k + 1)}`, value!.B);
  });
  const [classes, features] = adapter.head.weight.shape as [number, number];
  tensors.set(`fc_${features}in_${classes}out`, adapter.head.weight);
  const contiguous = blocks.every((block, k) => block === k);
  if (!contiguous)
    notes.push(
      `LoRA'd blocks ${blocks.join(',')}: the official model needs lora_layer=[${blocks.join(', ')}]`,
    );
  await writeSafetensors(path, tensors, {
    dtype: options.dtype ?? 'F32',
    metadata: {
      format: 'pt',
      [SCALE_METADATA_KEY]: String(scale),
      [TASK_METADATA_KEY]: JSON.stringify({
        task: adapter.metadata.task,
        taskType: adapter.metadata.taskType,
        labels: adapter.metadata.labels,
        rank: lora.rank,
        alpha: scale * lora.rank,
        layers: blocks,
      }),
    },
  });
  return notes;
}
