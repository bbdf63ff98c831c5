/**
 * `melo study`: the protocol presets reach `melo train` as flags, the --doc file is checked before any run,
 * runs are skipped when already recorded and refused across protocols, and the tables count what they say.
 * The end-to-end part trains real (one-epoch, 40-image) runs on BreastMNIST with the test fixture ViT.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ablationVariants, MELO_VARIANT, STUDY_PROTOCOLS } from '../src/study/protocols.ts';
import {
  ablationTable,
  int8Table,
  loraVersusFull,
  planStudy,
  type StudyDataset,
  type StudyOptions,
  type StudyRun,
  studyTable,
  trainArguments,
} from '../src/study/run.ts';
import { runCli } from './helpers/cli.ts';

const REPO = join(import.meta.dirname, '..');
const SHARED = process.env.MELO_SHARED_DATA ?? join(REPO, '..', 'shared', 'data');
const MEDMNIST_DIR = join(SHARED, 'medmnist');
const BACKBONE = join(REPO, 'test', 'fixtures', 'vit', 'hf');
const noData = existsSync(join(MEDMNIST_DIR, 'breastmnist.npz'))
  ? false
  : `no MedMNIST data at ${MEDMNIST_DIR}`;

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-study-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const dataset: StudyDataset = { name: 'breastmnist', modality: 'ultrasound', spec: 'breast.npz' };

function options(protocol: keyof typeof STUDY_PROTOCOLS): StudyOptions {
  const preset = STUDY_PROTOCOLS[protocol];
  return {
    backbone: 'b',
    datasets: [dataset],
    methods: ['lora'],
    seeds: [0],
    protocol: preset,
    epochs: preset.epochs,
    batchSize: preset.batchSize,
    outDir: 'o',
    log: () => {},
  };
}

function flag(args: readonly string[], name: string): string | undefined {
  const at = args.indexOf(name);
  return at < 0 ? undefined : args[at + 1];
}

test('melo-paper protocol trains with the official script: Adam 1e-3, cosine to 1e-6, 20 epochs, whole split', () => {
  const args = trainArguments(options('melo-paper'), { dataset, method: 'full', seed: 2 });
  assert.equal(flag(args, '--lr'), '0.001');
  assert.equal(flag(args, '--weight-decay'), '0');
  assert.equal(flag(args, '--min-lr'), '1e-6');
  assert.equal(flag(args, '--warmup-steps'), '0');
  assert.equal(flag(args, '--max-grad-norm'), '0');
  assert.equal(flag(args, '--epochs'), '20');
  assert.equal(flag(args, '--limit'), undefined);
  assert.equal(flag(args, '--class-weights'), undefined);
  assert.equal(flag(args, '--rank'), '4');
  assert.equal(flag(args, '--alpha'), '4');
  assert.equal(flag(args, '--targets'), 'query,value');
  assert.equal(flag(args, '--seed'), '2');
});

test('small-budget protocol caps the training images at 500 (the cap reaches melo train)', () => {
  const args = trainArguments(options('small-budget'), { dataset, method: 'lora', seed: 0 });
  assert.equal(flag(args, '--limit'), '500');
  assert.equal(flag(args, '--epochs'), '3');
  assert.equal(flag(args, '--lr'), '0.003');
  assert.equal(flag(args, '--class-weights'), 'balanced');
  const variant = trainArguments(options('small-budget'), {
    dataset,
    method: 'lora',
    seed: 0,
    variant: { rank: 16, targets: ['query', 'key', 'value', 'output'] },
  });
  assert.equal(flag(variant, '--rank'), '16');
  assert.equal(flag(variant, '--alpha'), '16');
  assert.equal(flag(variant, '--targets'), 'query,key,value,output');
  assert.equal(variant.includes('--ordinal'), false);
  const graded = trainArguments(options('small-budget'), {
    dataset: { ...dataset, name: 'retinamnist', ordinal: true },
    method: 'lora',
    seed: 0,
  });
  assert.equal(graded.includes('--ordinal'), true);
});

test('ablation variants are every rank with every target set; bad lists fail with one line', () => {
  const variants = ablationVariants('4,8', 'query,value;query,key,value,output');
  assert.deepEqual(variants, [
    { rank: 4, targets: ['query', 'value'] },
    { rank: 4, targets: ['query', 'key', 'value', 'output'] },
    { rank: 8, targets: ['query', 'value'] },
    { rank: 8, targets: ['query', 'key', 'value', 'output'] },
  ]);
  assert.throws(() => ablationVariants('4,x', 'query'), /--ablation-ranks: 'x' is not a positive integer/);
  assert.throws(() => ablationVariants('4', 'query;;value'), /empty target set/);
});

function run(partial: Partial<StudyRun> & Pick<StudyRun, 'method' | 'seed' | 'auc'>): StudyRun {
  return {
    dataset: 'breastmnist',
    accuracy: 0.5,
    trainableParameters: 100,
    modelParameters: 1000,
    savedBytes: 2048,
    trainSeconds: 1,
    peakRssBytes: 2 ** 20,
    ...partial,
  };
}

test('the LoRA-vs-full count uses mean AUC over seeds and says how many datasets are within a point', () => {
  const runs = [
    run({ method: 'lora', seed: 0, auc: 0.8 }),
    run({ method: 'lora', seed: 1, auc: 0.82 }),
    run({ method: 'full', seed: 0, auc: 0.815 }),
    run({ method: 'full', seed: 1, auc: 0.815 }),
    run({ dataset: 'retinamnist', method: 'lora', seed: 0, auc: 0.7 }),
    run({ dataset: 'retinamnist', method: 'full', seed: 0, auc: 0.728 }),
    // An ablation variant must not count as MeLo's own LoRA.
    run({
      dataset: 'retinamnist',
      method: 'lora',
      seed: 0,
      auc: 0.9,
      variant: { rank: 16, targets: ['query'] },
    }),
  ];
  const datasets = [dataset, { ...dataset, name: 'retinamnist' }];
  const text = loraVersusFull(runs, datasets);
  assert.match(text, /\*\*1 of 2\*\*/);
  assert.match(text, /breastmnist −0\.0050 \(LoRA ± 0\.014, full ± 0\.000\)/);
  assert.match(text, /retinamnist −0\.0280/);
  const table = studyTable(runs, datasets, ['lora', 'full']);
  assert.match(
    table,
    /\| retinamnist \| MeLo LoRA r=4 \(q,v\) \| 1 \| 0\.500 ± 0\.000 \| 0\.700 ± 0\.000 \|/,
  );
  const ablation = ablationTable(runs, datasets);
  assert.match(
    ablation,
    /\| retinamnist \| LoRA r=16 \(q\) \| 1 \| 100 \| 2\.0 KiB \| 0\.900 ± 0\.000 \| n\/a \| \+0\.1720 \|/,
  );
  assert.match(ablation, /\| retinamnist \| LoRA r=4 \(q,v\) \| 1 \| .* \| −0\.0280 \|/);
  // The verdict: the smallest adapter within a point (MeLo's own misses on retinamnist, r=16 (q) makes it).
  assert.match(
    ablation,
    /within one point of full fine-tuning's \(or above it\): breastmnist: LoRA r=4 \(q,v\), 100 trainable parameters, 2\.0 KiB; retinamnist: LoRA r=16 \(q\), 100 trainable parameters, 2\.0 KiB\./,
  );
  assert.equal(MELO_VARIANT.rank, 4);
});

