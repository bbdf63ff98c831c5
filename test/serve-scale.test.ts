import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import sharp from 'sharp';
import { type Backbone, loadBackbone } from '../src/checkpoints/load.ts';
import { type Adapter, headParameterCount, loraParameterCount } from '../src/model/adapter.ts';
import { adapterFeeds } from '../src/model/task-graph.ts';
import { TaskModel } from '../src/model/task-model.ts';
import { loadTasks, predictTasks, taskMethod } from '../src/predict.ts';
import { buildApp } from '../src/serve/app.ts';
import { AdapterStack, stackedWeightsOf } from '../src/serve/engine/adapter-stack.ts';
import { type RowOutcome, ServingEngine } from '../src/serve/engine/engine.ts';
import { AdapterRegistry } from '../src/serve/engine/registry.ts';
import { Random } from '../src/util/random.ts';
import { assertClose } from './helpers/graph.ts';
import { adapterSet, FIXTURES, makeAdapter, writeAdapter } from './serve-fixtures.ts';

let backbone: Backbone;
let adapters: Record<string, Adapter> = {};
const roots: string[] = [];

before(async () => {
  backbone = await loadBackbone(join(FIXTURES, 'hf'));
  adapters = adapterSet(backbone);
});
after(() => Promise.all(roots.map((root) => rm(root, { recursive: true, force: true }))));

async function adapterRoot(names: readonly string[]): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'melo-serve-scale-'));
  roots.push(root);
  for (const name of names) await writeAdapter(root, name, adapters[name]!);
  return root;
}

function randomImage(seed: number): Float32Array {
  const random = new Random(seed);
  return Float32Array.from({ length: 3 * 32 * 32 }, () => random.uniform(-1, 1));
}

/** The task alone through the single-task model `melo predict --adapter` uses (weights from disk). */
async function referenceLogits(dir: string, image: Float32Array): Promise<Float32Array> {
  const [loaded] = await loadTasks(backbone, [dir]);
  const model = await TaskModel.create({
    backbone,
    method: taskMethod(loaded!.adapter),
    lora: loaded!.adapter.lora,
    numClasses: loaded!.labels.length,
    threads: 1,
  });
  try {
    return (await model.run(image, 1, adapterFeeds(loaded!.adapter))).data.slice();
  } finally {
    await model.release();
  }
}

function expectOk(outcome: RowOutcome | undefined) {
  assert.ok(outcome?.ok, `row failed: ${outcome && !outcome.ok ? outcome.error.message : 'missing'}`);
  return outcome.prediction;
}

/** Every message the engine posts to its inference thread from now on (type and uids/rows, no weights). */
function recordMessages(engine: ServingEngine): { type: string; uid?: number; uids?: readonly number[] }[] {
  const worker = (
    engine as unknown as { client: { worker: { postMessage: (m: object, t?: unknown) => void } } }
  ).client.worker;
  const sent: { type: string; uid?: number; uids?: readonly number[] }[] = [];
  const post = worker.postMessage.bind(worker);
  worker.postMessage = (message, transfer) => {
    const { type, uid, uids } = message as { type: string; uid?: number; uids?: readonly number[] };
    sent.push({ type, ...(uid !== undefined ? { uid } : {}), ...(uids ? { uids: [...uids] } : {}) });
    post(message, transfer);
  };
  return sent;
}

