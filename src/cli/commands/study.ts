import { access, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Command } from 'commander';
import { resolveBccdDir } from '../../data/bccd-fetch.ts';
import { medmnistCacheDir } from '../../data/medmnist-fetch.ts';
import { MeloError } from '../../errors.ts';
import { writeFileAtomic } from '../../io/atomic.ts';
import type { TrainingMethod } from '../../model/task-graph.ts';
import {
  ablationVariants,
  STUDY_PROTOCOL_NAMES,
  STUDY_PROTOCOLS,
  studyProtocol,
} from '../../study/protocols.ts';
import {
  ablationTable,
  int8Table,
  type PublishedReference,
  runStudy,
  type StudyDataset,
  studyTable,
} from '../../study/run.ts';
import { parsePositiveInt } from '../options.ts';
import { SHIPPED_BACKBONE } from './demo.ts';

interface StudyFlags {
  backbone: string;
  protocol: string;
  out?: string;
  epochs?: number;
  batchSize?: number;
  seeds: string;
  methods: string;
  datasets?: string;
  bccd?: string;
  doc?: string;
  limit?: number;
  threads?: number;
  ablationRanks?: string;
  ablationTargets?: string;
  int8?: boolean;
  run: boolean;
}

/**
 * MedMNIST v2 (Yang et al., Scientific Data 2023), Table 3, ResNet-18 at 28 px: test ACC and AUC as
 * published (transcribed by hand). Our PneumoniaMNIST train split is a class-imbalanced subset (see
 * ../shared/data/README.md), so that row compares on the official test split only.
 */
const MEDMNIST_RESNET18_28: Record<string, PublishedReference> = {
  breastmnist: {
    label: 'MedMNIST v2 ResNet-18 (28), published',
    accuracy: 0.863,
    auc: 0.901,
    parameters: '11.2 M (all)',
  },
  pneumoniamnist: {
    label: 'MedMNIST v2 ResNet-18 (28), published',
    accuracy: 0.854,
    auc: 0.944,
    parameters: '11.2 M (all)',
  },
  retinamnist: {
    label: 'MedMNIST v2 ResNet-18 (28), published',
    accuracy: 0.524,
    auc: 0.717,
    parameters: '11.2 M (all)',
  },
};

/**
 * MedMNIST+ (Doerrich et al. 2024), DINO ViT-B/16 linear probe at 224 px, test AUC/ACC as published (in %,
 * transcribed by hand): a frozen ImageNet-self-supervised ViT-B with only a linear head, on full training
 * splits at 224 px — a far larger backbone and resolution than the study's.
 */
const MEDMNIST_PLUS_DINO_VITB16_224: Record<string, PublishedReference> = {
  breastmnist: {
    label: 'MedMNIST+ DINO ViT-B/16 linear probe (224), published',
    accuracy: 0.8868,
    auc: 0.9343,
    parameters: '86 M frozen + head',
  },
  pneumoniamnist: {
    label: 'MedMNIST+ DINO ViT-B/16 linear probe (224), published',
    accuracy: 0.9156,
    auc: 0.9892,
    parameters: '86 M frozen + head',
  },
  retinamnist: {
    label: 'MedMNIST+ DINO ViT-B/16 linear probe (224), published',
    accuracy: 0.6258,
    auc: 0.8557,
    parameters: '86 M frozen + head',
  },
};

function publishedReferences(dataset: string): PublishedReference[] {
  return [MEDMNIST_RESNET18_28[dataset], MEDMNIST_PLUS_DINO_VITB16_224[dataset]].filter(
    (reference): reference is PublishedReference => reference !== undefined,
  );
}

/** The doc's markers for one table: `<!-- study-table:<name>:start -->` … `<!-- study-table:<name>:end -->`. */
function markers(table: string): { start: string; end: string } {
  return { start: `<!-- study-table:${table}:start -->`, end: `<!-- study-table:${table}:end -->` };
}

/** Reads the doc and checks it has every marker pair the study will fill — before any run starts. */
async function checkDoc(file: string, tables: readonly string[]): Promise<void> {
  const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
    throw new MeloError(
      'USAGE',
      error.code === 'ENOENT' ? '--doc file does not exist' : `--doc file cannot be read (${error.code})`,
      { file },
    );
  });
  for (const table of tables) {
    const { start, end } = markers(table);
    const at = text.indexOf(start);
    if (at < 0 || text.indexOf(end, at) < 0)
      throw new MeloError('USAGE', `has no ${start} … ${end} markers`, { file });
  }
}

async function fillDoc(file: string, table: string, content: string): Promise<void> {
  const text = await readFile(file, 'utf8');
  const { start, end } = markers(table);
  const from = text.indexOf(start);
  const to = text.indexOf(end, from);
  if (from < 0 || to < 0) throw new MeloError('USAGE', `has no ${start} … ${end} markers`, { file });
  await writeFileAtomic(file, `${text.slice(0, from + start.length)}\n${content}${text.slice(to)}`);
}

