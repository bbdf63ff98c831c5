import { access, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Command } from 'commander';
import { resolveBccdDir } from '../../data/bccd-fetch.ts';
import { medmnistCacheDir } from '../../data/medmnist-fetch.ts';
import { MeloError } from '../../errors.ts';
import { writeFileAtomic } from '../../io/atomic.ts';
import type { TrainingMethod } from '../../model/task-graph.ts';
import { runStudy, type StudyDataset, studyTable } from '../../study/run.ts';
import { parsePositiveInt } from '../options.ts';
import { SHIPPED_BACKBONE } from './demo.ts';

const START = '<!-- study-table:start -->';
const END = '<!-- study-table:end -->';

interface StudyFlags {
  backbone: string;
  out: string;
  epochs: number;
  batchSize: number;
  seeds: string;
  methods: string;
  datasets?: string;
  bccd?: string;
  doc?: string;
  limit?: number;
  threads?: number;
  run: boolean;
}

/**
 * MedMNIST v2 (Yang et al., Scientific Data 2023), Table 3, ResNet-18 at 28 px: test ACC and AUC as
 * published (transcribed by hand). Our PneumoniaMNIST train split is a class-imbalanced subset (see
 * ../shared/data/README.md), so that row compares on the official test split only.
 */
const MEDMNIST_RESNET18_28 = {
  breastmnist: { accuracy: 0.863, auc: 0.901 },
  pneumoniamnist: { accuracy: 0.854, auc: 0.944 },
  retinamnist: { accuracy: 0.524, auc: 0.717 },
};

export function registerStudyCommand(program: Command): void {
  program
    .command('study')
    .description(
      'linear probing vs MeLo LoRA vs full fine-tuning on four datasets, several seeds; writes a table',
    )
    .option('--backbone <dir>', 'backbone checkpoint', SHIPPED_BACKBONE)
    .option('--out <dir>', 'runs and results (rerunning skips finished runs)', 'melo-study')
    .option('--epochs <n>', 'epochs for every method', parsePositiveInt, 5)
    .option('--batch-size <n>', 'images per step', parsePositiveInt, 32)
    .option('--seeds <list>', 'seeds', '0,1,2')
    .option('--methods <list>', 'methods', 'linear,lora,full')
    .option('--datasets <list>', 'only these datasets')
    .option('--bccd <dir>', 'BCCD dataset directory (default: MELO_BCCD_DIR, else download)')
    .option('--doc <file.md>', 'Markdown file whose study-table markers receive the table')
    .option(
      '--limit <n>',
      'at most N training and validation images per run (test splits stay whole)',
      parsePositiveInt,
    )
    .option('--threads <n>', 'ONNX Runtime threads', parsePositiveInt)
    .option('--no-run', 'only write the table from the runs already finished in --out')
    .action(async (flags: StudyFlags) => {
      const datasets = await studyDatasets(flags);
      const methods = flags.methods.split(',') as TrainingMethod[];
      const runs = await runStudy({
        backbone: flags.backbone,
        datasets,
        methods,
        seeds: flags.seeds.split(',').map(Number),
        epochs: flags.epochs,
        batchSize: flags.batchSize,
        lr: { linear: 3e-3, lora: 3e-3, full: 3e-4 },
        outDir: flags.out,
        ...(flags.limit ? { limit: flags.limit } : {}),
        ...(flags.threads ? { threads: flags.threads } : {}),
        log: (line) => process.stderr.write(`${line}\n`),
        runMissing: flags.run,
      });
      const table = studyTable(runs, datasets, methods);
      process.stdout.write(table);
      if (flags.doc) {
        const text = await readFile(flags.doc, 'utf8');
        const start = text.indexOf(START);
        const end = text.indexOf(END);
        if (start < 0 || end < start)
          throw new MeloError('USAGE', `has no ${START} … ${END} markers`, { file: flags.doc });
        await writeFileAtomic(
          flags.doc,
          `${text.slice(0, start + START.length)}\n${table}${text.slice(end)}`,
        );
      }
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
      reference: MEDMNIST_RESNET18_28.breastmnist,
    });
  }
  if (wanted('pneumoniamnist')) {
    all.push({
      name: 'pneumoniamnist',
      modality: 'chest X-ray',
      spec: await find(['pneumoniamnist', 'pneumoniamnist_subset']),
      reference: MEDMNIST_RESNET18_28.pneumoniamnist,
    });
  }
  if (wanted('retinamnist')) {
    all.push({
      name: 'retinamnist',
      modality: 'fundus',
      spec: await find(['retinamnist']),
      reference: MEDMNIST_RESNET18_28.retinamnist,
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