test('stack: put and remove change one row; a freed row is reused; other rows keep their bytes; capacity doubles', () => {
  const stack = new AdapterStack(backbone.config, 2);
  stack.put('alpha', stackedWeightsOf(adapters.alpha!));
  stack.put('twin', stackedWeightsOf(adapters.twin!));
  assert.equal(stack.rowCapacity, 2);
  const snapshot = (name: string) => {
    const row = stack.rowOf(name)!;
    const rowValues: number[] = [];
    for (const [input, tensor] of stack.feeds()) {
      const per = tensor.data.length / tensor.shape[0]!;
      rowValues.push(...tensor.data.subarray(row * per, (row + 1) * per));
      assert.ok(row < tensor.shape[0]!, input);
    }
    return rowValues;
  };
  const alphaBefore = snapshot('alpha');
  // A third task: the capacity doubles (every row copied once), alpha's values are unchanged.
  const third = stack.put('probe', stackedWeightsOf(adapters.probe!));
  assert.deepEqual([third.row, third.regrown, third.newSlots], [2, true, false]);
  assert.equal(stack.rowCapacity, 4);
  assert.deepEqual(snapshot('alpha'), alphaBefore);
  // Removing twin frees row 1; the next task takes it, without regrowing and with zeros where it has
  // nothing (a linear probe: no LoRA factors, where twin had some).
  assert.equal(stack.remove('twin'), true);
  assert.equal(stack.remove('twin'), false);
  const other = makeAdapter(backbone, { task: 'other', labels: ['a', 'b', 'c'], linear: true, seed: 9 });
  const reused = stack.put('other', stackedWeightsOf(other));
  assert.deepEqual([reused.row, reused.regrown, reused.newSlots], [1, false, false]);
  for (const [input, tensor] of stack.feeds()) {
    if (!input.endsWith('.A') && !input.endsWith('.B')) continue;
    const per = tensor.data.length / tensor.shape[0]!;
    assert.ok(
      tensor.data.subarray(per, 2 * per).every((v) => v === 0),
      `${input}: twin's factors are gone`,
    );
  }
  assert.deepEqual(snapshot('alpha'), alphaBefore);
  // A copy of each task's weights rebuilds exactly its row of a fresh stack.
  const sources: Record<string, Adapter> = { alpha: adapters.alpha!, probe: adapters.probe!, other };
  for (const [name, adapter] of Object.entries(sources)) {
    const copy = AdapterStack.build(backbone.config, [{ name, weights: stack.weightsOf(name)! }]);
    const original = AdapterStack.build(backbone.config, [{ name, weights: stackedWeightsOf(adapter) }]);
    for (const [input, tensor] of original.feeds())
      assert.deepEqual(
        Array.from(copy.feeds().get(input)!.data),
        Array.from(tensor.data),
        `${name} ${input}`,
      );
  }
  assert.equal(stack.size, 3);
});

test('stack: a wider rank or head re-strides every row (same values as a fresh build); a new slot adds zeros', () => {
  const stack = new AdapterStack(backbone.config);
  stack.put('alpha', stackedWeightsOf(adapters.alpha!));
  stack.put('multi', stackedWeightsOf(adapters.multi!));
  assert.deepEqual([stack.rank, stack.classes], [2, 4]);
  const wide = stack.put('wide', stackedWeightsOf(adapters.wide!));
  assert.deepEqual([wide.regrown, wide.newSlots], [true, true]);
  assert.deepEqual([stack.rank, stack.classes], [4, 5]);
  const fresh = AdapterStack.build(
    backbone.config,
    ['alpha', 'multi', 'wide'].map((name) => ({ name, weights: stackedWeightsOf(adapters[name]!) })),
  );
  assert.equal(stack.graphKey, fresh.graphKey);
  for (const [input, tensor] of fresh.feeds()) {
    const mine = stack.feeds().get(input)!;
    assert.deepEqual(mine.shape, tensor.shape, input);
    assert.deepEqual(Array.from(mine.data), Array.from(tensor.data), input);
  }
});

test('stack memory: each adapter held once, as its own bytes; spare capacity is allocated, never written', () => {
  // 40 adapters of one shape (rank 2 on query/value of both blocks, 3 classes): the stack's rows are
  // exactly the adapters' float32 bytes.
  const stack = new AdapterStack(backbone.config, 1);
  let adapterBytes = 0;
  for (let i = 0; i < 40; i++) {
    const adapter = makeAdapter(backbone, { task: `t${i}`, labels: ['a', 'b', 'c'], seed: 100 + i });
    adapterBytes += 4 * (loraParameterCount(adapter) + headParameterCount(adapter));
    stack.put(`t${i}`, stackedWeightsOf(adapter));
  }
  assert.equal(stack.byteLength, adapterBytes);
  assert.equal(stack.rowBytes * 40, adapterBytes);
  // Doubling from 1: 64 rows allocated; the buffers the stack owns are exactly that, nothing more.
  assert.equal(stack.rowCapacity, 64);
  const owned = stack.buffers().reduce((sum, buffer) => sum + buffer.byteLength, 0);
  assert.equal(owned, stack.allocatedBytes);
  assert.equal(owned, 64 * stack.rowBytes);
  // Removing half and adding them back reuses the freed rows: nothing grows.
  for (let i = 0; i < 40; i += 2) stack.remove(`t${i}`);
  for (let i = 0; i < 40; i += 2) {
    const adapter = makeAdapter(backbone, { task: `u${i}`, labels: ['a', 'b', 'c'], seed: 300 + i });
    assert.ok(stack.put(`u${i}`, stackedWeightsOf(adapter)).row < 40);
  }
  assert.equal(stack.byteLength, adapterBytes);
  assert.equal(stack.rowCapacity, 64);
});