test('--int8 plans every LoRA run at int8 beside fp32, trains it through the int8 backbone, and keeps it out of the main tables', () => {
  const plan = planStudy({
    ...options('melo-paper'),
    methods: ['linear', 'lora'],
    seeds: [0, 1],
    precisions: ['fp32', 'int8'],
  });
  assert.deepEqual(
    plan.map((p) => `${p.method}${p.precision ? `-${p.precision}` : ''}-${p.seed}`),
    ['linear-0', 'linear-1', 'lora-0', 'lora-1', 'lora-int8-0', 'lora-int8-1'],
  );
  assert.equal(flag(trainArguments(options('melo-paper'), plan[4]!), '--backbone-precision'), 'int8');
  assert.equal(trainArguments(options('melo-paper'), plan[2]!).includes('--backbone-precision'), false);

  const runs = [
    run({ method: 'lora', seed: 0, auc: 0.8, int8Eval: { accuracy: 0.6, auc: 0.79, kappa: null } }),
    run({ method: 'lora', seed: 1, auc: 0.82, int8Eval: { accuracy: 0.6, auc: 0.83, kappa: null } }),
    run({ method: 'lora', seed: 0, auc: 0.78, precision: 'int8', accuracy: 0.7 }),
    run({ method: 'lora', seed: 1, auc: 0.8, precision: 'int8', accuracy: 0.7 }),
    run({
      dataset: 'retinamnist',
      method: 'lora',
      seed: 0,
      auc: 0.7,
      int8Eval: { accuracy: 0.5, auc: 0.7, kappa: 0.3 },
    }),
    run({ dataset: 'retinamnist', method: 'lora', seed: 0, auc: 0.695, precision: 'int8' }),
  ];
  const datasets = [dataset, { ...dataset, name: 'retinamnist' }];
  const table = int8Table(runs, datasets);
  // breastmnist: int8 training −0.02 (past the line), int8 evaluation 0.000; retinamnist −0.005 and 0.
  assert.match(
    table,
    /\| breastmnist \| 2 \| 0\.500 ± 0\.000 \| 0\.810 ± 0\.014 \| 0\.700 ± 0\.000 \| 0\.790 ± 0\.014 \| 0\.600 ± 0\.000 \| 0\.810 ± 0\.028 \| −0\.0200 \| \+0\.0000 \|/,
  );
  assert.match(table, /\| retinamnist \| 1 \| .* \| −0\.0050 \| \+0\.0000 \|/);
  assert.match(table, /on \*\*1 of 2\*\* datasets/);
  // The int8 runs never enter the fp32 study table or the ablation.
  assert.match(
    studyTable(runs, datasets, ['lora']),
    /\| breastmnist \| MeLo LoRA r=4 \(q,v\) \| 2 \| 0\.500 ± 0\.000 \| 0\.810 ± 0\.014 \|/,
  );
  assert.match(
    ablationTable(runs, datasets),
    /\| retinamnist \| LoRA r=4 \(q,v\) \| 1 \| .* \| 0\.700 ± 0\.000 \|/,
  );
});

