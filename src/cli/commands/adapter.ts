import { mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { loadBackbone } from '../../checkpoints/load.ts';
import { readSafetensorsHeader } from '../../checkpoints/safetensors.ts';
import { MeloError } from '../../errors.ts';
import {
  describeMeloOfficial,
  exportMeloOfficial,
  importMeloOfficial,
  MELO_OFFICIAL_DEFAULT_SCALE,
  meloOfficialFileName,
} from '../../io/melo-official.ts';
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, loadAdapter, saveAdapter } from '../../io/peft.ts';
import { type Adapter, headParameterCount, loraParameterCount, type TaskType } from '../../model/adapter.ts';
import { checkAdapterFitsBackbone } from '../../model/adapter-check.ts';
import { loraScale } from '../../model/lora-config.ts';
import { describeRouting, type TaskRouting } from '../../pacs/routing.ts';
import { parsePositiveInt } from '../options.ts';
import { registerAdapterSetCommand } from './adapter-set.ts';

/** Where the command writes; tests pass their own sinks. */
export interface AdapterCommandOutput {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
}

const processOutput: AdapterCommandOutput = {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
};

/** What `melo adapter inspect` reports about an adapter. */
export interface AdapterInspection {
  readonly path: string;
  readonly format: 'peft' | 'melo-official';
  readonly task: string | null;
  readonly taskType: TaskType | null;
  readonly labels: readonly string[] | null;
  readonly method: string | null;
  readonly rank: number;
  /** null for an official file: it does not record alpha. */
  readonly alpha: number | null;
  readonly scale: number | null;
  readonly targets: readonly string[];
  /** Block indices, or 'all'. */
  readonly layers: readonly number[] | 'all';
  readonly loraParameters: number;
  readonly headParameters: number;
  readonly bytes: number;
  readonly dtype: string;
  readonly backboneFingerprint: string | null;
  readonly imageSize: readonly number[] | null;
  readonly mean: readonly number[] | null;
  readonly std: readonly number[] | null;
  /** Whether the adapter carries melo's task metadata (else task and labels are defaults). */
  readonly meloMetadata: boolean;
  /** Which DICOM images the task applies to; null: every image. */
  readonly routing?: TaskRouting | null;
}

/** Inspects a PEFT adapter directory or an official MeLo `.safetensors` file. */
export async function inspectAdapter(path: string): Promise<AdapterInspection> {
  const info = await stat(path).catch(() => undefined);
  if (!info) throw new MeloError('NOT_FOUND', 'no such adapter directory or file', { file: path });
  if (info.isFile()) return inspectOfficial(path, info.size);
  const adapter = await loadAdapter(path);
  const weightsPath = join(path, ADAPTER_WEIGHTS_FILE);
  const header = await readSafetensorsHeader(weightsPath);
  const configBytes = (await stat(join(path, ADAPTER_CONFIG_FILE))).size;
  const { metadata, lora } = adapter;
  return {
    path,
    format: 'peft',
    task: metadata.task,
    taskType: metadata.taskType,
    labels: metadata.labels,
    method: metadata.method ?? (adapter.pairs.size > 0 ? 'lora' : 'linear'),
    rank: lora.rank,
    alpha: lora.alpha,
    scale: loraScale(lora),
    targets: lora.targets,
    layers: lora.layers ? [...lora.layers] : 'all',
    loraParameters: loraParameterCount(adapter),
    headParameters: headParameterCount(adapter),
    bytes: header.fileSize + configBytes,
    dtype: describeDtypes([...header.tensors.values()].map((tensor) => tensor.dtype)),
    backboneFingerprint: metadata.backboneFingerprint ?? null,
    imageSize: metadata.imageSize ?? null,
    mean: metadata.mean ?? null,
    std: metadata.std ?? null,
    meloMetadata: adapter.hasMeloMetadata,
    routing: metadata.routing ?? null,
  };
}

async function inspectOfficial(path: string, bytes: number): Promise<AdapterInspection> {
  const summary = await describeMeloOfficial(path);
  const header = await readSafetensorsHeader(path);
  const classes = summary.head?.classes ?? 0;
  return {
    path,
    format: 'melo-official',
    task: null,
    taskType: null,
    labels: summary.labels ?? null,
    method: 'lora',
    rank: summary.rank,
    alpha: summary.recordedScale !== undefined ? summary.recordedScale * summary.rank : null,
    scale: summary.recordedScale ?? null,
    targets: ['query', 'value'],
    layers: Array.from({ length: summary.blocks }, (_, i) => i),
    loraParameters: summary.blocks * 2 * 2 * summary.rank * summary.dim,
    headParameters: classes * summary.dim,
    bytes,
    dtype: describeDtypes([...header.tensors.values()].map((tensor) => tensor.dtype)),
    backboneFingerprint: null,
    imageSize: null,
    mean: null,
    std: null,
    meloMetadata: summary.recordedScale !== undefined,
  };
}

