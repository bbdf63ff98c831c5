import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { type Backbone, loadBackbone } from '../src/checkpoints/load.ts';
import { ShapeError } from '../src/errors.ts';
import { GraphBuilder } from '../src/graph/builder.ts';
import type { Adapter } from '../src/model/adapter.ts';
import { adapterFeeds } from '../src/model/task-graph.ts';
import { TaskModel } from '../src/model/task-model.ts';
import { gather } from '../src/ops/gather.ts';
import { loadTasks, taskMethod } from '../src/predict.ts';
import { AdapterStack, stackedWeightsOf } from '../src/serve/engine/adapter-stack.ts';
import { DynamicBatcher } from '../src/serve/engine/batcher.ts';
import { type BatchRow, type RowOutcome, ServingEngine } from '../src/serve/engine/engine.ts';
import { AdapterRegistry } from '../src/serve/engine/registry.ts';
import { Random } from '../src/util/random.ts';
import { assertClose } from './helpers/graph.ts';
import { adapterSet, copyFixtureAdapter, FIXTURES, writeAdapter } from './serve-fixtures.ts';

let backbone: Backbone;
let root = '';
let adapters: Record<string, Adapter> = {};

before(async () => {
  backbone = await loadBackbone(join(FIXTURES, 'hf'));
  root = await mkdtemp(join(tmpdir(), 'melo-serve-engine-'));
  adapters = adapterSet(backbone);
  for (const [name, adapter] of Object.entries(adapters)) await writeAdapter(root, name, adapter);
  await copyFixtureAdapter(root, 'fixture');
});
after(() => rm(root, { recursive: true, force: true }));

function randomImages(count: number, seed: number): Float32Array[] {
  const random = new Random(seed);
  const perImage = 3 * 32 * 32;
  return Array.from({ length: count }, () =>
    Float32Array.from({ length: perImage }, () => random.uniform(-1, 1)),
  );
}

/** Each task alone through the single-task model `melo predict --adapter` uses (weights from disk). */
async function referenceLogits(task: string, images: Float32Array[]): Promise<Float32Array[]> {
  const [loaded] = await loadTasks(backbone, [join(root, task === 'fixture' ? 'fixture' : task)]);
  const model = await TaskModel.create({
    backbone,
    method: taskMethod(loaded!.adapter),
    lora: loaded!.adapter.lora,
    numClasses: loaded!.labels.length,
    threads: 1,
  });
  const pixels = new Float32Array(images.length * images[0]!.length);
  images.forEach((image, i) => {
    pixels.set(image, i * image.length);
  });
  const logits = await model.run(pixels, images.length, adapterFeeds(loaded!.adapter));
  await model.release();
  const classes = loaded!.labels.length;
  return images.map((_, i) => logits.data.slice(i * classes, (i + 1) * classes));
}

function expectOk(outcome: RowOutcome | undefined) {
  assert.ok(outcome?.ok, `row failed: ${outcome && !outcome.ok ? outcome.error.message : 'missing'}`);
  return outcome.prediction;
}

test('gather: [T, r, in] by [batch] indices gives [batch, r, in]; indices must be int64', () => {
  const graph = new GraphBuilder();
  const data = graph.input('data', ['tasks', 4, 16]);
  const indices = graph.input('indices', ['batch'], 'int64');
  assert.deepEqual(gather(data, indices).shape, ['batch', 4, 16]);
  assert.deepEqual(gather(data, indices, 2).shape, ['tasks', 4, 'batch']);
  assert.throws(() => gather(data, graph.input('f', ['batch'])), ShapeError);
  assert.throws(() => gather(data, indices, 3), /axis 3 out of range/);
});