test('full fine-tuning through int8 gets its own table: fp32 against SwitchBack training, paired by seed', () => {
  const runs = [
    run({ method: 'full', seed: 0, auc: 0.8, accuracy: 0.7 }),
    run({ method: 'full', seed: 1, auc: 0.9, accuracy: 0.8 }),
    run({ method: 'full', seed: 0, auc: 0.79, precision: 'int8', accuracy: 0.7 }),
    run({ method: 'full', seed: 1, auc: 0.88, precision: 'int8', accuracy: 0.8 }),
    // A seed without its int8 twin is left out of the pairing.
    run({ method: 'full', seed: 2, auc: 0.1 }),
  ];
  const table = int8Table(runs, [dataset]);
  // Only full fine-tuning ran: no LoRA table.
  assert.doesNotMatch(table, /fp32 \/ int8 AUC/);
  assert.match(table, /Full fine-tuning, trained in fp32 and through int8 \(SwitchBack\)/);
  assert.match(
    table,
    /\| breastmnist \| 2 \| 0\.750 ± 0\.071 \| 0\.850 ± 0\.071 \| 0\.750 ± 0\.071 \| 0\.835 ± 0\.064 \| −0\.0150 \|/,
  );
  assert.match(table, /int8 training loses at most 0\.01 mean test AUC on \*\*0 of 1\*\* datasets/);
  assert.equal(int8Table(runs.slice(0, 2), [dataset]), '');
});

function melo(args: readonly string[]) {
  return runCli(args, { env: { MELO_DATA_DIR: MEDMNIST_DIR }, timeoutMs: 300_000 });
}

