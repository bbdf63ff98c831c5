import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { loadAdapter } from '../src/io/peft.ts';
import { BackboneClassifier } from '../src/model/inference.ts';
import { adapterFeeds } from '../src/model/task-graph.ts';
import { TaskModel } from '../src/model/task-model.ts';
import { defaultMicroBatch, runInMicroBatches } from '../src/runtime/micro-batch.ts';
import { Random } from '../src/util/random.ts';

const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;

test('micro-batches give the same logits and features as one run, for the backbone and a task', async () => {
  const backbone = await loadBackbone(join(FIXTURES, 'hf'));
  const adapter = await loadAdapter(join(FIXTURES, 'lora_adapter'));
  const [height, width] = backbone.preprocess.inputSize;
  const batch = 5;
  const random = new Random(4);
  const pixels = Float32Array.from({ length: batch * backbone.config.channels * height * width }, () =>
    random.normal(),
  );
  const whole = await BackboneClassifier.create(backbone, { threads: 1, microBatch: Infinity });
  const split = await BackboneClassifier.create(backbone, { threads: 1, microBatch: 2 });
  const a = await whole.run(pixels, batch);
  const b = await split.run(pixels, batch);
  assert.deepEqual(b.features.shape, a.features.shape);
  assert.deepEqual(b.logits!.shape, a.logits!.shape);
  for (const [x, y] of [
    [a.features.data, b.features.data],
    [a.logits!.data, b.logits!.data],
  ] as const)
    for (const [i, value] of x.entries())
      assert.ok(Math.abs(value - y[i]!) <= 1e-5, `element ${i}: ${value} vs ${y[i]}`);
  await whole.release();
  await split.release();

  const spec = { backbone, method: 'lora' as const, lora: adapter.lora, numClasses: 3, threads: 1 };
  const taskWhole = await TaskModel.create({ ...spec, microBatch: Infinity });
  const taskSplit = await TaskModel.create({ ...spec, microBatch: 3 });
  const weights = adapterFeeds(adapter);
  const c = await taskWhole.run(pixels, batch, weights);
  const d = await taskSplit.run(pixels, batch, weights);
  assert.deepEqual(d.shape, [batch, 3]);
  for (const [i, value] of c.data.entries())
    assert.ok(Math.abs(value - d.data[i]!) <= 1e-5, `task logit ${i}`);
  await taskWhole.release();
  await taskSplit.release();
});

test('runInMicroBatches: chunk sizes, concatenation along the first axis, MELO_MICRO_BATCH', async () => {
  const calls: [number, number][] = [];
  const out = await runInMicroBatches(7, 3, async (start, count) => {
    calls.push([start, count]);
    return {
      rows: { shape: [count, 2], data: Float32Array.from({ length: count * 2 }, (_, i) => start * 2 + i) },
    };
  });
  assert.deepEqual(calls, [
    [0, 3],
    [3, 3],
    [6, 1],
  ]);
  assert.deepEqual(out.rows!.shape, [7, 2]);
  assert.deepEqual([...out.rows!.data], [...Array(14).keys()]);

  const saved = process.env.MELO_MICRO_BATCH;
  try {
    process.env.MELO_MICRO_BATCH = '2';
    assert.equal(defaultMicroBatch(), 2);
    process.env.MELO_MICRO_BATCH = 'two';
    assert.throws(() => defaultMicroBatch(), /MELO_MICRO_BATCH must be a positive integer, got 'two'/);
  } finally {
    if (saved === undefined) delete process.env.MELO_MICRO_BATCH;
    else process.env.MELO_MICRO_BATCH = saved;
  }
});
