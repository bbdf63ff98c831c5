/**
 * `npm run bench:serve`: the multi-task server on ViT-B/16 (random weights of the real shapes, 224 px) with
 * LoRA r=4 on query/value, loopback only, every loop bounded. Writes bench/results/serve.json.
 *
 *   1. mixed batch: 8 rows for 8 different tasks vs 8 rows for one task through the serving engine,
 *      interleaved rounds; throughput ratio (target ≥ 0.9), from wall time and from CPU time (the sum
 *      over the process's threads, from /proc: on a machine shared with other jobs, wall time measures
 *      the neighbours as much as the work).
 *   2. load: a server in a child process starts with 1 adapter; autocannon at concurrency 16 for a fixed
 *      number of requests; then N-1 more adapters are copied into its directory (picked up without a restart) and the
 *      load runs again, requests spread over every task. Requests/s, p50/p99 latency. Resident memory is
 *      read in that one process after a full GC, with 1 and with N adapters after the same warm-up: the
 *      difference is what the adapters cost, free of the ±100 MB that ORT session creation varies by
 *      between processes (target: N adapters add < 100 MB over 1).
 *   3. adapter switch: sequential single-image requests to the N-adapter server, alternating between two
 *      tasks vs repeating one, in interleaved blocks; median latency difference (target < 1 ms), and the
 *      median server CPU time per request of each.
 *
 *   4. resident memory of `melo serve` itself (bin/melo.js on the compiled dist/, over a random checkpoint
 *      written to disk) with one adapter, fp32 vs int8 backbone, each a fresh process, after /readyz and
 *      the warm-up (target: int8 at most half of fp32). `--memory-only` runs just this part and writes
 *      bench/results/serve-memory.json.
 *
 *   npm run bench:serve [-- --threads 2 --adapters 100 --requests 32 --batch-rounds 8
 *                        --rounds 4 --block 4 --preset base --out FILE] [--memory-only]
 */

import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { cp, mkdtemp, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import autocannon from 'autocannon';
import sharp from 'sharp';
import { fingerprintBackbone } from '../src/checkpoints/load.ts';
import { saveHfCheckpoint } from '../src/checkpoints/save-hf.ts';
import { saveAdapter } from '../src/io/peft.ts';
import { initAdapter } from '../src/model/adapter.ts';
import { type BackbonePrecision, withPrecision } from '../src/model/backbone.ts';
import { type ViTConfig, vitConfig } from '../src/model/vit-config.ts';
import { buildApp } from '../src/serve/app.ts';
import { type BatchRow, ServingEngine } from '../src/serve/engine/engine.ts';
import { AdapterRegistry } from '../src/serve/engine/registry.ts';
import { Random } from '../src/util/random.ts';
import { integerOption } from './lib/args.ts';
import { loadAverage, machineInfo } from './lib/machine.ts';
import { formatBytes, fullGc, procStatusBytes } from './lib/memory.ts';
import { randomBackbone, randomPixels, randomViTWeights } from './lib/random-vit.ts';
import { type BenchResult, writeBenchReport } from './lib/results.ts';
import { median } from './lib/timing.ts';
import { vitFlopsPerImage } from './lib/vit-flops.ts';

const BACKBONE_SEED = 1;
const LORA = { rank: 4, alpha: 8, dropout: 0, targets: ['query', 'value'] as const };
const TARGETS = { mixedBatchRatio: 0.9, extraRssBytes: 100 * 1024 * 1024, switchMs: 1 } as const;
const MIXED_ROWS = 8;
const CONCURRENCY = 16;

const here = dirname(fileURLToPath(import.meta.url));
const thisFile = fileURLToPath(import.meta.url);

interface Options {
  threads: number;
  adapters: number;
  requests: number;
  rounds: number;
  batchRounds: number;
  block: number;
  preset: Preset;
  out: string;
  memoryOnly: boolean;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      threads: { type: 'string', default: '2' },
      adapters: { type: 'string', default: '100' },
      requests: { type: 'string', default: String(2 * CONCURRENCY) },
      rounds: { type: 'string', default: '4' },
      'batch-rounds': { type: 'string', default: '8' },
      block: { type: 'string', default: '4' },
      preset: { type: 'string', default: 'base' },
      out: { type: 'string' },
      'memory-only': { type: 'boolean', default: false },
    },
  });
  const memoryOnly = values['memory-only'] === true;
  const int = (name: keyof typeof values, min: number) => integerOption(name, String(values[name]), min);
  return {
    threads: int('threads', 1),
    adapters: int('adapters', 8),
    // autocannon refuses fewer requests than connections.
    requests: int('requests', CONCURRENCY),
    rounds: int('rounds', 1),
    batchRounds: int('batch-rounds', 1),
    block: int('block', 1),
    preset: PRESETS.includes(values.preset as Preset)
      ? (values.preset as Preset)
      : (() => {
          throw new Error(`--preset expects one of ${PRESETS.join(', ')}`);
        })(),
    out: values.out ?? join(here, 'results', memoryOnly ? 'serve-memory.json' : 'serve.json'),
    memoryOnly,
  };
}