test('a missing --doc fails with one line before any run', { skip: noData }, async () => {
  const out = join(dir, 'never');
  const result = await melo([
    'study',
    '--doc',
    join(dir, 'missing.md'),
    '--out',
    out,
    '--datasets',
    'breastmnist',
  ]);
  assert.notEqual(result.code, 0);
  assert.match(result.stderr.trim(), /missing\.md.*--doc file does not exist/);
  assert.equal(result.stderr.trim().split('\n').length, 1);
  assert.equal(existsSync(out), false);
  await writeFile(join(dir, 'nomarkers.md'), '# no markers\n');
  const noMarkers = await melo([
    'study',
    '--doc',
    join(dir, 'nomarkers.md'),
    '--out',
    out,
    '--datasets',
    'breastmnist',
  ]);
  assert.match(
    noMarkers.stderr,
    /has no <!-- study-table:small-budget:start --> … <!-- study-table:small-budget:end --> markers/,
  );
  assert.equal(existsSync(out), false);
});

test('study end to end: table into the doc, finished runs skipped, protocols never mixed', {
  skip: noData,
}, async () => {
  const doc = join(dir, 'study.md');
  await writeFile(
    doc,
    'intro\n<!-- study-table:small-budget:start -->\nold\n<!-- study-table:small-budget:end -->\noutro\n',
  );
  const out = join(dir, 'runs');
  const common = ['--backbone', BACKBONE, '--datasets', 'breastmnist', '--methods', 'lora', '--epochs', '1'];
  const first = await melo([
    'study',
    ...common,
    '--seeds',
    '0',
    '--limit',
    '40',
    '--out',
    out,
    '--doc',
    doc,
    '--threads',
    '1',
  ]);
  assert.equal(first.code, 0, first.stderr);
  assert.match(first.stderr, /\[1\/1\] breastmnist lora seed 0/);
  assert.match(first.stderr, /study took \d+ min \d+ s/);
  const recorded = JSON.parse(await readFile(join(out, 'runs.json'), 'utf8')) as StudyRun[];
  assert.equal(recorded.length, 1);
  assert.equal(recorded[0]!.protocol, 'small-budget');
  const text = await readFile(doc, 'utf8');
  assert.match(text, /^intro\n<!-- study-table:small-budget:start -->\n\| dataset \| method \| seeds \|/);
  assert.match(text, /\| breastmnist \| MeLo LoRA r=4 \(q,v\) \| 1 \|/);
  assert.match(text, /<!-- study-table:small-budget:end -->\noutro\n$/);
  assert.doesNotMatch(text, /\nold\n/);

  const second = await melo([
    'study',
    ...common,
    '--seeds',
    '0,1',
    '--limit',
    '40',
    '--out',
    out,
    '--threads',
    '1',
  ]);
  assert.equal(second.code, 0, second.stderr);
  assert.doesNotMatch(second.stderr, /\[1\/2\]/);
  assert.match(second.stderr, /\[2\/2\] breastmnist lora seed 1/);

  const mixed = await melo(['study', ...common, '--protocol', 'melo-paper', '--seeds', '0', '--out', out]);
  assert.notEqual(mixed.code, 0);
  assert.match(mixed.stderr, /holds runs of protocol 'small-budget', not 'melo-paper'/);
});