test('engine: adding, replacing and removing one adapter is one put or one remove; other tasks answer identically', async () => {
  const root = await adapterRoot(['alpha', 'twin', 'multi']);
  const registry = await AdapterRegistry.open({ backbone, dir: root, watch: false, rescanMs: 0 });
  const engine = await ServingEngine.create(backbone, registry, { threads: 1 });
  try {
    const image = randomImage(11);
    const answer = async (task: string) => expectOk((await engine.run([{ task, pixels: image }]))[0]).logits;
    const before = { alpha: await answer('alpha'), multi: await answer('multi') };
    // Nothing of the registry's: each adapter's weights were handed over once.
    for (const task of registry.tasks()) assert.equal(task.takeWeights(), undefined, task.name);
    const memory = await engine.stackMemory();
    assert.equal(memory.tasks, 3);
    assert.equal(memory.ownedBytes, memory.allocatedBytes);
    const sent = recordMessages(engine);

    // Add: the new task's weights alone, into the stack as it is (no graph: same slots).
    await writeAdapter(root, 'probe', adapters.probe!);
    await registry.rescan();
    await engine.refresh();
    assert.deepEqual(
      sent.map((message) => message.type),
      ['put'],
    );
    assert.equal(sent[0]!.uid, registry.task('probe')!.uid);
    assertClose(
      expectOk((await engine.run([{ task: 'probe', pixels: image }]))[0]).logits,
      await referenceLogits(join(root, 'probe'), image),
      1e-5,
    );

    // Replace: twin gets alpha's head and new factors; one put, then the old version's row is freed.
    sent.length = 0;
    const oldTwin = registry.task('twin')!.uid;
    const changed = makeAdapter(backbone, { task: 'twin', labels: ['x', 'y', 'z'], rank: 2, seed: 77 });
    await writeAdapter(root, 'twin', changed);
    await registry.rescan();
    await engine.refresh();
    assert.deepEqual(sent, [
      { type: 'put', uid: registry.task('twin')!.uid },
      { type: 'remove', uids: [oldTwin] },
    ]);
    assertClose(
      expectOk((await engine.run([{ task: 'twin', pixels: image }]))[0]).logits,
      await referenceLogits(join(root, 'twin'), image),
      1e-5,
    );

    // Remove: one remove; the freed row is what the next new task gets.
    sent.length = 0;
    const probeUid = registry.task('probe')!.uid;
    await rm(join(root, 'probe'), { recursive: true });
    await registry.rescan();
    await engine.refresh();
    assert.deepEqual(sent, [{ type: 'remove', uids: [probeUid] }]);
    assert.equal(engine.task('probe'), undefined);
    const afterRemoval = await engine.stackMemory();
    assert.equal(afterRemoval.tasks, 3);
    assert.equal(afterRemoval.rowCapacity, memory.rowCapacity);

    // Other tasks' answers never moved, to the bit.
    assert.deepEqual(await answer('alpha'), before.alpha);
    assert.deepEqual(await answer('multi'), before.multi);
  } finally {
    await engine.close();
    await registry.close();
  }
});

