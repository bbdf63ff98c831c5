import { statSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { resolveBccdDir } from '../../data/bccd-fetch.ts';
import { formatDemoTable, runDemo } from '../../demo/run.ts';
import { MeloError } from '../../errors.ts';
import { parsePositiveInt } from '../options.ts';
import { progressReporter } from '../progress.ts';

export const SHIPPED_BACKBONE = new URL('../../../models/melo-vit-tiny-fmnist', import.meta.url).pathname;

interface DemoFlags {
  backbone: string;
  out: string;
  dataDir?: string;
  bccd?: string;
  epochs: number;
  batchSize: number;
  lr: number;
  trainLimit: number;
  threads?: number;
  seed: number;
  tasks?: string;
}

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('train, evaluate and report MeLo adapters for four medical tasks on the shipped backbone')
    .option('--backbone <dir>', 'backbone checkpoint', SHIPPED_BACKBONE)
    .option('--out <dir>', 'where adapters and reports go', 'melo-demo')
    .option(
      '--data-dir <dir>',
      'directory of MedMNIST .npz files (default: MELO_DATA_DIR, else download into ~/.cache/melo/medmnist)',
    )
    .option('--bccd <dir>', 'BCCD dataset directory (default: MELO_BCCD_DIR, else download)')
    .option('--epochs <n>', 'epochs per task', parsePositiveInt, 6)
    .option(
      '--train-limit <n>',
      'at most N training images per task (seeded, stratified)',
      parsePositiveInt,
      2000,
    )
    .option('--batch-size <n>', 'images per step', parsePositiveInt, 32)
    .option('--lr <x>', 'peak learning rate', Number, 3e-3)
    .option('--threads <n>', 'ONNX Runtime threads', parsePositiveInt)
    .option('--seed <n>', 'random seed', parsePositiveIntOrZero, 0)
    .option('--tasks <list>', 'only these tasks (comma-separated)')
    .action(async (flags: DemoFlags) => {
      const started = performance.now();
      const log = (line: string) => process.stderr.write(`${line}\n`);
      if (flags.dataDir !== undefined && !statSync(flags.dataDir, { throwIfNoEntry: false })?.isDirectory())
        throw new MeloError('NOT_FOUND', '--data-dir: no such directory', { file: flags.dataDir });
      const medmnistDir = flags.dataDir ?? (process.env.MELO_DATA_DIR || undefined);
      const rows = await runDemo({
        backbone: flags.backbone,
        outDir: flags.out,
        sources: {
          ...(medmnistDir ? { medmnistDir } : {}),
          bccdDir: () => resolveBccdDir({ ...(flags.bccd ? { flag: flags.bccd } : {}) }),
          seed: flags.seed,
        },
        epochs: flags.epochs,
        batchSize: flags.batchSize,
        lr: flags.lr,
        trainLimit: flags.trainLimit,
        ...(flags.threads ? { threads: flags.threads } : {}),
        ...(flags.tasks ? { only: flags.tasks.split(',') } : {}),
        log,
        onTrainEvent: progressReporter(process.stderr, 25),
      });
      process.stdout.write(`\n${formatDemoTable(rows)}\n`);
      process.stdout.write(`report: ${join(flags.out, 'report.html')}\n`);
      process.stdout.write(`total time: ${((performance.now() - started) / 1000).toFixed(0)} s\n`);
      process.stdout.write(
        `serve all four tasks from one process:\n  npx melo serve --backbone ${flags.backbone} --adapters ${join(flags.out, 'adapters')}\n`,
      );
    });
}

function parsePositiveIntOrZero(value: string): number {
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed < 0) throw new Error(`expected an integer ≥ 0, got '${value}'`);
  return parsed;
}