test('study --int8 end to end: int8 runs trained, fp32 adapters evaluated through int8, lost adapters retrained', {
  skip: noData,
}, async () => {
  const doc = join(dir, 'int8.md');
  await writeFile(
    doc,
    '<!-- study-table:small-budget-int8:start -->\n<!-- study-table:small-budget-int8:end -->\n',
  );
  const out = join(dir, 'int8-runs');
  const args = [
    'study',
    '--backbone',
    BACKBONE,
    '--datasets',
    'breastmnist',
    '--epochs',
    '1',
    '--seeds',
    '0',
    '--limit',
    '40',
    '--threads',
    '1',
    '--out',
    out,
  ];
  const fp32 = await melo([...args, '--methods', 'lora']);
  assert.equal(fp32.code, 0, fp32.stderr);
  const ablation = await melo([...args, '--int8', '--ablation-ranks', '8']);
  assert.match(ablation.stderr, /--int8 compares MeLo LoRA itself/);

  const linearOnly = await melo([...args, '--int8', '--methods', 'linear']);
  assert.notEqual(linearOnly.code, 0);
  assert.match(linearOnly.stderr, /--int8 compares lora or full: add one of them to --methods/);

  // Linear probing is left out of the int8 comparison; LoRA and full fine-tuning train through int8.
  const int8 = await melo([...args, '--int8', '--methods', 'linear,lora,full', '--doc', doc]);
  assert.equal(int8.code, 0, int8.stderr);
  assert.match(int8.stderr, /\[1\/4\] breastmnist lora seed 0: evaluated through the int8 backbone/);
  assert.match(int8.stderr, /\[2\/4\] breastmnist lora int8 seed 0\n/);
  assert.match(int8.stderr, /\[3\/4\] breastmnist full seed 0\n/);
  assert.match(int8.stderr, /\[4\/4\] breastmnist full int8 seed 0\n/);
  const runs = JSON.parse(await readFile(join(out, 'runs.json'), 'utf8')) as StudyRun[];
  assert.equal(runs.length, 4);
  const [trainedFp32, trainedInt8, fullFp32, fullInt8] = runs;
  assert.equal(trainedInt8!.precision, 'int8');
  assert.equal(fullInt8!.precision, 'int8');
  assert.ok(existsSync(join(out, 'runs', 'breastmnist-lora-int8-0', 'adapter_model.safetensors')));
  assert.ok(existsSync(join(out, 'runs', 'breastmnist-full-int8-0', 'model.safetensors')));
  // Metrics through the quantised backbone stay close to fp32's.
  assert.ok(Math.abs(trainedFp32!.int8Eval!.auc! - trainedFp32!.auc!) < 0.05);
  assert.ok(Math.abs(trainedInt8!.auc! - trainedFp32!.auc!) < 0.05);
  assert.ok(Math.abs(fullInt8!.auc! - fullFp32!.auc!) < 0.05);
  const text = await readFile(doc, 'utf8');
  assert.match(text, /\| breastmnist \| 1 \| /);
  assert.match(text, /in training and in evaluation, on \*\*\d of 1\*\* datasets/);
  assert.match(
    text,
    /Full fine-tuning, trained in fp32 and through int8 \(SwitchBack\):[\s\S]*int8 training loses at most 0\.01 mean test AUC on \*\*\d of 1\*\* datasets/,
  );

  // Runs recorded elsewhere (adapters not here) are retrained to be evaluated through int8: same result.
  const copied = join(dir, 'int8-copied');
  await mkdir(copied);
  const withoutInt8 = runs
    .filter((r) => r.precision === undefined && r.method === 'lora')
    .map(({ int8Eval: _, ...rest }) => rest);
  await writeFile(join(copied, 'runs.json'), JSON.stringify(withoutInt8));
  const again = await melo([...args.slice(0, -1), copied, '--int8', '--methods', 'lora', '--seeds', '0']);
  assert.equal(again.code, 0, again.stderr);
  assert.match(
    again.stderr,
    /breastmnist lora seed 0: retrained for its int8 evaluation \(adapter not in --out\)/,
  );
  assert.doesNotMatch(again.stderr, /differs from its record/);
  const rerun = JSON.parse(await readFile(join(copied, 'runs.json'), 'utf8')) as StudyRun[];
  assert.equal(rerun[0]!.auc, trainedFp32!.auc);
  assert.deepEqual(rerun[0]!.int8Eval, trainedFp32!.int8Eval);
  // A record the retraining does not reproduce is replaced, and the study says so.
  const altered = join(dir, 'int8-altered');
  await mkdir(altered);
  await writeFile(join(altered, 'runs.json'), JSON.stringify(withoutInt8.map((r) => ({ ...r, auc: 0.123 }))));
  const mismatch = await melo([...args.slice(0, -1), altered, '--int8', '--methods', 'lora', '--seeds', '0']);
  assert.equal(mismatch.code, 0, mismatch.stderr);
  assert.match(mismatch.stderr, /differs from its record \(accuracy [\d.]+ → [\d.]+, AUC 0\.123 → [\d.]+\)/);
  const replaced = JSON.parse(await readFile(join(altered, 'runs.json'), 'utf8')) as StudyRun[];
  assert.equal(replaced[0]!.auc, trainedFp32!.auc);
});