test('--max-resident-adapters: requests over more tasks than the cap all equal melo predict; LRU eviction, reads on demand', async () => {
  const names = ['alpha', 'twin', 'wide', 'probe', 'multi'];
  const root = await adapterRoot(names);
  const registry = await AdapterRegistry.open({ backbone, dir: root, watch: false, rescanMs: 0 });
  const pagedIn: number[] = [];
  let evictions = 0;
  let residentMax = 0;
  const engine = await ServingEngine.create(backbone, registry, {
    threads: 1,
    maxResidentAdapters: 2,
    observer: {
      adapterPagedIn: (seconds) => pagedIn.push(seconds),
      adapterEvicted: () => evictions++,
      residency: (tasks) => {
        residentMax = Math.max(residentMax, tasks);
      },
    },
  });
  try {
    assert.deepEqual(
      engine.tasks().map((task) => task.name),
      [...names].sort(),
    );
    assert.equal(engine.residentCount, 2);
    // Nothing beyond the cap is kept anywhere: the registry dropped what the stack did not take.
    for (const task of registry.tasks()) assert.equal(task.takeWeights(), undefined, task.name);
    const images = [randomImage(1), randomImage(2)];
    const expected = new Map<string, Float32Array[]>();
    for (const name of names)
      expected.set(name, await Promise.all(images.map((image) => referenceLogits(join(root, name), image))));
    const random = new Random(5);
    for (let i = 0; i < 14; i++) {
      const task = names[random.int(names.length)]!;
      const imageIndex = i % 2;
      const prediction = expectOk((await engine.run([{ task, pixels: images[imageIndex]! }]))[0]);
      assertClose(prediction.logits, expected.get(task)![imageIndex]!, 1e-5, `${task} request ${i}`);
      assert.ok(engine.residentCount <= 2, `resident ${engine.residentCount}`);
    }
    // A batch of four tasks holds them all while it runs, then the cap holds again.
    const batch = ['multi', 'alpha', 'wide', 'probe'];
    const outcomes = await engine.run(batch.map((task) => ({ task, pixels: images[0]! })));
    batch.forEach((task, i) => {
      assertClose(expectOk(outcomes[i]).logits, expected.get(task)![0]!, 1e-5, `batched ${task}`);
    });
    assert.equal(engine.residentCount, 2);
    // The most recently used stayed: a request for one of them reads nothing from disk.
    const reads = pagedIn.length;
    expectOk((await engine.run([{ task: 'probe', pixels: images[0]! }]))[0]);
    assert.equal(pagedIn.length, reads);
    assert.ok(pagedIn.length >= 5 && evictions >= 5, `${pagedIn.length} reads, ${evictions} evictions`);
    assert.ok(pagedIn.every((seconds) => seconds > 0 && seconds < 30));
    assert.ok(residentMax <= 4, `at most the batch's tasks resident, saw ${residentMax}`);
    // Freed rows are reused: the stack never grew past the four rows the big batch needed.
    const memory = await engine.stackMemory();
    assert.ok(memory.byteLength <= 4 * memory.rowBytes, `${memory.byteLength} bytes`);
  } finally {
    await engine.close();
    await registry.close();
  }
});

/** `count` small adapters t00, t01, … (rank 2 q/v, 2–4 classes) and one directory of garbage, 'broken'. */
async function manyAdapters(count: number): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'melo-serve-many-'));
  roots.push(root);
  for (let i = 0; i < count; i++) {
    const name = `t${String(i).padStart(2, '0')}`;
    const labels = Array.from({ length: 2 + (i % 3) }, (_, c) => `c${c}`);
    await writeAdapter(root, name, makeAdapter(backbone, { task: name, labels, seed: 500 + i }));
  }
  await mkdir(join(root, 'broken'));
  await writeFile(join(root, 'broken', 'adapter_config.json'), '{"peft_type": "LORA", "r": 2');
  await writeFile(join(root, 'broken', 'adapter_model.safetensors'), 'not safetensors');
  return root;
}

test('background loading: open returns with the index; tasks serve as they load; a broken adapter marks only itself', async () => {
  const count = 24;
  const root = await manyAdapters(count);
  const registry = await AdapterRegistry.open({
    backbone,
    dir: root,
    watch: false,
    rescanMs: 0,
    background: true,
  });
  assert.equal(registry.loading, true);
  assert.equal(registry.knownAdapterCount(), count + 1);
  assert.ok(registry.tasks().length < count, `${registry.tasks().length} loaded before open returned`);
  const engine = await ServingEngine.create(backbone, registry, { threads: 1 });
  try {
    await engine.untilLoaded();
    assert.equal(registry.loading, false);
    assert.equal(engine.tasks().length, count);
    // Room for twice the directories listed (and 16 more) was made up front: loading never regrew it.
    const memory = await engine.stackMemory();
    assert.equal(memory.rowCapacity, 2 * (count + 1) + 16);
    assert.equal(memory.tasks, count);
    assert.deepEqual(
      registry.problems().map((problem) => [problem.adapter, problem.servingPrevious]),
      [['broken', false]],
    );
    assert.match(registry.problems()[0]!.message, /^broken\/adapter_config\.json: invalid JSON/);
    // A rescan asked for when nothing is pending (a debounced event whose directory a full scan already
    // read) must not leave the registry deaf to later changes.
    await (registry as unknown as { drain(): Promise<void> }).drain();
    await writeAdapter(root, 'later', makeAdapter(backbone, { task: 'later', labels: ['a', 'b'], seed: 9 }));
    await registry.rescan();
    assert.ok(registry.task('later'), 'picked up after an empty drain');
    const image = randomImage(3);
    for (const name of ['t00', 't13', 't23']) {
      assertClose(
        expectOk((await engine.run([{ task: name, pixels: image }]))[0]).logits,
        await referenceLogits(join(root, name), image),
        1e-5,
        name,
      );
    }
  } finally {
    await engine.close();
    await registry.close();
  }
});