function describeDtypes(dtypes: readonly string[]): string {
  const unique = [...new Set(dtypes)].sort();
  return unique.length === 1 ? unique[0]! : `mixed (${unique.join(', ')})`;
}

export function formatInspection(report: AdapterInspection): string {
  const value = (v: unknown) => (v === null ? '-' : Array.isArray(v) ? v.join(', ') : String(v));
  const rows: [string, unknown][] = [
    ['path', report.path],
    ['format', report.format],
    ['task', report.task],
    ['task type', report.taskType],
    ['labels', report.labels],
    ['method', report.method],
    ['rank', report.rank],
    ['alpha', report.alpha],
    [
      'scale',
      report.scale ??
        (report.format === 'melo-official'
          ? `not recorded (official default ${MELO_OFFICIAL_DEFAULT_SCALE}; alpha // rank when trained with --alpha)`
          : null),
    ],
    ['targets', report.targets],
    ['layers', report.layers],
    ['LoRA parameters', report.loraParameters.toLocaleString('en-US')],
    ['head parameters', report.headParameters.toLocaleString('en-US')],
    ['bytes on disk', report.bytes.toLocaleString('en-US')],
    ['dtype', report.dtype],
    ['backbone', report.backboneFingerprint],
    ['image size', report.imageSize],
    ['mean', report.mean],
    ['std', report.std],
    ['melo metadata', report.meloMetadata ? 'yes' : 'no (task and labels are defaults)'],
    ['routing', describeRouting(report.routing ?? undefined)],
  ];
  const width = Math.max(...rows.map(([name]) => name.length));
  return rows.map(([name, v]) => `${name.padEnd(width)}  ${value(v)}\n`).join('');
}

function parseDtype(value: string): 'F32' | 'F16' {
  const lower = value.toLowerCase();
  if (lower === 'f32' || lower === 'float32') return 'F32';
  if (lower === 'f16' || lower === 'float16') return 'F16';
  throw new InvalidArgumentError(`expected f32 or f16, got '${value}'`);
}

function parsePositiveNumber(value: string): number {
  const parsed = Number(value);
  if (!Number.isFinite(parsed) || parsed <= 0)
    throw new InvalidArgumentError(`expected a positive number, got '${value}'`);
  return parsed;
}

function parseLayers(value: string): number[] {
  const layers = value.split(',').map((item) => Number(item.trim()));
  if (layers.some((layer) => !Number.isInteger(layer) || layer < 0))
    throw new InvalidArgumentError(`expected block indices like 0,1,2, got '${value}'`);
  return layers;
}

function parseList(value: string): string[] {
  return value.split(',').map((item) => item.trim());
}

interface ImportOptions {
  head?: string;
  alpha?: number;
  scale?: number;
  layers?: number[];
  labels?: string[];
  taskType?: TaskType;
  backbone: string;
  task: string;
  out: string;
  dtype: 'F32' | 'F16';
}

interface ConvertOptions {
  out: string;
  dtype?: 'F32' | 'F16';
  to: 'peft' | 'melo-official';
  dropBias?: boolean;
}

