/**
 * Crash safety of training output. Every write boundary of an uninterrupted run (creating, filling, syncing
 * and renaming each temporary file; publishing and cleaning up the adapter) is observed, and the output
 * folder is copied as a kill at that instant would leave it. Resuming from each distinct copy must end with
 * the uninterrupted run's adapter, byte for byte, and leave no temporary file behind. A real SIGKILL through
 * the CLI checks the same for a few boundaries.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { cpSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { type Backbone, loadBackbone } from '../src/checkpoints/load.ts';
import { readSafetensors, writeSafetensors } from '../src/checkpoints/safetensors.ts';
import type { Dataset } from '../src/data/dataset.ts';
import { openDataSplits } from '../src/data/open.ts';
import { MeloError } from '../src/errors.ts';
import { NO_AUGMENT } from '../src/imaging/augment.ts';
import { loadAdapter, saveAdapter } from '../src/io/peft.ts';
import { initAdapter } from '../src/model/adapter.ts';
import { MELO_LORA_DEFAULTS } from '../src/model/lora-config.ts';
import { CHECKPOINT_DIR, CHECKPOINT_FILE, checkpointPath } from '../src/train/checkpoint.ts';
import { LOG_FILE, TrainingDiverged, type TrainOptions, train } from '../src/train/trainer.ts';
import { Random } from '../src/util/random.ts';
import { KILL_AT_WRITE_ENV, observeWriteBoundaries } from '../src/util/write-boundary.ts';
import { runCli } from './helpers/cli.ts';
import { npzBytes } from './helpers/npz.ts';

const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;
let backbone: Backbone;
let trainSet: Dataset;
let valSet: Dataset;
let dir = '';
let npz = '';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-checkpoint-'));
  backbone = await loadBackbone(join(FIXTURES, 'hf'));
  // 12 training and 4 validation images of 16×16, two classes told apart by brightness.
  const count = 16;
  const images = new Uint8Array(count * 16 * 16);
  const labels = new Uint8Array(count);
  for (let i = 0; i < count; i++) {
    labels[i] = i % 2;
    for (let p = 0; p < 256; p++) images[i * 256 + p] = (labels[i] ? 180 : 70) + ((p * 7 + i * 13) % 40);
  }
  npz = join(dir, 'tiny.npz');
  await writeFile(
    npz,
    npzBytes({
      train_images: { values: images.subarray(0, 12 * 256), shape: [12, 16, 16] },
      train_labels: { values: labels.subarray(0, 12), shape: [12, 1] },
      val_images: { values: images.subarray(12 * 256), shape: [4, 16, 16] },
      val_labels: { values: labels.subarray(12), shape: [4, 1] },
    }),
  );
  const splits = await openDataSplits(npz);
  trainSet = splits.train!;
  valSet = splits.val!;
});
after(() => rm(dir, { recursive: true, force: true }));

function options(outDir: string, overrides: Partial<TrainOptions> = {}): TrainOptions {
  return {
    backbone,
    train: trainSet,
    val: valSet,
    method: 'lora',
    lora: { ...MELO_LORA_DEFAULTS, rank: 2 },
    optimizer: { kind: 'adamw', weightDecay: 0.01 },
    schedule: { kind: 'cosine', lr: 0.02, warmupSteps: 1 },
    maxGradNorm: 1,
    labelSmoothing: 0,
    epochs: 2,
    batchSize: 4,
    gradAccum: 1,
    shuffle: true,
    augment: { ...NO_AUGMENT, horizontalFlip: 0.5 },
    seed: 11,
    threads: 1,
    taskName: 'tiny',
    outDir,
    // Selecting on loss improves every epoch here, so the adapter is saved mid-run as well as at the end.
    metric: 'loss',
    patience: 0,
    resume: false,
    ...overrides,
  };
}

/** Every file below `root` with its bytes' hash, the log excepted (a resumed run appends to it). */
function contentKey(root: string): string {
  const entries: string[] = [];
  const walk = (path: string, rel: string) => {
    for (const name of readdirSync(path).sort()) {
      const full = join(path, name);
      if (statSync(full).isDirectory()) walk(full, `${rel}${name}/`);
      else if (name !== LOG_FILE)
        entries.push(`${rel}${name}:${createHash('sha256').update(readFileSync(full)).digest('hex')}`);
    }
  };
  walk(root, '');
  return entries.join('\n');
}

const TEMPORARY = /\.tmp$|^\.staging-/;

async function leftovers(root: string): Promise<string[]> {
  const names = await readdir(root, { recursive: true });
  return names.filter((name) => TEMPORARY.test(name.split('/').at(-1)!));
}

/**
 * Trains once while copying the output folder at every write boundary (each distinct state once), then
 * finishes training from every copy and compares `result` (the file the run publishes) byte for byte.
 */