test('one mixed batch of every task equals each task run alone (ranks, scales, targets, layers, heads differ)', async () => {
  const registry = await AdapterRegistry.open({ backbone, dir: root, watch: false, rescanMs: 0 });
  const engine = await ServingEngine.create(backbone, registry, { threads: 1 });
  try {
    assert.deepEqual(registry.problems(), []);
    const names = engine.tasks().map((task) => task.name);
    assert.deepEqual(names, ['alpha', 'fixture', 'multi', 'probe', 'twin', 'wide']);
    const images = randomImages(3, 7);
    // Rows interleave tasks and images, with a task repeated, so a wrong gather index would show.
    const rows: BatchRow[] = [];
    const order = ['wide', 'alpha', 'probe', 'twin', 'multi', 'fixture', 'alpha', 'wide', 'twin'];
    order.forEach((task, i) => {
      rows.push({ task, pixels: images[i % 3]! });
    });
    const outcomes = await engine.run(rows);
    const expected = new Map<string, Float32Array[]>();
    for (const task of new Set(order)) expected.set(task, await referenceLogits(task, images));
    order.forEach((task, i) => {
      const prediction = expectOk(outcomes[i]);
      assert.equal(prediction.task, task);
      assertClose(prediction.logits, expected.get(task)![i % 3]!, 1e-5, `${task} row ${i}`);
    });
    // Padded logits are dropped: every task reports exactly its own classes.
    assert.equal(expectOk(outcomes[0]).probabilities.length, 5);
    assert.equal(expectOk(outcomes[2]).probabilities.length, 2);
    // Multi-label: sigmoids, not a softmax.
    const multi = expectOk(outcomes[4]);
    assertClose(
      multi.probabilities,
      multi.logits.map((z) => 1 / (1 + Math.exp(-z))),
      1e-12,
    );
    // alpha and twin share a head: only their LoRA factors differ, and visibly so.
    const alpha = expectOk(outcomes[1]).logits;
    const twin = expectOk(outcomes[8]).logits;
    const sameImageTwin = (await referenceLogits('twin', images))[1]!;
    const gap = Math.max(...alpha.map((v, i) => Math.abs(v - sameImageTwin[i]!)));
    assert.ok(gap > 1e-2, `LoRA should change the logits, gap ${gap}`);
    assert.equal(twin.length, 3);
  } finally {
    await engine.close();
    await registry.close();
  }
});

