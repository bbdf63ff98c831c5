/**
 * `npm run bench:serve:scale`: the multi-task server with 1, 100 and 1,000 adapters, in one run
 * (ViT-B/16 with random weights of the real shapes, 224 px; LoRA r=4 on query/value; every adapter a
 * perturbation of one adapter). Each count gets a fresh server process (`melo serve`'s settings:
 * adapters load in the background), and for each:
 *
 *   - start-up: spawn → listening (includes building the backbone), → /readyz 200, → every task served;
 *   - resident memory after a warm-up and a full GC; its growth over the 1-adapter server per byte of
 *     adapters (target ≤ 1.2), and the bytes the inference thread's stack holds;
 *   - hot add: a new adapter directory moved into place → its first 200 (target ≤ 1 s);
 *   - single-task latency: sequential requests to one task, median (target within 10% of 1 adapter);
 *   - mixed vs single: 8 concurrent requests for 8 different tasks vs 8 for one task, interleaved
 *     rounds, throughput ratio (target ≥ 0.9).
 *
 * Then a server with all the adapters and `--max-resident-adapters` (default 100) answers requests spread
 * over every task; each answer is compared with `melo predict` (predictTasks) in this process (target:
 * max |Δp| ≤ 1e-5) and the resident count is read after each (target: ≤ the cap).
 *
 *   npm run bench:serve:scale [-- --preset base --counts 1,100,1000 --threads 2 --cap 100
 *                               --cap-requests 24 --latency-requests 6 --mixed-rounds 2 --out FILE]
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { link, mkdir, mkdtemp, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { saveAdapter } from '../src/io/peft.ts';
import { type Adapter, headParameterCount, initAdapter, loraParameterCount } from '../src/model/adapter.ts';
import { type ViTConfig, vitConfig } from '../src/model/vit-config.ts';
import { loadTasks, predictTasks } from '../src/predict.ts';
import { buildApp } from '../src/serve/app.ts';
import type { StackMemory } from '../src/serve/engine/inference-protocol.ts';
import { Random } from '../src/util/random.ts';
import { integerListOption, integerOption } from './lib/args.ts';
import { loadAverage, machineInfo } from './lib/machine.ts';
import { formatBytes, fullGc } from './lib/memory.ts';
import { randomBackbone } from './lib/random-vit.ts';
import { writeBenchReport } from './lib/results.ts';
import { median } from './lib/timing.ts';
import { vitFlopsPerImage } from './lib/vit-flops.ts';

const BACKBONE_SEED = 1;
const LORA = { rank: 4, alpha: 8, dropout: 0, targets: ['query', 'value'] as const };
const CLASSES = 4;
const MIXED = 8;
const TARGETS = {
  memoryPerAdapterByte: 1.2,
  hotAddMs: 1000,
  readyWithinMsOfOne: 10_000,
  mixedRatio: 0.9,
  singleLatencyRatio: 1.1,
  capProbabilityError: 1e-5,
} as const;

const here = dirname(fileURLToPath(import.meta.url));
const thisFile = fileURLToPath(import.meta.url);
const PRESETS = ['tiny', 'small', 'base'] as const;
type Preset = (typeof PRESETS)[number];

interface Options {
  preset: Preset;
  counts: number[];
  threads: number;
  cap: number;
  capRequests: number;
  latencyRequests: number;
  mixedRounds: number;
  out: string;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      preset: { type: 'string', default: 'base' },
      counts: { type: 'string', default: '1,100,1000' },
      threads: { type: 'string', default: '2' },
      cap: { type: 'string', default: '100' },
      'cap-requests': { type: 'string', default: '24' },
      'latency-requests': { type: 'string', default: '6' },
      'mixed-rounds': { type: 'string', default: '2' },
      out: { type: 'string', default: join(here, 'results', 'serve-scale.json') },
    },
  });
  if (!PRESETS.includes(values.preset as Preset))
    throw new Error(`--preset expects one of ${PRESETS.join(', ')}`);
  const counts = integerListOption('counts', values.counts!, 1);
  if (counts[0] !== 1)
    throw new Error('--counts must start with 1 (the baseline every other count is compared with)');
  if (counts.some((count) => count < MIXED && count !== 1))
    throw new Error(`--counts above 1 must be at least ${MIXED} (the mixed batch needs ${MIXED} tasks)`);
  return {
    preset: values.preset as Preset,
    counts,
    threads: integerOption('threads', values.threads!, 1),
    cap: integerOption('cap', values.cap!, 1),
    capRequests: integerOption('cap-requests', values['cap-requests']!, 1),
    latencyRequests: integerOption('latency-requests', values['latency-requests']!, 1),
    mixedRounds: integerOption('mixed-rounds', values['mixed-rounds']!, 1),
    out: values.out!,
  };
}

function backboneConfig(preset: Preset): ViTConfig {
  return vitConfig(preset, { numClasses: 0 });
}

const taskName = (i: number) => `task${String(i).padStart(4, '0')}`;

/**
 * `count` adapters: one with A as initialised and B random (as after training), and its perturbations
 * (every value times 1 + U(−0.1, 0.1), seeded per adapter), so that each task answers differently.
 */