test('melo serve starts before its adapters are loaded: /readyz, and a request for a task still loading waits for it', async () => {
  const count = 16;
  const root = await manyAdapters(count);
  const picture = join(root, 'picture.png');
  const random = new Random(8);
  const rgb = Buffer.from(Array.from({ length: 40 * 40 * 3 }, () => random.int(256)));
  await sharp(rgb, { raw: { width: 40, height: 40, channels: 3 } })
    .png()
    .toFile(picture);
  const app = await buildApp({
    backbone,
    adapters: root,
    threads: 1,
    logger: false,
    token: 'secret',
    loadAdaptersInBackground: true,
    maxResidentAdapters: 4,
  });
  try {
    // The last task in directory order: a request for it right away waits for the first scan.
    const response = await app.inject({
      method: 'POST',
      url: '/v1/predict?tasks=t15',
      headers: { 'content-type': 'image/png', authorization: 'Bearer secret' },
      payload: await sharp(picture).toBuffer(),
    });
    assert.equal(response.statusCode, 200, response.body);
    const [expected] = await predictTasks(
      backbone,
      await loadTasks(backbone, [join(root, 't15')]),
      [picture],
      {
        threads: 1,
      },
    );
    assertClose(
      response.json<{ results: { probabilities: number[] }[] }>().results[0]!.probabilities,
      expected!.probabilities,
      1e-5,
    );
    // No token needed for probes; ready once a task serves, with the broken one only listed as a problem.
    const ready = await app.inject({ method: 'GET', url: '/readyz' });
    assert.equal(ready.statusCode, 200);
    assert.deepEqual(ready.json(), { status: 'ready', tasks: count, loading: false });
    const listed = await app.inject({
      method: 'GET',
      url: '/v1/tasks',
      headers: { authorization: 'Bearer secret' },
    });
    assert.deepEqual(
      listed.json<{ errors: { adapter: string }[] }>().errors.map((problem) => problem.adapter),
      ['broken'],
    );
    // Six more tasks than the cap of four: each read back from disk is timed in /metrics.
    for (const name of ['t00', 't01', 't02', 't03', 't04', 't05', 't00']) {
      const answer = await app.inject({
        method: 'POST',
        url: `/v1/predict?tasks=${name}`,
        headers: { 'content-type': 'image/png', authorization: 'Bearer secret' },
        payload: await sharp(picture).toBuffer(),
      });
      assert.equal(answer.statusCode, 200, answer.body);
    }
    const metrics = (
      await app.inject({ method: 'GET', url: '/metrics', headers: { authorization: 'Bearer secret' } })
    ).body;
    const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(metrics)?.[1]);
    assert.ok(value('melo_adapters_resident') <= 4, metrics);
    assert.ok(value('melo_adapter_reload_duration_seconds_count') >= 7, 'every request paged its task in');
    assert.ok(value('melo_adapter_evictions_total') >= 3);
    assert.equal(value('melo_adapters_loaded'), count);
  } finally {
    await app.close();
  }
  // With no adapter at all, the server is live but not ready.
  const empty = await mkdtemp(join(tmpdir(), 'melo-serve-empty-'));
  roots.push(empty);
  const idle = await buildApp({
    backbone,
    adapters: empty,
    threads: 1,
    logger: false,
    loadAdaptersInBackground: true,
  });
  try {
    await idle.engine.untilLoaded();
    const ready = await idle.inject({ method: 'GET', url: '/readyz' });
    assert.equal(ready.statusCode, 503);
    // Nothing left to load and no task: not ready, and not 'loading' either.
    assert.deepEqual(ready.json(), { status: 'not-ready', tasks: 0, loading: false });
    assert.equal((await idle.inject({ method: 'GET', url: '/healthz' })).statusCode, 200);
  } finally {
    await idle.close();
  }
});