export function registerStudyCommand(program: Command): void {
  program
    .command('study')
    .description(
      'linear probing vs MeLo LoRA vs full fine-tuning on four datasets, several seeds; writes a table',
    )
    .option('--backbone <dir>', 'backbone checkpoint', SHIPPED_BACKBONE)
    .option(
      '--protocol <name>',
      `training budget: ${STUDY_PROTOCOL_NAMES.map((name) => `${name} (${STUDY_PROTOCOLS[name].description})`).join('; ')}`,
      'small-budget',
    )
    .option('--out <dir>', 'runs and results (default melo-study/<protocol>; rerunning skips finished runs)')
    .option('--epochs <n>', "epochs for every method (default: the protocol's)", parsePositiveInt)
    .option('--batch-size <n>', "images per step (default: the protocol's)", parsePositiveInt)
    .option('--seeds <list>', 'seeds', '0,1,2')
    .option('--methods <list>', 'methods', 'linear,lora,full')
    .option('--datasets <list>', 'only these datasets')
    .option('--bccd <dir>', 'BCCD dataset directory (default: MELO_BCCD_DIR, else download)')
    .option(
      '--doc <file.md>',
      'Markdown file whose <!-- study-table:<protocol>:start/end --> markers receive the table (checked before any run)',
    )
    .option(
      '--limit <n>',
      "at most N training and validation images per run (test splits stay whole; default: the protocol's)",
      parsePositiveInt,
    )
    .option('--threads <n>', 'ONNX Runtime threads', parsePositiveInt)
    .option('--ablation-ranks <list>', 'LoRA ablation: these ranks (e.g. 4,8,16) for method lora')
    .option(
      '--ablation-targets <sets>',
      "LoRA ablation: target sets separated by ';' (e.g. 'query,value;query,key,value,output')",
    )
    .option(
      '--int8',
      'also train MeLo LoRA and full fine-tuning (of --methods) through the int8 backbone, and evaluate every fp32 LoRA adapter through it; the table goes to the <protocol>-int8 markers',
    )
    .option('--no-run', 'only write the table from the runs already finished in --out')
    .action(async (flags: StudyFlags) => {
      const started = Date.now();
      const protocol = studyProtocol(flags.protocol);
      const ablation = flags.ablationRanks !== undefined || flags.ablationTargets !== undefined;
      const variants = ablation
        ? ablationVariants(flags.ablationRanks ?? '4', flags.ablationTargets ?? 'query,value')
        : undefined;
      if (ablation && flags.int8)
        throw new MeloError(
          'USAGE',
          '--int8 compares MeLo LoRA itself: run it without --ablation-ranks/--ablation-targets',
        );
      const tableName = ablation
        ? `${protocol.name}-ablation`
        : flags.int8
          ? `${protocol.name}-int8`
          : protocol.name;
      if (flags.doc) await checkDoc(flags.doc, [tableName]);
      const datasets = await studyDatasets(flags);
      // The int8 comparison is of the methods that train through the backbone (LoRA, full fine-tuning):
      // linear probing's runs are neither needed nor trained.
      const listed = flags.methods.split(',') as TrainingMethod[];
      const methods = flags.int8 ? listed.filter((method) => method !== 'linear') : listed;
      if (methods.length === 0)
        throw new MeloError('USAGE', '--int8 compares lora or full: add one of them to --methods');
      const runs = await runStudy({
        backbone: flags.backbone,
        datasets,
        methods,
        seeds: flags.seeds.split(',').map(Number),
        protocol,
        epochs: flags.epochs ?? protocol.epochs,
        batchSize: flags.batchSize ?? protocol.batchSize,
        outDir: flags.out ?? join('melo-study', ablation ? tableName : protocol.name),
        ...(flags.limit ? { limit: flags.limit } : {}),
        ...(variants ? { variants } : {}),
        ...(flags.threads ? { threads: flags.threads } : {}),
        ...(flags.int8 ? { precisions: ['fp32', 'int8'] as const } : {}),
        log: (line) => process.stderr.write(`${line}\n`),
        runMissing: flags.run,
      });
      const table = ablation
        ? ablationTable(runs, datasets)
        : flags.int8
          ? int8Table(runs, datasets)
          : studyTable(runs, datasets, methods);
      process.stdout.write(table);
      if (flags.doc) await fillDoc(flags.doc, tableName, table);
      const seconds = Math.round((Date.now() - started) / 1000);
      process.stderr.write(`study took ${Math.floor(seconds / 60)} min ${seconds % 60} s\n`);
    });
}

async function studyDatasets(flags: StudyFlags): Promise<StudyDataset[]> {
  const dir = process.env.MELO_DATA_DIR ?? medmnistCacheDir();
  const find = async (names: string[]) => {
    for (const name of names) {
      const path = join(dir, `${name}.npz`);
      if (
        await access(path).then(
          () => true,
          () => false,
        )
      )
        return path;
    }
    throw new MeloError(
      'NOT_FOUND',
      `none of ${names.map((n) => `${n}.npz`).join(', ')} in ${dir} (set MELO_DATA_DIR or run 'melo data fetch medmnist')`,
    );
  };
  const wanted = (name: string) => flags.datasets === undefined || flags.datasets.split(',').includes(name);
  const all: StudyDataset[] = [];
  if (wanted('breastmnist')) {
    all.push({
      name: 'breastmnist',
      modality: 'ultrasound',
      spec: await find(['breastmnist']),
      references: publishedReferences('breastmnist'),
    });
  }
  if (wanted('pneumoniamnist')) {
    all.push({
      name: 'pneumoniamnist',
      modality: 'chest X-ray',
      spec: await find(['pneumoniamnist', 'pneumoniamnist_subset']),
      references: publishedReferences('pneumoniamnist'),
    });
  }
  if (wanted('retinamnist')) {
    all.push({
      name: 'retinamnist',
      modality: 'fundus',
      spec: await find(['retinamnist']),
      ordinal: true,
      references: publishedReferences('retinamnist'),
    });
  }
  if (wanted('bccd')) {
    all.push({
      name: 'bccd',
      modality: 'microscopy',
      spec: `bccd:${await resolveBccdDir({ ...(flags.bccd ? { flag: flags.bccd } : {}) })}`,
    });
  }
  if (all.length === 0)
    throw new MeloError(
      'USAGE',
      `--datasets ${flags.datasets} names none of breastmnist, pneumoniamnist, retinamnist, bccd`,
    );
  return all;
}