async function writeAdapters(dir: string, count: number, preset: Preset): Promise<number> {
  const config = backboneConfig(preset);
  const random = new Random(1000);
  const base = initAdapter(
    config,
    { ...LORA, targets: [...LORA.targets] },
    {
      task: taskName(0),
      taskType: 'multiclass',
      labels: Array.from({ length: CLASSES }, (_, c) => `c${c}`),
      backboneFingerprint: `random-${BACKBONE_SEED}`,
    },
    random,
  );
  for (const pair of base.pairs.values())
    for (let j = 0; j < pair.B.data.length; j++) pair.B.data[j] = random.uniform(-0.05, 0.05);
  const perturb = (data: Float32Array, noise: Random) => data.map((v) => v * (1 + noise.uniform(-0.1, 0.1)));
  for (let i = 0; i < count; i++) {
    const noise = new Random(2000 + i);
    const adapter: Adapter = {
      ...base,
      metadata: { ...base.metadata, task: taskName(i) },
      pairs: new Map(
        [...base.pairs].map(([key, pair]) => [
          key,
          {
            A: { ...pair.A, data: perturb(pair.A.data, noise) },
            B: { ...pair.B, data: perturb(pair.B.data, noise) },
          },
        ]),
      ),
      head: {
        weight: { ...base.head.weight, data: perturb(base.head.weight.data, noise) },
        bias: { ...base.head.bias, data: perturb(base.head.bias.data, noise) },
      },
    };
    await saveAdapter(join(dir, taskName(i)), adapter);
  }
  return 4 * (loraParameterCount(base) + headParameterCount(base));
}

/** Hard links of the first `count` adapters' files: a directory per count without copying bytes. */
async function linkAdapters(master: string, dir: string, names: readonly string[]): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const name of names) {
    await mkdir(join(dir, name));
    for (const file of await readdir(join(master, name)))
      await link(join(master, name, file), join(dir, name, file));
  }
}

/** A 256×256 JPEG with structure, as a client would send (decoding and resizing do real work). */
async function testImage(path: string): Promise<Buffer> {
  const size = 256;
  const rgb = Buffer.alloc(size * size * 3);
  for (let y = 0; y < size; y++)
    for (let x = 0; x < size; x++) {
      const i = (y * size + x) * 3;
      rgb[i] = (x * 3 + y) & 255;
      rgb[i + 1] = (x ^ y) & 255;
      rgb[i + 2] = ((x - y) * 5) & 255;
    }
  const jpeg = await sharp(rgb, { raw: { width: size, height: size, channels: 3 } })
    .jpeg({ quality: 90 })
    .toBuffer();
  await writeFile(path, jpeg);
  return jpeg;
}

// ---------------------------------------------------------------------------------------------------
// The server child process.

interface ChildSpec {
  readonly adapters: string;
  readonly threads: number;
  readonly preset: Preset;
  readonly maxResidentAdapters?: number;
}

interface ChildMemory {
  readonly rssBytes: number;
  readonly stack: StackMemory;
  readonly resident: number;
}