test('the inference thread: weights copies come back in stack form; a lost thread is replaced and adapters reloaded', async () => {
  const registry = await AdapterRegistry.open({ backbone, dir: root, watch: false, rescanMs: 0 });
  const engine = await ServingEngine.create(backbone, registry, { threads: 1 });
  try {
    const weights = (await engine.weightsOf('alpha'))!;
    assert.equal(weights.trueRank, 2);
    assert.equal(weights.rank, 4);
    const source = adapters.alpha!.pairs.get('1.value')!;
    const { A, B } = weights.pairs.get('1.value')!;
    assert.deepEqual(Array.from(A.subarray(0, 64)), Array.from(source.A.data));
    assert.equal(B[5 * 4 + 1], 2 * source.B.data[5 * 2 + 1]!);
    assert.equal(await engine.weightsOf('nosuch'), undefined);

    const images = randomImages(1, 3);
    const before = await engine.run([{ task: 'wide', pixels: images[0]! }]);
    // Kill the thread as a crash would: requests fail until the replacement has reloaded every adapter.
    const internals = engine as unknown as { client: { worker: { terminate(): Promise<number> } } };
    await internals.client.worker.terminate();
    const during = await engine.run([{ task: 'wide', pixels: images[0]! }]).catch(() => []);
    assert.ok(!during[0]?.ok, 'a run right after the crash cannot succeed');
    const started = performance.now();
    let after: RowOutcome[] = [];
    while (performance.now() - started < 10_000) {
      after = await engine.run([{ task: 'wide', pixels: images[0]! }]).catch(() => []);
      if (after[0]?.ok) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assertClose(expectOk(after[0]).logits, expectOk(before[0]).logits, 1e-6, 'after restart');
    assert.equal(engine.tasks().length, 6);
  } finally {
    await engine.close();
    await registry.close();
  }
});

test('stack: ranks padded with zeros, scale folded into B, views rebuild the same stack after a removal', () => {
  const entries = Object.entries(adapters).map(([name, adapter]) => ({
    name,
    weights: stackedWeightsOf(adapter),
  }));
  const stack = AdapterStack.build(backbone.config, entries);
  assert.equal(stack.rank, 4);
  assert.equal(stack.classes, 5);
  assert.deepEqual(
    stack.slots.map((slot) => `${slot.layer}.${slot.target}`),
    ['0.query', '0.value', '1.query', '1.key', '1.value', '1.output', '1.fc1', '1.fc2'],
  );
  const alphaRow = stack.rowOf('alpha')!;
  const A = stack.feeds().get('stack.0.query.A')!;
  const B = stack.feeds().get('stack.0.query.B')!;
  assert.deepEqual(A.shape, [5, 4, 32]);
  assert.deepEqual(B.shape, [5, 32, 4]);
  const source = adapters.alpha!.pairs.get('0.query')!;
  // A: rank-2 rows then two zero rows. B: scale 4/2 = 2 times B, then two zero columns per output.
  const aRow = A.data.subarray(alphaRow * 4 * 32, (alphaRow + 1) * 4 * 32);
  assert.deepEqual(Array.from(aRow.subarray(0, 64)), Array.from(source.A.data));
  assert.ok(aRow.subarray(64).every((v) => v === 0));
  const bRow = B.data.subarray(alphaRow * 32 * 4, (alphaRow + 1) * 32 * 4);
  for (let o = 0; o < 32; o++) {
    assert.equal(bRow[o * 4], 2 * source.B.data[o * 2]!);
    assert.equal(bRow[o * 4 + 1], 2 * source.B.data[o * 2 + 1]!);
    assert.equal(bRow[o * 4 + 2], 0);
    assert.equal(bRow[o * 4 + 3], 0);
  }
  // The linear probe and the wide adapter (layer 1 only) are zero in block 0's query slot.
  for (const name of ['probe', 'wide']) {
    const row = stack.rowOf(name)!;
    assert.ok(
      A.data.subarray(row * 128, (row + 1) * 128).every((v) => v === 0),
      name,
    );
  }
  // Remove the rank-4 adapter: rebuilt from views, the rank drops to 2 and the values are unchanged.
  const rest = entries
    .filter((entry) => entry.name !== 'wide')
    .map((entry) => ({ name: entry.name, weights: stack.weightsOf(entry.name)! }));
  const smaller = AdapterStack.build(backbone.config, rest);
  assert.equal(smaller.rank, 2);
  assert.equal(smaller.classes, 4);
  assert.deepEqual(
    smaller.slots.map((slot) => `${slot.layer}.${slot.target}`),
    ['0.query', '0.value', '1.query', '1.value'],
  );
  const fresh = AdapterStack.build(
    backbone.config,
    rest.map((entry) => ({ name: entry.name, weights: stackedWeightsOf(adapters[entry.name]!) })),
  );
  for (const [name, tensor] of fresh.feeds()) {
    assert.deepEqual(smaller.feeds().get(name)!.shape, tensor.shape, name);
    assert.deepEqual(Array.from(smaller.feeds().get(name)!.data), Array.from(tensor.data), name);
  }
});

test('batcher: rows wait for company up to max-wait, batches cap at max-batch, a full queue refuses at once', async () => {
  const batches: string[][] = [];
  let release: () => void = () => {};
  let gate = Promise.resolve();
  const runner = async (rows: readonly BatchRow[]): Promise<RowOutcome[]> => {
    batches.push(rows.map((row) => row.task));
    await gate;
    return rows.map((row) => ({
      ok: true as const,
      prediction: { task: row.task, labels: [], logits: [], probabilities: [], prediction: '' },
    }));
  };
  const batcher = new DynamicBatcher(runner, { maxBatch: 4, maxWaitMs: 40, maxQueueRows: 6 });
  const pixels = new Float32Array(1);
  // Three requests arriving together within the wait: one batch of 5 rows split 4 + 1.
  const jobs = [
    batcher.submit(pixels, ['a', 'b']),
    batcher.submit(pixels, ['c']),
    batcher.submit(pixels, ['d', 'e']),
  ];
  const results = await Promise.all(jobs);
  assert.deepEqual(batches, [['a', 'b', 'c', 'd'], ['e']]);
  assert.deepEqual(results[2]!.batchSizes, [4, 1]);
  assert.deepEqual(
    results[2]!.outcomes.map((outcome) => outcome.ok && outcome.prediction.task),
    ['d', 'e'],
  );
  // While a batch runs, rows queue up to the bound; the next request is refused without waiting.
  gate = new Promise((resolve) => {
    release = resolve;
  });
  batches.length = 0;
  const running = batcher.submit(pixels, ['x', 'y', 'z', 'w']);
  await new Promise((resolve) => setTimeout(resolve, 10));
  const queued = batcher.submit(pixels, ['q1', 'q2', 'q3', 'q4', 'q5', 'q6']);
  const started = performance.now();
  await assert.rejects(batcher.submit(pixels, ['over']), { statusCode: 503, code: 'MELO_ERR_QUEUE_FULL' });
  assert.ok(performance.now() - started < 20);
  release();
  const [first, second] = await Promise.all([running, queued]);
  assert.equal(first.outcomes.length, 4);
  assert.equal(second.outcomes.length, 6);
  assert.deepEqual(batches, [
    ['x', 'y', 'z', 'w'],
    ['q1', 'q2', 'q3', 'q4'],
    ['q5', 'q6'],
  ]);
  await batcher.close();
  await assert.rejects(batcher.submit(pixels, ['late']), { code: 'MELO_ERR_SHUTTING_DOWN' });
});

test('batcher: an aborted request is withdrawn from the queue before it runs', async () => {
  const seen: string[] = [];
  const batcher = new DynamicBatcher(
    async (rows) => {
      seen.push(...rows.map((row) => row.task));
      return rows.map(() => ({ ok: false as const, error: new Error('unused') }));
    },
    { maxBatch: 8, maxWaitMs: 50, maxQueueRows: 8 },
  );
  const controller = new AbortController();
  const aborted = batcher.submit(new Float32Array(1), ['gone'], controller.signal);
  const kept = batcher.submit(new Float32Array(1), ['kept']);
  assert.equal(batcher.queuedRows, 2);
  controller.abort(new Error('timed out'));
  await assert.rejects(aborted, /timed out/);
  assert.equal(batcher.queuedRows, 1);
  await kept;
  assert.deepEqual(seen, ['kept']);
  await batcher.close();
});

test('switching tasks between batches sends the inference thread only pixels and task rows: same graph, same stack', async () => {
  const registry = await AdapterRegistry.open({ backbone, dir: root, watch: false, rescanMs: 0 });
  const engine = await ServingEngine.create(backbone, registry, { threads: 1 });
  try {
    // Every message the engine sends its inference thread from here on, as the thread would receive it.
    const client = (engine as unknown as { client: object }).client as {
      request: (message: { type: string }, transfer?: ArrayBuffer[]) => Promise<unknown>;
    };
    const sent: { type: string; version?: number; key?: string; taskRows?: readonly number[] }[] = [];
    const request = client.request.bind(client);
    client.request = (message, transfer) => {
      sent.push({ ...message });
      return request(message, transfer);
    };
    const [image] = randomImages(1, 3);
    const order = ['alpha', 'wide', 'alpha', 'probe', 'probe', 'multi', 'alpha'];
    for (const task of order) expectOk((await engine.run([{ task, pixels: image! }]))[0]);
    assert.deepEqual(
      sent.map((message) => message.type),
      order.map(() => 'run'),
    );
    assert.equal(new Set(sent.map((message) => `${message.version}/${message.key}`)).size, 1);
    const rows = sent.map((message) => message.taskRows![0]);
    assert.equal(new Set(rows).size, 4, `task rows ${rows}`);
  } finally {
    await engine.close();
    await registry.close();
  }
});