const PRESETS = ['tiny', 'small', 'base'] as const;
type Preset = (typeof PRESETS)[number];

/** ViT-B/16 by default; a smaller preset runs the same bench quickly (to check the bench itself). */
function backboneConfig(preset: Preset): ViTConfig {
  return vitConfig(preset, { numClasses: 0 });
}

function modelName(preset: Preset): string {
  return `vit-${preset[0]}16-224`;
}

/** N task adapters for the random backbone: r=4 q/v, random B (as after training), 2–6 classes. */
async function writeAdapters(
  dir: string,
  count: number,
  preset: Preset,
  backboneFingerprint = `random-${BACKBONE_SEED}`,
): Promise<string[]> {
  const config = backboneConfig(preset);
  const names: string[] = [];
  for (let i = 0; i < count; i++) {
    const random = new Random(1000 + i);
    const classes = 2 + (i % 5);
    const name = `task${String(i).padStart(3, '0')}`;
    const adapter = initAdapter(
      config,
      { ...LORA, targets: [...LORA.targets] },
      {
        task: name,
        taskType: classes === 2 ? 'binary' : 'multiclass',
        labels: Array.from({ length: classes }, (_, c) => `c${c}`),
        backboneFingerprint,
      },
      random,
    );
    for (const pair of adapter.pairs.values())
      for (let j = 0; j < pair.B.data.length; j++) pair.B.data[j] = random.uniform(-0.05, 0.05);
    await saveAdapter(join(dir, name), adapter);
    names.push(name);
  }
  return names;
}

/** A 256×256 JPEG with structure (so decoding and resizing do real work), as a client would send. */
async function testImage(): Promise<Buffer> {
  const size = 256;
  const rgb = Buffer.alloc(size * size * 3);
  for (let y = 0; y < size; y++)
    for (let x = 0; x < size; x++) {
      const i = (y * size + x) * 3;
      rgb[i] = (x * 3 + y) & 255;
      rgb[i + 1] = (x ^ y) & 255;
      rgb[i + 2] = ((x - y) * 5) & 255;
    }
  return sharp(rgb, { raw: { width: size, height: size, channels: 3 } })
    .jpeg({ quality: 90 })
    .toBuffer();
}

// ---------------------------------------------------------------------------------------------------
// The server child process: one fresh process per configuration, so resident memory is its own.

interface ChildSpec {
  readonly adapters: string;
  readonly threads: number;
  readonly preset: Preset;
  /** `--backbone-precision` of the server (default fp32). */
  readonly precision?: BackbonePrecision;
}