/** `melo adapter import-melo | inspect | convert`. */
export function registerAdapterCommand(program: Command, output: AdapterCommandOutput = processOutput): void {
  const adapter = program.command('adapter').description('inspect, convert and import task adapters');
  registerAdapterSetCommand(adapter, output.stdout);

  adapter
    .command('import-melo')
    .description(
      'import an official MeLo adapter (w_a_NNN/w_b_NNN + fc_{in}in_{out}out .safetensors) as a melo/PEFT adapter',
    )
    .argument('<lora>', 'the save_lora_parameters .safetensors file')
    .option('--head <file>', 'separate head file (save_fc_parameters); wins over a head inside <lora>')
    .addOption(
      new Option('--alpha <n>', "the official training's --alpha: scale = alpha // rank (integer division)")
        .argParser(parsePositiveInt)
        .conflicts('scale'),
    )
    .addOption(
      new Option(
        '--scale <s>',
        `the LoRA scale directly (default ${MELO_OFFICIAL_DEFAULT_SCALE}: files from before the official alpha option, which did not scale)`,
      ).argParser(parsePositiveNumber),
    )
    .option('--layers <list>', "blocks that were LoRA'd (official lora_layer), default all", parseLayers)
    .option(
      '--labels <list>',
      'class names, comma-separated (default: the backbone labels or 0, 1, …)',
      parseList,
    )
    .addOption(new Option('--task-type <type>', 'task type').choices(['binary', 'multiclass', 'multilabel']))
    .requiredOption('--backbone <dir>', 'the backbone the adapter was trained on')
    .requiredOption('--task <name>', 'task name to record')
    .requiredOption('--out <dir>', 'adapter directory to write')
    .addOption(
      new Option('--dtype <dtype>', 'dtype on disk: f32 or f16').argParser(parseDtype).default('F32', 'f32'),
    )
    .action(async (loraFile: string, options: ImportOptions) => {
      const backbone = await loadBackbone(options.backbone);
      const imported = await importMeloOfficial(
        { lora: loraFile, ...(options.head ? { head: options.head } : {}) },
        {
          task: options.task,
          ...(options.labels ? { labels: options.labels } : {}),
          ...(options.taskType ? { taskType: options.taskType } : {}),
          ...(options.alpha !== undefined ? { alpha: options.alpha } : {}),
          ...(options.scale !== undefined ? { scale: options.scale } : {}),
          ...(options.layers ? { layers: options.layers } : {}),
        },
      );
      const classes = imported.head.weight.shape[0]!;
      const labels =
        !options.labels &&
        imported.metadata.labels.every((label, i) => label === String(i)) &&
        backbone.labels?.length === classes
          ? [...backbone.labels]
          : imported.metadata.labels;
      const result: Adapter = {
        lora: imported.lora,
        pairs: imported.pairs,
        head: imported.head,
        metadata: {
          ...imported.metadata,
          labels,
          imageSize: backbone.preprocess.inputSize,
          mean: backbone.preprocess.mean,
          std: backbone.preprocess.std,
          backboneFingerprint: backbone.fingerprint,
        },
      };
      checkAdapterFitsBackbone(result, backbone, loraFile);
      await saveAdapter(options.out, result, {
        dtype: options.dtype,
        backbone: backbone.config,
        layout: backbone.layout,
      });
      for (const note of imported.notes) output.stderr(`note: ${note}\n`);
      output.stdout(
        `wrote ${options.out} (rank ${result.lora.rank}, alpha ${result.lora.alpha}, scale ${loraScale(result.lora)}, ${result.pairs.size / 2} blocks, ${classes} classes)\n`,
      );
    });

  adapter
    .command('inspect')
    .description(
      'show an adapter: rank, alpha, targets, task, labels, parameter counts, size, dtype, backbone',
    )
    .argument('<path>', 'adapter directory (PEFT) or official MeLo .safetensors file')
    .option('--json', 'print one JSON document')
    .action(async (path: string, options: { json?: boolean }) => {
      const report = await inspectAdapter(path);
      output.stdout(options.json ? `${JSON.stringify(report)}\n` : formatInspection(report));
    });

  adapter
    .command('convert')
    .description('rewrite an adapter in another dtype or format')
    .argument('<dir>', 'adapter directory (PEFT)')
    .requiredOption('--out <dir>', 'directory to write')
    .addOption(
      new Option('--dtype <dtype>', 'f32 or f16 (default: as the source, bf16 → f32)').argParser(parseDtype),
    )
    .addOption(
      new Option('--to <format>', 'output format').choices(['peft', 'melo-official']).default('peft'),
    )
    .option('--drop-bias', 'melo-official has no head bias: drop a non-zero one (predictions change)')
    .action(async (dir: string, options: ConvertOptions) => {
      const source = await loadAdapter(dir);
      const header = await readSafetensorsHeader(join(dir, ADAPTER_WEIGHTS_FILE));
      const dtypes = new Set([...header.tensors.values()].map((tensor) => tensor.dtype));
      const dtype = options.dtype ?? (dtypes.size === 1 && dtypes.has('F16') ? 'F16' : 'F32');
      const adapter: Adapter = {
        lora: source.lora,
        pairs: source.pairs,
        head: source.head,
        metadata: source.metadata,
      };
      if (dtype === 'F16' && !(dtypes.size === 1 && dtypes.has('F16')))
        output.stderr('note: f16 rounds every value to 11 significant bits\n');
      if (options.to === 'peft') {
        await saveAdapter(options.out, adapter, {
          dtype,
          family: source.family,
          ...(source.peftNote ? { peftNote: source.peftNote } : {}),
        });
        output.stdout(`wrote ${options.out} (PEFT, ${dtype})\n`);
        return;
      }
      await mkdir(options.out, { recursive: true });
      const path = join(options.out, meloOfficialFileName(adapter));
      const notes = await exportMeloOfficial(adapter, path, {
        dtype,
        ...(options.dropBias ? { dropBias: true } : {}),
      });
      for (const note of notes) output.stderr(`note: ${note}\n`);
      output.stdout(`wrote ${path} (official MeLo, ${dtype}, scale ${loraScale(adapter.lora)})\n`);
    });
}
