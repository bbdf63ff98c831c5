import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { type Backbone, loadBackbone } from '../src/checkpoints/load.ts';
import type { Dataset } from '../src/data/dataset.ts';
import { openDataSplits } from '../src/data/open.ts';
import { NO_AUGMENT } from '../src/imaging/augment.ts';
import { loadAdapter } from '../src/io/peft.ts';
import { MELO_LORA_DEFAULTS } from '../src/model/lora-config.ts';
import { loadTasks, predictTasks } from '../src/predict.ts';
import { readCheckpoint } from '../src/train/checkpoint.ts';
import { TrainingInterrupted, type TrainOptions, train } from '../src/train/trainer.ts';

const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;
const DATA = process.env.MELO_DATA_DIR ?? new URL('../../shared/data/medmnist', import.meta.url).pathname;
let backbone: Backbone;
let trainSet: Dataset;
let valSet: Dataset;
let dir = '';

before(async () => {
  backbone = await loadBackbone(join(FIXTURES, 'hf'));
  const splits = await openDataSplits(join(DATA, 'breastmnist.npz'), { limit: 20, seed: 1 });
  trainSet = splits.train!;
  valSet = splits.val!;
  dir = await mkdtemp(join(tmpdir(), 'melo-train-'));
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
    schedule: { kind: 'cosine', lr: 0.01, warmupSteps: 1 },
    maxGradNorm: 1,
    labelSmoothing: 0.1,
    epochs: 2,
    batchSize: 4,
    gradAccum: 2,
    shuffle: true,
    augment: { ...NO_AUGMENT, horizontalFlip: 0.5, brightness: 0.1 },
    seed: 7,
    threads: 1,
    taskName: 'breast',
    outDir,
    metric: 'auc',
    patience: 0,
    resume: false,
    ...overrides,
  };
}

test('LoRA training writes a PEFT adapter that predicts, and reports parameter counts', async () => {
  const out = join(dir, 'lora');
  const summary = await train(options(out));
  assert.equal(summary.epochs, 2);
  assert.equal(summary.steps, 2 * Math.ceil(Math.ceil(20 / 4) / 2));
  // rank 2 on q and v of 2 blocks with hidden 32: 2 blocks × 2 targets × (2·32 + 32·2) = 512; head 2×32+2.
  assert.equal(summary.loraParameters, 512);
  assert.equal(summary.headParameters, 66);
  assert.equal(summary.trainableParameters, 578);
  const files = await readdir(out);
  assert.ok(
    files.includes('adapter_config.json') &&
      files.includes('adapter_model.safetensors') &&
      files.includes('train-log.jsonl'),
  );
  const adapter = await loadAdapter(out);
  assert.equal(adapter.metadata.task, 'breast');
  assert.deepEqual(adapter.metadata.labels, ['malignant', 'normal, benign']);
  assert.equal(adapter.metadata.backboneFingerprint, backbone.fingerprint);
  const log = (await readFile(join(out, 'train-log.jsonl'), 'utf8'))
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line));
  assert.equal(log.filter((entry) => entry.type === 'epoch').length, 2);
  assert.ok(log.every((entry) => entry.type !== 'step' || Number.isFinite(entry.loss)));
  const tasks = await loadTasks(backbone, [out]);
  const image = new URL('../../shared/data/bccd/BCCD/JPEGImages/BloodImage_00000.jpg', import.meta.url)
    .pathname;
  const [prediction] = await predictTasks(backbone, tasks, [image], { threads: 1 });
  assert.equal(prediction!.task, 'breast');
  assert.deepEqual(prediction!.labels, ['malignant', 'normal, benign']);
  assert.ok(Math.abs(prediction!.probabilities[0]! + prediction!.probabilities[1]! - 1) < 1e-9);
});

test('training is deterministic, and an interrupted run resumes to the same adapter', async () => {
  const straight = join(dir, 'straight');
  await train(options(straight));
  const again = join(dir, 'again');
  await train(options(again));
  const expected = await readFile(join(straight, 'adapter_model.safetensors'));
  assert.deepEqual(
    await readFile(join(again, 'adapter_model.safetensors')),
    expected,
    'same seed, same adapter',
  );

  const interrupted = join(dir, 'interrupted');
  const controller = new AbortController();
  await assert.rejects(
    train(
      options(interrupted, {
        signal: controller.signal,
        onEvent: (event) => {
          if (event.type === 'step' && event.step === 2) controller.abort();
        },
      }),
    ),
    TrainingInterrupted,
  );
  const { state } = await readCheckpoint<{ step: number; epoch: number }>(interrupted);
  assert.equal(state.step, 2);
  assert.equal(state.epoch, 0, 'stopped mid-epoch');
  const resumed = await train(options(interrupted, { resume: true }));
  assert.equal(resumed.steps, 6);
  assert.deepEqual(
    await readFile(join(interrupted, 'adapter_model.safetensors')),
    expected,
    'resumed run ends with the same adapter',
  );
});

test('full fine-tuning (optimiser on worker threads) resumes exactly after an interruption', async () => {
  const full = { method: 'full', val: undefined } as const;
  const straight = join(dir, 'full-straight');
  await train(options(straight, full));
  const interrupted = join(dir, 'full-interrupted');
  const controller = new AbortController();
  await assert.rejects(
    train(
      options(interrupted, {
        ...full,
        signal: controller.signal,
        onEvent: (event) => {
          if (event.type === 'step' && event.step === 2) controller.abort();
        },
      }),
    ),
    TrainingInterrupted,
  );
  const resumed = await train(options(interrupted, { ...full, resume: true }));
  assert.equal(resumed.steps, 6);
  assert.deepEqual(
    await readFile(join(interrupted, 'model.safetensors')),
    await readFile(join(straight, 'model.safetensors')),
    'resumed run ends with the same weights',
  );
});

test('linear probing and full fine-tuning run through the same trainer', async () => {
  const linear = await train(options(join(dir, 'linear'), { method: 'linear', epochs: 1 }));
  assert.equal(linear.trainableParameters, 66);
  assert.equal(linear.loraParameters, 0);
  const adapter = await loadAdapter(join(dir, 'linear'));
  assert.equal(adapter.pairs.size, 0);
  const full = await train(options(join(dir, 'full'), { method: 'full', epochs: 1, val: undefined }));
  assert.ok(full.trainableParameters > 20_000);
  const tuned = await loadBackbone(join(dir, 'full'));
  assert.deepEqual(tuned.labels, ['malignant', 'normal, benign']);
  assert.notEqual(tuned.fingerprint, backbone.fingerprint, 'full fine-tuning changed the backbone');
});