async function killAtEveryBoundary(
  name: string,
  overrides: Partial<TrainOptions>,
  result: string,
): Promise<{ boundaries: number; states: number }> {
  const straight = join(dir, `${name}-straight`);
  const snapshots = new Map<string, { index: number; label: string; path: string }>();
  let boundaries = 0;
  observeWriteBoundaries((label, index) => {
    boundaries++;
    const key = contentKey(straight);
    if (snapshots.has(key)) return;
    const path = join(dir, `${name}-kill-${index}`);
    cpSync(straight, path, { recursive: true });
    snapshots.set(key, { index, label, path });
  });
  try {
    await train(options(straight, overrides));
  } finally {
    observeWriteBoundaries(undefined);
  }
  const expected = await readFile(join(straight, result));
  for (const { index, label, path } of snapshots.values()) {
    const hasCheckpoint = (await readdir(join(path, CHECKPOINT_DIR)).catch(() => [] as string[])).includes(
      CHECKPOINT_FILE,
    );
    await train(options(path, { ...overrides, resume: hasCheckpoint }));
    assert.deepEqual(
      await readFile(join(path, result)),
      expected,
      `${name}: killed at boundary ${index} (${label}), ${hasCheckpoint ? 'resumed' : 'restarted'}`,
    );
    assert.deepEqual(await leftovers(path), [], `${name}: temporaries left after boundary ${index}`);
    await rm(path, { recursive: true, force: true });
  }
  return { boundaries, states: snapshots.size };
}

test('a kill at any write boundary leaves a state from which training ends with the same adapter', async (t) => {
  const { boundaries, states } = await killAtEveryBoundary('lora', {}, 'adapter_model.safetensors');
  // 2 checkpoints and 2 adapter saves (val loss improves each epoch), each file: created, written, synced, renamed.
  assert.ok(boundaries >= 2 * 5 + 2 * 11, `${boundaries} boundaries`);
  assert.ok(states >= 15, `${states} distinct states`);
  t.diagnostic(`LoRA: ${boundaries} write boundaries, ${states} distinct on-disk states`);
});

test('full fine-tuning (optimiser on worker threads) survives a kill at any write boundary too', async (t) => {
  const { boundaries, states } = await killAtEveryBoundary(
    'full',
    { method: 'full', val: undefined, schedule: { kind: 'constant', lr: 0.001, warmupSteps: 0 } },
    'model.safetensors',
  );
  assert.ok(states >= 8, `${states} distinct states`);
  t.diagnostic(`full fine-tuning: ${boundaries} write boundaries, ${states} distinct on-disk states`);
});

test('a real SIGKILL at a write boundary, then --resume, ends with the uninterrupted adapter', async () => {
  const common = [
    'train',
    '--backbone',
    join(FIXTURES, 'hf'),
    '--data',
    npz,
    '--rank',
    '2',
    '--epochs',
    '2',
    '--batch-size',
    '4',
    '--lr',
    '0.02',
    '--seed',
    '5',
    '--threads',
    '1',
    '--task-name',
    'tiny',
  ];
  const straight = join(dir, 'cli-straight');
  const full = await runCli([...common, '--out', straight]);
  assert.equal(full.code, 0, full.stderr);
  const expected = await readFile(join(straight, 'adapter_model.safetensors'));
  // Boundary 2: the first checkpoint's temporary file is written but not renamed; boundary 8: after the
  // second checkpoint's rename (the last legacy-file sweep).
  for (const killAt of [2, 8]) {
    const out = join(dir, `cli-kill-${killAt}`);
    const killed = await runCli([...common, '--out', out], { env: { [KILL_AT_WRITE_ENV]: String(killAt) } });
    assert.equal(killed.code, -1, `killed at ${killAt}: ${killed.stderr}`);
    const resumable = (await readdir(join(out, CHECKPOINT_DIR)).catch(() => [] as string[])).includes(
      CHECKPOINT_FILE,
    );
    const resumed = await runCli([...common, '--out', out, ...(resumable ? ['--resume', out] : [])]);
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.deepEqual(await readFile(join(out, 'adapter_model.safetensors')), expected, `killed at ${killAt}`);
    assert.deepEqual(await leftovers(out), []);
  }
});

test('--resume refuses a checkpoint whose parts disagree on the step, and the old three-file layout', async () => {
  const out = join(dir, 'mixed');
  await train(options(out, { epochs: 1, val: undefined }));
  const path = checkpointPath(out);
  const file = await readSafetensors(path);
  const state = JSON.parse(file.metadata.melo_trainer_state!) as { step: number };
  await writeSafetensors(path, file.tensors, {
    metadata: { ...file.metadata, melo_trainer_state: JSON.stringify({ ...state, step: state.step - 1 }) },
  });
  await assert.rejects(
    train(options(out, { epochs: 2, val: undefined, resume: true })),
    (error: unknown) =>
      error instanceof MeloError &&
      error.message ===
        `${path}: mixed checkpoint: the trainer is at step ${state.step - 1} but the optimiser at step ${state.step}; refusing to resume`,
  );

  const legacy = join(dir, 'legacy');
  await mkdir(join(legacy, CHECKPOINT_DIR), { recursive: true });
  for (const name of ['trainer-state.json', 'parameters.safetensors', 'optimizer.safetensors'])
    await writeFile(join(legacy, CHECKPOINT_DIR, name), '{}');
  await assert.rejects(
    train(options(legacy, { resume: true })),
    /holds the three-file checkpoint of an earlier melo, whose parts cannot be shown to come from one step/,
  );
});