async function runChild(spec: ChildSpec): Promise<void> {
  const app = await buildApp({
    backbone: withPrecision(randomBackbone(backboneConfig(spec.preset), BACKBONE_SEED), spec.precision),
    adapters: spec.adapters,
    threads: spec.threads,
    maxBatch: CONCURRENCY,
    maxWaitMs: 5,
    maxQueueRows: 4 * CONCURRENCY,
    // Generous: on a shared 2-core machine a batch of 16 ViT-B/16 images can take minutes.
    requestTimeoutMs: 900_000,
    rescanMs: 500,
    logger: false,
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address();
  process.stdout.write(`${JSON.stringify({ port: typeof address === 'object' ? address?.port : 0 })}\n`);
  // The parent asks for a full GC before reading memory, so garbage from loading is not counted.
  process.on('message', () => {
    fullGc();
    process.send?.({ rssBytes: process.memoryUsage.rss() });
  });
  const stop = () => void app.close().then(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

interface ServerChild {
  readonly process: ChildProcess;
  readonly url: string;
}

async function startChild(spec: ChildSpec): Promise<ServerChild> {
  const child = spawn(process.execPath, ['--import', 'tsx', thisFile, '--child', JSON.stringify(spec)], {
    stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
  });
  const lines = createInterface({ input: child.stdout! });
  const first = await new Promise<string>((resolve, reject) => {
    lines.once('line', resolve);
    child.once('exit', (code) => reject(new Error(`server child exited with ${code} before listening`)));
  });
  const { port } = JSON.parse(first) as { port: number };
  return { process: child, url: `http://127.0.0.1:${port}` };
}

async function stopChild(child: ServerChild): Promise<void> {
  const exited = new Promise((resolve) => child.process.once('exit', resolve));
  child.process.kill('SIGTERM');
  await exited;
}

/** The child's resident memory after a full GC. */
function residentAfterGc(child: ServerChild): Promise<number> {
  return new Promise((resolve) => {
    child.process.once('message', (message) => resolve((message as { rssBytes: number }).rssBytes));
    child.process.send({ gc: true });
  });
}

/**
 * Resident memory of `melo serve` itself with one adapter, in each backbone precision: the command a user
 * runs (bin/melo.js on the compiled dist/, built first; through tsx every thread would carry
 * its compiler and the sources' source maps, about 75 MiB a thread), over a random ViT of the preset's
 * shapes saved as a Hugging Face checkpoint. Read from /proc after /readyz, the same warm-up as the load test and
 * a second's settling: what int8 weights save (target: int8 at most half of fp32).
 */
async function residentByPrecision(
  image: Buffer,
  options: Options,
): Promise<Record<BackbonePrecision, { rssBytes: number; peakRssBytes: number }>> {
  const work = await mkdtemp(join(tmpdir(), 'melo-bench-serve-memory-'));
  try {
    const config = backboneConfig(options.preset);
    const weights = randomViTWeights(config, BACKBONE_SEED);
    const backboneDir = join(work, 'backbone');
    await saveHfCheckpoint(backboneDir, config, weights, randomBackbone(config, BACKBONE_SEED).preprocess);
    const adaptersDir = join(work, 'adapters');
    const [task] = await writeAdapters(adaptersDir, 1, options.preset, fingerprintBackbone(config, weights));
    weights.clear();
    buildDist();
    const out: Partial<Record<BackbonePrecision, { rssBytes: number; peakRssBytes: number }>> = {};
    for (const precision of ['fp32', 'int8'] as const) {
      const server = await startMeloServe(backboneDir, adaptersDir, precision, options.threads);
      try {
        await warmUp(server.url, [task!], image);
        await sleep(1000);
        out[precision] = {
          rssBytes: procStatusBytes('VmRSS', server.process.pid!) ?? Number.NaN,
          peakRssBytes: procStatusBytes('VmHWM', server.process.pid!) ?? Number.NaN,
        };
      } finally {
        await stopChild(server);
      }
    }
    return out as Record<BackbonePrecision, { rssBytes: number; peakRssBytes: number }>;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Part 4 measured, printed, and summarised for the JSON against its target (int8 ≤ half of fp32). */
async function residentMemoryReport(image: Buffer, options: Options) {
  const memory = await residentByPrecision(image, options);
  const int8OverFp32 = memory.int8.rssBytes / memory.fp32.rssBytes;
  console.log(
    `resident memory of melo serve, 1 adapter: fp32 ${formatBytes(memory.fp32.rssBytes)}, int8 ${formatBytes(memory.int8.rssBytes)} (${(100 * int8OverFp32).toFixed(0)}%; target ≤ 50%)`,
  );
  return {
    ...memory,
    int8OverFp32,
    target: 0.5,
    pass: int8OverFp32 <= 0.5,
    server: 'bin/melo.js serve (dist/)',
  };
}

/**
 * Compiles src/ to dist/, so that bin/melo.js runs the compiled code (its own staleness check would
 * otherwise send a changed tree through tsx); incremental, 2–4 s when little changed.
 */
function buildDist(): void {
  execFileSync(process.execPath, [join(here, '..', 'scripts', 'build.mjs')], { stdio: 'inherit' });
}

/** `melo serve` on a free port, JSON logs; resolves once /readyz answers 200 (its adapter is loaded). */
async function startMeloServe(
  backbone: string,
  adapters: string,
  precision: BackbonePrecision,
  threads: number,
): Promise<ServerChild> {
  const args = [
    'serve',
    '--backbone',
    backbone,
    '--adapters',
    adapters,
    '--port',
    '0',
    '--threads',
    String(threads),
  ];
  args.push('--backbone-precision', precision, '--log-format', 'json', '--max-batch', String(CONCURRENCY));
  const child = spawn(process.execPath, [join(here, '..', 'bin', 'melo.js'), ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines = createInterface({ input: child.stdout! });
  const url = await new Promise<string>((resolve, reject) => {
    lines.on('line', (line) => {
      const address = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(line)?.[1];
      if (address) resolve(address);
    });
    child.once('exit', (code) => reject(new Error(`melo serve exited with ${code} before listening`)));
  });
  lines.on('line', () => {}); // keep draining its log
  for (let waited = 0; (await fetch(`${url}/readyz`)).status !== 200; waited += 100) {
    if (waited > 600_000) throw new Error('melo serve: not ready after 10 minutes');
    await sleep(100);
  }
  return { process: child, url };
}

/**
 * CPU time of every thread of a process so far, in ms: the first field of each thread's schedstat
 * (nanoseconds on the CPU), summed. Unlike wall time it does not grow when other jobs take the cores.
 */
function cpuMs(pid: number): number {
  let ns = 0;
  for (const thread of readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${thread}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // the thread ended between listing and reading
    }
  }
  return ns / 1e6;
}

async function predictOnce(url: string, task: string, image: Buffer): Promise<number> {
  const started = performance.now();
  const response = await fetch(`${url}/v1/predict?tasks=${task}`, {
    method: 'POST',
    headers: { 'content-type': 'image/jpeg' },
    body: new Uint8Array(image),
  });
  const body = (await response.json()) as { results?: { probabilities: number[] }[] };
  const ms = performance.now() - started;
  if (response.status !== 200 || !body.results?.[0]?.probabilities.every(Number.isFinite))
    throw new Error(`predict ${task} answered ${response.status}: ${JSON.stringify(body).slice(0, 200)}`);
  return ms;
}

/** The same warm-up for every configuration: a few single requests, then one full concurrent burst. */
async function warmUp(url: string, tasks: readonly string[], image: Buffer): Promise<void> {
  for (let i = 0; i < 3; i++) await predictOnce(url, tasks[i % tasks.length]!, image);
  await Promise.all(
    Array.from({ length: CONCURRENCY }, (_, i) => predictOnce(url, tasks[i % tasks.length]!, image)),
  );
}

interface LoadResult {
  readonly adapters: number;
  readonly requestsPerSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly completed: number;
  readonly wallSeconds: number;
  /** Server CPU time (all its threads) per request during the load. */
  readonly cpuMsPerRequest: number;
  readonly non2xx: number;
  readonly errors: number;
  /** /healthz latency while the load runs: inference runs in its own thread, so HTTP stays responsive. */
  readonly healthP50Ms: number;
  readonly healthMaxMs: number;
  /** After the warm-up and a full GC, before the load. */
  readonly rssBytes: number;
  readonly rssAfterLoadBytes: number;
  readonly peakRssBytes: number;
}

async function loadTest(
  child: ServerChild,
  tasks: readonly string[],
  image: Buffer,
  requests: number,
): Promise<LoadResult> {
  await warmUp(child.url, tasks, image);
  const rssBytes = await residentAfterGc(child);
  let next = 0;
  const health: number[] = [];
  let loading = true;
  const probe = (async () => {
    while (loading) {
      const started = performance.now();
      await fetch(`${child.url}/healthz`).then((response) => response.arrayBuffer());
      health.push(performance.now() - started);
      await sleep(200);
    }
  })();
  const cpuBefore = cpuMs(child.process.pid!);
  const started = performance.now();
  const result = await autocannon({
    url: child.url,
    connections: CONCURRENCY,
    amount: requests,
    timeout: 900,
    requests: [
      {
        method: 'POST',
        path: '/v1/predict',
        headers: { 'content-type': 'image/jpeg' },
        body: image,
        // Spread requests over every task, so a batch mixes tasks whenever more than one is loaded.
        setupRequest: (request) => ({
          ...request,
          path: `/v1/predict?tasks=${tasks[next++ % tasks.length]}`,
        }),
      },
    ],
  });
  const wallSeconds = (performance.now() - started) / 1000;
  const cpuSpent = cpuMs(child.process.pid!) - cpuBefore;
  loading = false;
  await probe;
  return {
    adapters: tasks.length,
    healthP50Ms: median(health),
    healthMaxMs: Math.max(...health),
    requestsPerSecond: result.requests.total / wallSeconds,
    wallSeconds,
    cpuMsPerRequest: cpuSpent / Math.max(1, result.requests.total),
    p50Ms: result.latency.p50,
    p99Ms: result.latency.p99,
    completed: result.requests.total,
    non2xx: result.non2xx,
    errors: result.errors + result.timeouts,
    rssBytes,
    rssAfterLoadBytes: await residentAfterGc(child),
    peakRssBytes: procStatusBytes('VmHWM', child.process.pid!) ?? Number.NaN,
  };
}

/** Polls /v1/tasks until `count` tasks are served (the registry picks new directories up by itself). */
async function waitForTasks(url: string, count: number, timeoutMs: number): Promise<number> {
  const started = performance.now();
  while (performance.now() - started < timeoutMs) {
    const body = (await (await fetch(`${url}/v1/tasks`)).json()) as { tasks: unknown[] };
    if (body.tasks.length === count) return performance.now() - started;
    await sleep(100);
  }
  throw new Error(`the server did not serve ${count} tasks within ${timeoutMs} ms`);
}

/**
 * A seeded percentile bootstrap 95% interval for median(b) − median(a): how precisely the samples pin
 * the difference down (on a shared machine, often far less precisely than 1 ms).
 */
function medianDifferenceInterval(a: readonly number[], b: readonly number[], seed = 7): [number, number] {
  const random = new Random(seed);
  const resample = (values: readonly number[]) =>
    Array.from({ length: values.length }, () => values[random.int(values.length)]!);
  const differences = Array.from({ length: 2000 }, () => median(resample(b)) - median(resample(a))).sort(
    (x, y) => x - y,
  );
  return [
    differences[Math.floor(0.025 * differences.length)]!,
    differences[Math.floor(0.975 * differences.length)]!,
  ];
}

/** Sequential requests in interleaved blocks: one task repeated vs two tasks alternating. */
async function switchTest(
  child: ServerChild,
  tasks: readonly string[],
  image: Buffer,
  rounds: number,
  block: number,
): Promise<{ sameMs: number[]; alternatingMs: number[]; sameCpuMs: number[]; alternatingCpuMs: number[] }> {
  const result = {
    sameMs: [] as number[],
    alternatingMs: [] as number[],
    sameCpuMs: [] as number[],
    alternatingCpuMs: [] as number[],
  };
  const pid = child.process.pid!;
  const one = async (task: string, wall: number[], cpu: number[]) => {
    const before = cpuMs(pid);
    wall.push(await predictOnce(child.url, task, image));
    cpu.push(cpuMs(pid) - before);
  };
  // The repeated task is tasks[1] or tasks[2] in turn, the two that alternate, so that both arms run the
  // same adapters and only the switching differs.
  const same = async (round: number) => {
    for (let i = 0; i < block; i++) await one(tasks[1 + (round % 2)]!, result.sameMs, result.sameCpuMs);
  };
  const alternating = async () => {
    for (let i = 0; i < block; i++)
      await one(tasks[1 + (i % 2)]!, result.alternatingMs, result.alternatingCpuMs);
  };
  for (let round = 0; round < rounds; round++) {
    if (round % 2 === 0) {
      await same(round);
      await alternating();
    } else {
      await alternating();
      await same(round);
    }
  }
  return result;
}

/** Engine-level: the same 8 images as rows of 8 different tasks vs 8 rows of one task. */
async function mixedBatchTest(
  adaptersDir: string,
  tasks: readonly string[],
  threads: number,
  rounds: number,
  preset: Preset,
): Promise<{
  mixedMs: number[];
  singleMs: number[];
  mixedCpuMs: number[];
  singleCpuMs: number[];
  stackBytes: number;
}> {
  const config = backboneConfig(preset);
  const backbone = randomBackbone(config, BACKBONE_SEED);
  const registry = await AdapterRegistry.open({ backbone, dir: adaptersDir, watch: false, rescanMs: 0 });
  const engine = await ServingEngine.create(backbone, registry, { threads });
  try {
    const perImage = config.channels * config.imageSize[0] * config.imageSize[1];
    const pixels = randomPixels(config, MIXED_ROWS, config.imageSize, 7);
    const image = (i: number) => pixels.subarray(i * perImage, (i + 1) * perImage);
    const mixed: BatchRow[] = Array.from({ length: MIXED_ROWS }, (_, i) => ({
      task: tasks[i]!,
      pixels: image(i),
    }));
    // The one-task batches take each of the same 8 tasks in turn, so both sides use the same adapters'
    // values (activations differ by task, and with them the arithmetic's speed).
    const single = (round: number): BatchRow[] =>
      Array.from({ length: MIXED_ROWS }, (_, i) => ({ task: tasks[round % MIXED_ROWS]!, pixels: image(i) }));
    const cpu: Record<'mixed' | 'single', number[]> = { mixed: [], single: [] };
    const timed = async (rows: BatchRow[], record?: 'mixed' | 'single') => {
      const cpuBefore = cpuMs(process.pid);
      const started = performance.now();
      const outcomes = await engine.run(rows);
      const ms = performance.now() - started;
      if (record) cpu[record].push(cpuMs(process.pid) - cpuBefore);
      if (!outcomes.every((outcome) => outcome.ok && outcome.prediction.probabilities.every(Number.isFinite)))
        throw new Error('a batch row failed or gave non-finite probabilities');
      return ms;
    };
    // Two untimed runs each: the first runs of a session allocate and are slower.
    for (let i = 0; i < 2; i++) {
      await timed(mixed);
      await timed(single(i));
    }
    const mixedMs: number[] = [];
    const singleMs: number[] = [];
    for (let round = 0; round < rounds; round++) {
      if (round % 2 === 0) {
        mixedMs.push(await timed(mixed, 'mixed'));
        singleMs.push(await timed(single(round), 'single'));
      } else {
        singleMs.push(await timed(single(round), 'single'));
        mixedMs.push(await timed(mixed, 'mixed'));
      }
    }
    return {
      mixedMs,
      singleMs,
      mixedCpuMs: cpu.mixed,
      singleCpuMs: cpu.single,
      stackBytes: engine.stackBytes,
    };
  } finally {
    await engine.close();
    await registry.close();
  }
}

/** `--memory-only`: part 4 alone, for the int8 memory target without the minutes of load tests. */
async function memoryOnly(options: Options): Promise<void> {
  const loadAtStart = loadAverage();
  const memory = await residentMemoryReport(await testImage(), options);
  await writeBenchReport(options.out, {
    benchmark: 'serve-memory',
    date: new Date().toISOString(),
    machine: machineInfo(),
    model: modelName(options.preset),
    threads: options.threads,
    lora: LORA,
    loadAverage: { atStart: loadAtStart, atEnd: loadAverage() },
    residentMemoryByPrecision: memory,
    results: [],
  });
  console.log(`wrote ${options.out}`);
}

async function main(): Promise<void> {
  const options = parseOptions();
  if (options.memoryOnly) return memoryOnly(options);
  const machine = machineInfo();
  const config = backboneConfig(options.preset);
  // The serving graph runs the last block on the CLS token only (ViTGraph.forwardPooled).
  const flopsPerImage = vitFlopsPerImage(config, config.imageSize, 'cls').total;
  const work = await mkdtemp(join(tmpdir(), 'melo-bench-serve-'));
  try {
    const manyDir = join(work, 'many');
    const liveDir = join(work, 'live');
    const tasks = await writeAdapters(manyDir, options.adapters, options.preset);
    const image = await testImage();
    console.log(`${options.adapters} adapters written; ${machine.cpuModel}, ${options.threads} threads`);

    const loadAtStart = loadAverage();
    const batch = await mixedBatchTest(manyDir, tasks, options.threads, options.batchRounds, options.preset);
    const mixedIps = (MIXED_ROWS * 1000) / median(batch.mixedMs);
    const singleIps = (MIXED_ROWS * 1000) / median(batch.singleMs);
    // Throughput from CPU time: images per CPU-second of the serving process.
    const cpuRatio = median(batch.singleCpuMs) / median(batch.mixedCpuMs);
    console.log(
      `batch of ${MIXED_ROWS}: ${MIXED_ROWS} tasks ${mixedIps.toFixed(2)} img/s, one task ${singleIps.toFixed(2)} img/s, wall ratio ${(mixedIps / singleIps).toFixed(3)}, CPU-time ratio ${cpuRatio.toFixed(3)} (load ${loadAverage()})`,
    );
    await sleep(250);

    await cp(join(manyDir, tasks[0]!), join(liveDir, tasks[0]!), { recursive: true });
    const child = await startChild({ adapters: liveDir, threads: options.threads, preset: options.preset });
    let loadOne: LoadResult;
    let loadMany: LoadResult;
    let pickUpMs: number;
    let switching: Awaited<ReturnType<typeof switchTest>>;
    try {
      loadOne = await loadTest(child, tasks.slice(0, 1), image, options.requests);
      console.log(
        `load, 1 adapter: ${loadOne.requestsPerSecond.toFixed(2)} req/s, p50 ${loadOne.p50Ms} ms, p99 ${loadOne.p99Ms} ms, RSS ${formatBytes(loadOne.rssBytes)}`,
      );
      await predictOnce(child.url, tasks[0]!, image);
      // The other adapters arrive while the server runs, each moved into place whole.
      for (const task of tasks.slice(1)) {
        await cp(join(manyDir, task), join(liveDir, `.incoming-${task}`), { recursive: true });
        await rename(join(liveDir, `.incoming-${task}`), join(liveDir, task));
      }
      pickUpMs = await waitForTasks(child.url, tasks.length, 120_000);
      loadMany = await loadTest(child, tasks, image, options.requests);
      console.log(
        `load, ${options.adapters} adapters: ${loadMany.requestsPerSecond.toFixed(2)} req/s, p50 ${loadMany.p50Ms} ms, p99 ${loadMany.p99Ms} ms, RSS ${formatBytes(loadMany.rssBytes)}`,
      );
      // autocannon hangs up on its last requests; the batch already running finishes before anything else.
      await predictOnce(child.url, tasks[0]!, image);
      switching = await switchTest(child, tasks, image, options.rounds, options.block);
    } finally {
      await stopChild(child);
    }
    // One adapter in a fresh server per precision: the memory int8 weights save.
    const oneDir = join(work, 'one');
    await cp(join(manyDir, tasks[0]!), join(oneDir, tasks[0]!), { recursive: true });
    const memoryByPrecision = await residentMemoryReport(image, options);
    const sameMedian = median(switching.sameMs);
    const alternatingMedian = median(switching.alternatingMs);
    const sameCpu = median(switching.sameCpuMs);
    const alternatingCpu = median(switching.alternatingCpuMs);
    console.log(
      `switch: one task ${sameMedian.toFixed(1)} ms (server CPU ${sameCpu.toFixed(1)} ms), alternating ${alternatingMedian.toFixed(1)} ms (CPU ${alternatingCpu.toFixed(1)} ms); medians, sequential`,
    );

    // Both after a full load and a GC: the arena ORT grew under the first load is in both numbers.
    const extraRss = loadMany.rssBytes - loadOne.rssAfterLoadBytes;
    const extraRssLoaded = loadMany.rssAfterLoadBytes - loadOne.rssAfterLoadBytes;
    const result = (
      name: string,
      batchSize: number,
      imagesPerSecond: number,
      extra: object,
    ): BenchResult => ({
      name,
      model: modelName(options.preset),
      batch: batchSize,
      threads: options.threads,
      imagesPerSecond,
      gflops: (imagesPerSecond * flopsPerImage) / 1e9,
      ...extra,
    });
    await writeBenchReport(options.out, {
      benchmark: 'serve',
      date: new Date().toISOString(),
      machine,
      lora: LORA,
      adapters: options.adapters,
      concurrency: CONCURRENCY,
      requestsPerLoad: options.requests,
      loadAverage: { atStart: loadAtStart, atEnd: loadAverage() },
      residentMemoryByPrecision: memoryByPrecision,
      results: [
        result(`mixed-${MIXED_ROWS}-tasks`, MIXED_ROWS, mixedIps, {
          samplesMs: batch.mixedMs,
          cpuSamplesMs: batch.mixedCpuMs,
        }),
        result('single-task', MIXED_ROWS, singleIps, {
          samplesMs: batch.singleMs,
          cpuSamplesMs: batch.singleCpuMs,
        }),
        result('load-1-adapter', CONCURRENCY, loadOne.requestsPerSecond, { ...loadOne }),
        result(`load-${options.adapters}-adapters`, CONCURRENCY, loadMany.requestsPerSecond, { ...loadMany }),
      ],
      mixedBatch: {
        ratio: mixedIps / singleIps,
        cpuTimeRatio: cpuRatio,
        target: TARGETS.mixedBatchRatio,
        pass: mixedIps / singleIps >= TARGETS.mixedBatchRatio,
        passOnCpuTime: cpuRatio >= TARGETS.mixedBatchRatio,
        stackBytes: batch.stackBytes,
      },
      memory: {
        extraRssBytes: extraRss,
        extraRssAfterLoadBytes: extraRssLoaded,
        stackBytes: batch.stackBytes,
        target: TARGETS.extraRssBytes,
        pass: extraRss < TARGETS.extraRssBytes,
        adaptersPickedUpMs: pickUpMs,
      },
      adapterSwitch: {
        sameTaskMedianMs: sameMedian,
        alternatingMedianMs: alternatingMedian,
        addedMs: alternatingMedian - sameMedian,
        addedMsInterval95: medianDifferenceInterval(switching.sameMs, switching.alternatingMs),
        target: TARGETS.switchMs,
        pass: alternatingMedian - sameMedian < TARGETS.switchMs,
        sameTaskCpuMedianMs: sameCpu,
        alternatingCpuMedianMs: alternatingCpu,
        addedCpuMs: alternatingCpu - sameCpu,
        addedCpuMsInterval95: medianDifferenceInterval(switching.sameCpuMs, switching.alternatingCpuMs),
        passOnCpuTime: alternatingCpu - sameCpu < TARGETS.switchMs,
        sameTaskMs: switching.sameMs,
        alternatingMs: switching.alternatingMs,
        sameTaskCpuMs: switching.sameCpuMs,
        alternatingCpuMs: switching.alternatingCpuMs,
      },
    });
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