async function runChild(spec: ChildSpec): Promise<void> {
  const app = await buildApp({
    backbone: randomBackbone(backboneConfig(spec.preset), BACKBONE_SEED),
    adapters: spec.adapters,
    threads: spec.threads,
    maxBatch: 16,
    maxWaitMs: 5,
    maxQueueRows: 256,
    requestTimeoutMs: 900_000,
    // Room for the 8 concurrent uploads of a burst (the upload queue holds 4 per decode thread).
    decodeThreads: 2,
    loadAdaptersInBackground: true,
    ...(spec.maxResidentAdapters ? { maxResidentAdapters: spec.maxResidentAdapters } : {}),
    logger: false,
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address();
  const port = typeof address === 'object' ? address?.port : 0;
  // performance.now() counts from this process's start: the backbone build is part of start-up.
  process.stdout.write(`${JSON.stringify({ port, listeningMs: performance.now() })}\n`);
  process.on('message', () => {
    fullGc();
    void app.engine.stackMemory().then((stack) => {
      const memory: ChildMemory = {
        rssBytes: process.memoryUsage.rss(),
        stack,
        resident: app.engine.residentCount,
      };
      process.send?.(memory);
    });
  });
  const stop = () => void app.close().then(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

interface ServerChild {
  readonly process: ChildProcess;
  readonly url: string;
  readonly spawnedAt: number;
  readonly listeningMs: number;
}

async function startChild(spec: ChildSpec): Promise<ServerChild> {
  const spawnedAt = performance.now();
  const child = spawn(process.execPath, ['--import', 'tsx', thisFile, '--child', JSON.stringify(spec)], {
    stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
  });
  const lines = createInterface({ input: child.stdout! });
  const first = await new Promise<string>((resolve, reject) => {
    lines.once('line', resolve);
    child.once('exit', (code) => reject(new Error(`server child exited with ${code} before listening`)));
  });
  const { port, listeningMs } = JSON.parse(first) as { port: number; listeningMs: number };
  return { process: child, url: `http://127.0.0.1:${port}`, spawnedAt, listeningMs };
}

async function stopChild(child: ServerChild): Promise<void> {
  const exited = new Promise((resolve) => child.process.once('exit', resolve));
  child.process.kill('SIGTERM');
  await exited;
}

function childMemory(child: ServerChild): Promise<ChildMemory> {
  return new Promise((resolve) => {
    child.process.once('message', (message) => resolve(message as ChildMemory));
    child.process.send({ memory: true });
  });
}

interface Answer {
  readonly ms: number;
  readonly status: number;
  readonly probabilities: number[];
  readonly message: string;
}

async function predict(url: string, task: string, image: Buffer): Promise<Answer> {
  const started = performance.now();
  const response = await fetch(`${url}/v1/predict?tasks=${task}`, {
    method: 'POST',
    headers: { 'content-type': 'image/jpeg' },
    body: new Uint8Array(image),
  });
  const body = (await response.json()) as { results?: { probabilities: number[] }[]; message?: string };
  return {
    ms: performance.now() - started,
    status: response.status,
    probabilities: body.results?.[0]?.probabilities ?? [],
    message: body.message ?? '',
  };
}

async function predictOk(url: string, task: string, image: Buffer): Promise<Answer> {
  const answer = await predict(url, task, image);
  if (answer.status !== 200 || !answer.probabilities.every(Number.isFinite))
    throw new Error(`predict ${task} answered ${answer.status}: ${answer.message}`);
  return answer;
}

/** Polls until `check` holds; returns the ms since `since`. */
async function until(
  check: () => Promise<boolean>,
  since: number,
  timeoutMs: number,
  what: string,
): Promise<number> {
  while (!(await check().catch(() => false))) {
    if (performance.now() - since > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await sleep(20);
  }
  return performance.now() - since;
}

interface CountResult {
  readonly adapters: number;
  readonly adapterBytes: number;
  readonly listeningMs: number;
  readonly readyMs: number;
  readonly allServedMs: number;
  readonly rssBytes: number;
  readonly stack: StackMemory;
  readonly hotAddMs: number[];
  readonly hotAddServedMs: number[];
  readonly singleTaskMs: number[];
  readonly singleTaskMedianMs: number;
  readonly mixedBurstMs: number[];
  readonly singleBurstMs: number[];
  /** Throughput of 8 distinct tasks over 8 requests for one task (medians of the bursts). */
  readonly mixedRatio: number;
  readonly loadAverage: { readonly atStart: number; readonly atEnd: number };
  /** Only for the 1-adapter server: the rest added while it runs, RSS measured again in the same process. */
  readonly grown?: {
    readonly adapters: number;
    readonly rssBytes: number;
    readonly stack: StackMemory;
    readonly addedMs: number;
  };
}

async function measureCount(
  master: string,
  work: string,
  count: number,
  extraNames: readonly string[],
  adapterBytes: number,
  options: Options,
  image: Buffer,
  growTo = 0,
): Promise<CountResult> {
  const atStart = loadAverage();
  const dir = join(work, `n${count}`);
  const names = Array.from({ length: count }, (_, i) => taskName(i));
  await linkAdapters(master, dir, names);
  const child = await startChild({ adapters: dir, threads: options.threads, preset: options.preset });
  try {
    const json = async (path: string) =>
      (await (await fetch(`${child.url}${path}`)).json()) as Record<string, unknown>;
    const readyMs = await until(
      async () => (await fetch(`${child.url}/readyz`)).status === 200,
      child.spawnedAt,
      600_000,
      'ready',
    );
    const allServedMs = await until(
      async () => {
        const ready = await json('/readyz');
        return ready.tasks === count && ready.loading === false;
      },
      child.spawnedAt,
      600_000,
      'every task served',
    );
    // Tasks spread over the whole set, so a mixed burst gathers rows far apart in the stack.
    const spread = Array.from({ length: MIXED }, (_, i) => names[Math.floor((i * count) / MIXED)]!);
    const one = names[0]!;
    await predictOk(child.url, one, image);
    await Promise.all(spread.map((task) => predictOk(child.url, task, image)));
    const memory = await childMemory(child);
    const singleTaskMs: number[] = [];
    for (let i = 0; i < options.latencyRequests; i++)
      singleTaskMs.push((await predictOk(child.url, one, image)).ms);
    const mixedBurstMs: number[] = [];
    const singleBurstMs: number[] = [];
    const burst = async (tasks: readonly string[]) => {
      const started = performance.now();
      await Promise.all(tasks.map((task) => predictOk(child.url, task, image)));
      return performance.now() - started;
    };
    for (let round = 0; round < options.mixedRounds; round++) {
      const single = Array.from({ length: MIXED }, () => spread[round % MIXED]!);
      const tasks = count === 1 ? single : spread;
      if (round % 2 === 0) {
        mixedBurstMs.push(await burst(tasks));
        singleBurstMs.push(await burst(single));
      } else {
        singleBurstMs.push(await burst(single));
        mixedBurstMs.push(await burst(tasks));
      }
    }
    // Hot add: a complete directory moved into place (as a deployment would), then asked for at once.
    // Two readings: when the task is served (/readyz counts it: picked up, loaded, in the stack) and
    // when its first request is answered (that plus one inference, ~1.5 s under heavy load).
    const hotAddMs: number[] = [];
    const hotAddServedMs: number[] = [];
    for (const [i, name] of extraNames.entries()) {
      const staging = join(work, `.staging-${count}-${name}`);
      await linkAdapters(master, staging, [name]);
      const moved = performance.now();
      await rename(join(staging, name), join(dir, name));
      hotAddServedMs.push(
        await until(async () => (await json('/readyz')).tasks === count + i + 1, moved, 60_000, 'hot add'),
      );
      await predictOk(child.url, name, image);
      hotAddMs.push(performance.now() - moved);
    }
    // Memory growth inside one process (free of the spread between processes' ORT sessions): the
    // other adapters moved in while this one runs, the same warm-up, a GC, RSS again.
    let grown: CountResult['grown'];
    if (growTo > count) {
      const more = Array.from({ length: growTo - count }, (_, i) => taskName(count + i));
      const staging = join(work, `.staging-grow-${count}`);
      await linkAdapters(master, staging, more);
      const started = performance.now();
      for (const name of more) await rename(join(staging, name), join(dir, name));
      const total = count + extraNames.length + more.length;
      const addedMs = await until(
        async () => {
          const ready = await json('/readyz');
          return ready.tasks === total;
        },
        started,
        600_000,
        'grown',
      );
      const far = Array.from({ length: MIXED }, (_, i) => more[Math.floor((i * more.length) / MIXED)]!);
      await predictOk(child.url, one, image);
      await Promise.all(far.map((task) => predictOk(child.url, task, image)));
      const after = await childMemory(child);
      grown = { adapters: total, rssBytes: after.rssBytes, stack: after.stack, addedMs };
    }
    return {
      ...(grown ? { grown } : {}),
      adapters: count,
      adapterBytes: count * adapterBytes,
      listeningMs: child.listeningMs,
      readyMs,
      allServedMs,
      rssBytes: memory.rssBytes,
      stack: memory.stack,
      hotAddMs,
      hotAddServedMs,
      singleTaskMs,
      singleTaskMedianMs: median(singleTaskMs),
      mixedBurstMs,
      singleBurstMs,
      mixedRatio: median(singleBurstMs) / median(mixedBurstMs),
      loadAverage: { atStart, atEnd: loadAverage() },
    };
  } finally {
    await stopChild(child);
  }
}

interface CapResult {
  readonly adapters: number;
  readonly cap: number;
  readonly requests: number;
  readonly maxProbabilityError: number;
  readonly maxResident: number;
  readonly rssBytes: number;
  readonly stack: StackMemory;
  readonly requestMs: number[];
}

/** Requests over tasks spread across every adapter, answers checked against melo predict. */
async function measureCap(
  master: string,
  work: string,
  count: number,
  options: Options,
  image: Buffer,
  imagePath: string,
): Promise<CapResult> {
  const dir = join(work, `cap${count}`);
  const names = Array.from({ length: count }, (_, i) => taskName(i));
  await linkAdapters(master, dir, names);
  const random = new Random(77);
  const asked = Array.from({ length: options.capRequests }, () => names[random.int(count)]!);
  const backbone = randomBackbone(backboneConfig(options.preset), BACKBONE_SEED);
  const expected = new Map<string, number[]>();
  for (const task of new Set(asked)) {
    const [prediction] = await predictTasks(
      backbone,
      await loadTasks(backbone, [join(dir, task)]),
      [imagePath],
      {
        threads: options.threads,
      },
    );
    expected.set(task, prediction!.probabilities);
  }
  const child = await startChild({
    adapters: dir,
    threads: options.threads,
    preset: options.preset,
    maxResidentAdapters: options.cap,
  });
  try {
    await until(
      async () => {
        const ready = (await (await fetch(`${child.url}/readyz`)).json()) as {
          tasks: number;
          loading: boolean;
        };
        return ready.tasks === count && !ready.loading;
      },
      child.spawnedAt,
      600_000,
      'every task indexed',
    );
    let maxError = 0;
    let maxResident = 0;
    const requestMs: number[] = [];
    for (const task of asked) {
      const answer = await predictOk(child.url, task, image);
      requestMs.push(answer.ms);
      const want = expected.get(task)!;
      for (let i = 0; i < want.length; i++)
        maxError = Math.max(maxError, Math.abs(answer.probabilities[i]! - want[i]!));
      maxResident = Math.max(maxResident, (await childMemory(child)).resident);
    }
    const memory = await childMemory(child);
    return {
      adapters: count,
      cap: options.cap,
      requests: asked.length,
      maxProbabilityError: maxError,
      maxResident,
      rssBytes: memory.rssBytes,
      stack: memory.stack,
      requestMs,
    };
  } finally {
    await stopChild(child);
  }
}

async function main(): Promise<void> {
  const options = parseOptions();
  const machine = machineInfo();
  const largest = Math.max(...options.counts);
  const config = backboneConfig(options.preset);
  const work = await mkdtemp(join(tmpdir(), 'melo-bench-serve-scale-'));
  try {
    const master = join(work, 'master');
    // Two more than the largest count: the adapters hot-added to each server.
    const written = performance.now();
    const adapterBytes = await writeAdapters(master, largest + 2, options.preset);
    const extra = [taskName(largest), taskName(largest + 1)];
    console.log(
      `${largest + 2} adapters of ${(adapterBytes / 1e6).toFixed(2)} MB written in ${((performance.now() - written) / 1000).toFixed(1)} s; ${machine.cpuModel}, ${options.threads} threads, load ${loadAverage()}`,
    );
    const imagePath = join(work, 'image.jpg');
    const image = await testImage(imagePath);
    const counts: CountResult[] = [];
    for (const count of options.counts) {
      const result = await measureCount(
        master,
        work,
        count,
        extra,
        adapterBytes,
        options,
        image,
        count === 1 ? largest : 0,
      );
      counts.push(result);
      console.log(
        `${count} adapters: listening ${(result.listeningMs / 1000).toFixed(1)} s, ready ${(result.readyMs / 1000).toFixed(1)} s, all served ${(result.allServedMs / 1000).toFixed(1)} s; RSS ${formatBytes(result.rssBytes)} (stack ${formatBytes(result.stack.byteLength)}); hot add: served ${result.hotAddServedMs.map((ms) => ms.toFixed(0)).join(', ')} ms, answered ${result.hotAddMs.map((ms) => ms.toFixed(0)).join(', ')} ms; single task ${result.singleTaskMedianMs.toFixed(0)} ms; mixed/single ${result.mixedRatio.toFixed(3)} (load ${result.loadAverage.atEnd})`,
      );
    }
    const cap = await measureCap(master, work, largest, options, image, imagePath);
    console.log(
      `cap ${cap.cap} over ${cap.adapters} adapters: ${cap.requests} requests, max |Δp| ${cap.maxProbabilityError.toExponential(2)}, at most ${cap.maxResident} resident, RSS ${formatBytes(cap.rssBytes)} (load ${loadAverage()})`,
    );

    const one = counts[0]!;
    if (one.grown) {
      const perByte = (one.grown.rssBytes - one.rssBytes) / ((one.grown.adapters - 1) * adapterBytes);
      console.log(
        `one process, 1 → ${one.grown.adapters} adapters (added in ${(one.grown.addedMs / 1000).toFixed(1)} s): RSS ${formatBytes(one.rssBytes)} → ${formatBytes(one.grown.rssBytes)}, ${perByte.toFixed(2)} bytes per adapter byte`,
      );
    }
    const comparisons = counts.slice(1).map((result) => {
      const memoryPerAdapterByte =
        (result.rssBytes - one.rssBytes) / (result.adapterBytes - one.adapterBytes);
      const latencyRatio = result.singleTaskMedianMs / one.singleTaskMedianMs;
      const readyGapMs = result.readyMs - one.readyMs;
      const allServedGapMs = result.allServedMs - one.allServedMs;
      return {
        adapters: result.adapters,
        memoryPerAdapterByte,
        memoryPass: memoryPerAdapterByte <= TARGETS.memoryPerAdapterByte,
        hotAddMaxMs: Math.max(...result.hotAddMs),
        hotAddPass: Math.max(...result.hotAddMs) <= TARGETS.hotAddMs,
        hotAddServedMaxMs: Math.max(...result.hotAddServedMs),
        readyGapMs,
        allServedGapMs,
        readyPass: readyGapMs <= TARGETS.readyWithinMsOfOne,
        allServedPass: allServedGapMs <= TARGETS.readyWithinMsOfOne,
        mixedRatio: result.mixedRatio,
        mixedPass: result.mixedRatio >= TARGETS.mixedRatio,
        singleLatencyRatio: latencyRatio,
        singleLatencyPass: latencyRatio <= TARGETS.singleLatencyRatio,
      };
    });
    await writeBenchReport(options.out, {
      benchmark: 'serve-scale',
      date: new Date().toISOString(),
      machine,
      model: `vit-${options.preset[0]}16-224`,
      threads: options.threads,
      lora: LORA,
      adapterBytes,
      targets: TARGETS,
      results: counts.map((result) => ({
        name: `${result.adapters}-adapters`,
        model: `vit-${options.preset[0]}16-224`,
        batch: 1,
        threads: options.threads,
        imagesPerSecond: 1000 / result.singleTaskMedianMs,
        gflops: (vitFlopsPerImage(config, config.imageSize, 'cls').total / result.singleTaskMedianMs) * 1e-6,
        ...result,
      })),
      comparisons,
      inProcessGrowth: one.grown
        ? {
            ...one.grown,
            memoryPerAdapterByte:
              (one.grown.rssBytes - one.rssBytes) / ((one.grown.adapters - 1) * adapterBytes),
          }
        : null,
      cap: {
        ...cap,
        pass: cap.maxProbabilityError <= TARGETS.capProbabilityError && cap.maxResident <= cap.cap,
      },
      loadAverage: { atStart: counts[0]!.loadAverage.atStart, atEnd: loadAverage() },
    });
    for (const comparison of comparisons) console.log(JSON.stringify(comparison));
    console.log(`wrote ${options.out}`);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

const childIndex = process.argv.indexOf('--child');
if (childIndex >= 0) {
  await runChild(JSON.parse(process.argv[childIndex + 1]!) as ChildSpec);
} else {
  await main();
}