test('temporaries left by a killed writer are removed when training starts again', async () => {
  const out = join(dir, 'stale');
  await mkdir(join(out, CHECKPOINT_DIR), { recursive: true });
  // A pid that cannot be running (above Linux's pid_max limit of 2^22).
  const dead = 4_194_999;
  const stale = [
    `.adapter_model.safetensors.${dead}.0123456789ab.tmp`,
    `.staging-${dead}-1700000000000`,
    `${CHECKPOINT_DIR}/.${CHECKPOINT_FILE}.${dead}.abcdefabcdef.tmp`,
  ];
  await writeFile(join(out, stale[0]!), 'partial');
  await mkdir(join(out, stale[1]!));
  await writeFile(join(out, stale[2]!), 'partial');
  // Someone else's file that merely looks similar is kept.
  await writeFile(join(out, 'notes.tmp'), 'mine');
  await train(options(out, { epochs: 1, val: undefined }));
  assert.deepEqual(await leftovers(out), ['notes.tmp']);
});

test('train --init-adapter from another backbone fails with one line and leaves nothing behind', async () => {
  const lora = { ...MELO_LORA_DEFAULTS, rank: 2 };
  const foreign = join(dir, 'foreign-adapter');
  const metadata = {
    task: 'tiny',
    taskType: 'binary' as const,
    labels: ['0', '1'],
    backboneFingerprint: 'sha256:0123',
  };
  await saveAdapter(foreign, initAdapter(backbone.config, lora, metadata, new Random(1)));
  const out = join(dir, 'never');
  const result = await runCli([
    'train',
    '--backbone',
    join(FIXTURES, 'hf'),
    '--data',
    npz,
    '--init-adapter',
    foreign,
    '--epochs',
    '1',
    '--out',
    out,
  ]);
  assert.equal(result.code, 1);
  const errors = result.stderr.split('\n').filter((line) => line.startsWith('melo: error:'));
  assert.deepEqual(errors, [
    `melo: error: ${foreign}: was trained on another backbone (fingerprint sha256:0123; ${join(FIXTURES, 'hf')} is ${backbone.fingerprint})`,
  ]);
  await assert.rejects(readdir(out), /ENOENT/);

  // The library refuses it too, before creating anything.
  await assert.rejects(
    train(options(out, { initAdapter: await loadAdapter(foreign), lora })),
    /initial adapter: was trained on another backbone/,
  );
  await assert.rejects(readdir(out), /ENOENT/);
});

test('a diverging run stops with one line, keeps its last good checkpoint and writes no adapter', async () => {
  // NaN pixels from the very first batch: the loss is NaN at step 1, and the folder the run made is removed.
  const nanPath = join(dir, 'nan.npz');
  await writeFile(
    nanPath,
    npzBytes({
      train_images: { values: new Float32Array(8 * 64).fill(Number.NaN), shape: [8, 8, 8] },
      train_labels: { values: new Uint8Array([0, 1, 0, 1, 0, 1, 0, 1]), shape: [8, 1] },
    }),
  );
  const nanSplits = await openDataSplits(nanPath, { valFraction: 0 });
  const early = join(dir, 'diverged-early');
  await assert.rejects(
    train(options(early, { train: nanSplits.train!, val: undefined })),
    (error: unknown) =>
      error instanceof TrainingDiverged &&
      error.message ===
        'training stopped at step 1 (epoch 1): the loss is NaN (non-finite pixels, or a learning rate too high?); no checkpoint had been written and nothing non-finite was saved',
  );
  await assert.rejects(readdir(early), /ENOENT/);

  // A checkpoint at step 2, then a resumed run with an absurd learning rate: its weights pass ±1e6.
  const late = join(dir, 'diverged-late');
  const controller = new AbortController();
  await assert.rejects(
    train(
      options(late, {
        signal: controller.signal,
        onEvent: (event) => {
          if (event.type === 'step' && event.step === 2) controller.abort();
        },
      }),
    ),
    /training interrupted/,
  );
  const good = await readFile(checkpointPath(late));
  await assert.rejects(
    train(options(late, { resume: true, schedule: { kind: 'constant', lr: 1e30, warmupSteps: 0 } })),
    (error: unknown) =>
      error instanceof TrainingDiverged &&
      /^training stopped at step 3 \(epoch 1\): the updated \S+ holds \S+ \(beyond ±1000000\)/.test(
        error.message,
      ) &&
      error.message.endsWith(
        `the last good checkpoint is kept in ${checkpointPath(late)} and nothing non-finite was saved`,
      ),
  );
  assert.deepEqual(await readFile(checkpointPath(late)), good, 'the last good checkpoint is untouched');
  assert.deepEqual(
    (await readdir(late)).filter((name) => name.startsWith('adapter')),
    [],
    'no adapter was written',
  );
});
