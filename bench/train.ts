/**
 * `npm run bench:train`: ViT-B/16 training steps at 224 px — MeLo's LoRA (rank 4 on query and value, task
 * head) and full fine-tuning — against the same steps in PyTorch, measured in the same run.
 *
 * A step is forward, loss, backward and an AdamW update. melo's forward+backward is one ORT session
 * (`TrainStep`); its AdamW runs in this thread for LoRA and on worker threads in WebAssembly for full
 * fine-tuning (`src/train/optimizer.ts`, `src/train/update-kernel.ts`), as in `melo train`; PyTorch's is zero_grad, forward,
 * cross-entropy, backward, then optimizer.step(). Both parts are timed separately on both sides, and the
 * whole step is what is compared.
 *
 * Every (engine, method) runs in its own child process, so that each peak memory is that configuration's
 * alone (the melo child is this file with --worker). The two engines of a method are alive together and
 * timed in interleaved rounds, so that other work on the machine slows both alike instead of skewing the
 * ratio; the methods run one after the other. Writes bench/results/train.json.
 *
 *   npm run bench:train [-- --threads 2 --batch 8 --classes 2 --methods lora,full --rounds 5,5 --warmup 2
 *                          --no-pytorch --profile --out FILE --isa avx2 --int8-grid auto|full]
 *   --profile adds ORT's profile of each method's step, by op type and by node (in this process, after
 *   the timed rounds); with --precision int8, of the step through the int8 backbone.
 *   --isa avx2 reruns everything (melo and the peer) with CPUID showing an AVX2-only CPU (bench/lib/isa-mask.ts)
 *   and writes bench/results/train-avx2.json.
 *   --int8-grid full trains through the int8 backbone on the full grid even where melo would use one whose
 *   pairs fit 16 bits (CPUs whose u8·s8 kernel saturates, src/runtime/int8-kernels.ts): to compare them.
 *   MELO_PYTHON=/path/to/python   interpreter with torch for the peer (else /usr/bin/python3, then python3)
 */

import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import ort from 'onnxruntime-node';
import { initAdapter } from '../src/model/adapter.ts';
import type { Backbone } from '../src/model/backbone.ts';
import { type LoraConfig, MELO_LORA_DEFAULTS } from '../src/model/lora-config.ts';
import { adapterFeeds } from '../src/model/task-graph.ts';
import { type ViTConfig, vitConfig } from '../src/model/vit-config.ts';
import { INT8_GRID } from '../src/ops/quantized.ts';
import { int8TrainingGrid } from '../src/runtime/int8-kernels.ts';
import { serializeForThisCpu } from '../src/runtime/session.ts';
import type { HostTensor } from '../src/tensor.ts';
import { createOptimizer } from '../src/train/optimizer.ts';
import { buildTrainStepGraph, TrainStep } from '../src/train/train-step.ts';
import { trainingBackbone } from '../src/train/training-backbone.ts';
import { createWorkerOptimizer } from '../src/train/update-kernel.ts';
import { Random } from '../src/util/random.ts';
import { integerListOption, integerOption } from './lib/args.ts';
import { type IsaLevel, parseIsaLevel, runUnderIsa } from './lib/isa-mask.ts';
import { int8WeightEncoding, loadAverage, machineInfo } from './lib/machine.ts';
import { formatBytes, peakRssBytes, procStatusBytes } from './lib/memory.ts';
import { type OrtProfile, profileOrtModel } from './lib/ort-profile.ts';
import { describePeerEnv, type PeerTuning, tunedPeerSlower, tunePytorchPeer } from './lib/peer-tuning.ts';
import { findTorchPython, JsonLineWorker } from './lib/python.ts';
import { randomBackbone, randomPixels } from './lib/random-vit.ts';
import { type BenchResult, writeBenchReport } from './lib/results.ts';
import { median, medianCoresBusy } from './lib/timing.ts';
import { type ViTFlops, vitFlopsPerImage, vitTokens } from './lib/vit-flops.ts';

const MODEL = 'vit-b16-224';
/** MeLo's adapter: rank 4, alpha 4, query and value, no dropout. */
const LORA: LoraConfig = {
  ...MELO_LORA_DEFAULTS,
  rank: 4,
  alpha: 4,
  dropout: 0,
  targets: ['query', 'value'],
};
const TARGET_PEER_RATIO = 1.5;
const LEARNING_RATE = 1e-4;
const WEIGHT_DECAY = 0.01;
/** Pause between contenders, so that one's spinning worker threads do not eat into the next one's time. */
const SETTLE_MS = 500;

const here = dirname(fileURLToPath(import.meta.url));
const TSX = join(here, '..', 'node_modules', '.bin', 'tsx');

type Method = 'lora' | 'full';
/**
 * melo fp32, melo with `--backbone-precision int8` (LoRA: the frozen backbone quantised once; full
 * fine-tuning: SwitchBack, the trained weights quantised in the graph at every step), and PyTorch twice:
 * with its defaults and tuned (bench/lib/peer-tuning.ts).
 */
type Engine = 'melo' | 'melo-int8' | 'pytorch' | 'pytorch-tuned';
/** The int8 LoRA step against the tuned PyTorch fp32 LoRA step: 2.5× with VNNI, 2× on AVX2 only. */
const INT8_TARGET = { vnni: 2.5, avx2: 2 } as const;
/** Full fine-tuning against the tuned PyTorch. */
const FULL_TARGET = 1.5;

/** Samples of timed steps, as both workers answer them. */
interface StepSamples {
  readonly forwardBackwardMs: number[];
  readonly optimizerMs: number[];
  readonly stepMs: number[];
  readonly cpuMs: number[];
  readonly loss: number | null;
}

/** A worker's first line: what it built and the memory that took. */
interface WorkerHello {
  readonly buildMs: number;
  readonly trainableParameters: number;
  /** Process peak RSS once the model, step and optimiser exist, before any step. */
  readonly peakRssBuildBytes: number;
  /** Whether the peak mark was reset after building (then peakRssStepsBytes is the steps' own peak). */
  readonly peakReset: boolean;
  /** Resident memory when the steps begin: the steps' peak minus this is what stepping adds. */
  readonly rssAfterBuildBytes: number | null;
  readonly [extra: string]: unknown;
}

/** A worker's last line. */
interface WorkerGoodbye {
  readonly peakRssBytes: number;
  readonly peakRssStepsBytes: number | null;
}

interface Options {
  threads: number;
  batch: number;
  classes: number;
  methods: Method[];
  rounds: number[];
  warmup: number;
  pytorch: boolean;
  profile: boolean;
  out: string;
  /** `--isa avx2`: rerun under the AVX2-only CPUID mask (bench/lib/isa-mask.ts); absent: as started. */
  isa: IsaLevel | undefined;
  worker: Method | undefined;
  /** In a melo worker: the backbone precision. */
  precision: 'fp32' | 'int8';
  /**
   * `--int8-grid full`: train through the int8 backbone on the full grid even where `melo train` would use
   * one whose pairs fit 16 bits (src/runtime/int8-kernels.ts), to compare them on the same machine;
   * 'auto': as `melo train`.
   */
  int8Grid: 'auto' | 'full';
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      threads: { type: 'string', default: '2' },
      batch: { type: 'string', default: '8' },
      classes: { type: 'string', default: '2' },
      methods: { type: 'string', default: 'lora,full' },
      rounds: { type: 'string', default: '5,5' },
      warmup: { type: 'string', default: '2' },
      'no-pytorch': { type: 'boolean', default: false },
      profile: { type: 'boolean', default: false },
      out: { type: 'string' },
      isa: { type: 'string' },
      worker: { type: 'string' },
      precision: { type: 'string', default: 'fp32' },
      'int8-grid': { type: 'string', default: 'auto' },
    },
  });
  const isa = values.isa === undefined ? undefined : parseIsaLevel(values.isa);
  const method = (text: string): Method => {
    if (text !== 'lora' && text !== 'full') throw new Error(`methods are 'lora' and 'full', got '${text}'`);
    return text;
  };
  const methods = values.methods.split(',').map(method);
  let rounds = integerListOption('rounds', values.rounds, 1);
  if (rounds.length === 1) rounds = methods.map(() => rounds[0]!);
  if (rounds.length < methods.length) throw new Error('--rounds needs one value or one per method');
  return {
    threads: integerOption('threads', values.threads, 1),
    batch: integerOption('batch', values.batch, 1),
    classes: integerOption('classes', values.classes, 2),
    methods,
    rounds: rounds.slice(0, methods.length),
    warmup: integerOption('warmup', values.warmup, 0),
    pytorch: !values['no-pytorch'],
    profile: values.profile,
    out: values.out ?? join(here, 'results', isa === 'avx2' ? 'train-avx2.json' : 'train.json'),
    isa,
    worker: values.worker === undefined ? undefined : method(values.worker),
    precision: values.precision === 'int8' ? 'int8' : 'fp32',
    int8Grid: int8GridOption(values['int8-grid']),
  };
}

function int8GridOption(text: string): 'auto' | 'full' {
  if (text !== 'auto' && text !== 'full') throw new Error(`--int8-grid: auto or full, not '${text}'`);
  return text;
}

/** The backbone a melo worker (or the profile) trains through: as `melo train` builds it, or `--int8-grid`. */
function benchBackbone(config: ViTConfig, options: Options, method: Method): Promise<Backbone> {
  const grid = options.int8Grid === 'full' ? { grid: INT8_GRID } : {};
  return trainingBackbone(randomBackbone(config, 1), options.precision, method, grid);
}

// ---------------------------------------------------------------------------------------------------------
// Peak memory of a phase (Linux): the kernel's peak-RSS mark can be reset to the current RSS, which splits
// a worker's peak into building (graph serialisation holds the weights twice) and stepping.

function resetPeakRss(): boolean {
  try {
    writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------------------
// The melo worker: `bench/train.ts --worker lora|full`, one JSON line per request on stdout.

/** The trainable tensors of a method, by graph input name: what `melo train` feeds its TrainStep. */
function trainableParameters(
  config: ViTConfig,
  backboneWeights: ReadonlyMap<string, HostTensor>,
  method: Method,
  classes: number,
): Map<string, HostTensor> {
  const labels = Array.from({ length: classes }, (_, i) => `class ${i}`);
  const adapter = initAdapter(config, LORA, { task: 'bench', taskType: 'multiclass', labels }, new Random(7));
  if (method === 'lora') return adapterFeeds(adapter);
  // Full fine-tuning trains every backbone weight and a fresh head; the checkpoint's own head is dropped.
  const parameters = adapterFeeds({ ...adapter, pairs: new Map() });
  for (const [name, tensor] of backboneWeights) if (!name.startsWith('head.')) parameters.set(name, tensor);
  return parameters;
}

async function meloWorker(method: Method, options: Options): Promise<void> {
  const start = performance.now();
  const config = vitConfig('base', { numClasses: 1000 });
  const backbone = await benchBackbone(config, options, method);
  const step = await TrainStep.create({
    backbone,
    method,
    ...(method === 'lora' ? { lora: LORA } : {}),
    numClasses: options.classes,
    batchSize: options.batch,
    loss: 'softmax',
    threads: options.threads,
  });
  const parameters = trainableParameters(config, backbone.weights, method, options.classes);
  // As in `melo train`: full fine-tuning updates on worker threads (WebAssembly), LoRA in this thread.
  const optimizerConfig = { kind: 'adamw', weightDecay: WEIGHT_DECAY } as const;
  const optimizer =
    method === 'full'
      ? await createWorkerOptimizer(optimizerConfig, parameters, options.threads)
      : createOptimizer(optimizerConfig);
  const targets = new Float32Array(options.batch * options.classes);
  for (let i = 0; i < options.batch; i++) targets[i * options.classes + (i % options.classes)] = 1;
  const batch = {
    pixels: randomPixels(config, options.batch, config.imageSize, 11),
    targets,
    sampleWeights: new Float32Array(options.batch).fill(1 / options.batch),
  };
  let trainable = 0;
  for (const tensor of parameters.values()) trainable += tensor.data.length;
  const hello: WorkerHello = {
    buildMs: performance.now() - start,
    trainableParameters: trainable,
    peakRssBuildBytes: peakRssBytes(),
    peakReset: resetPeakRss(),
    rssAfterBuildBytes: procStatusBytes('VmRSS'),
  };
  const say = (message: unknown) => process.stdout.write(`${JSON.stringify(message)}\n`);
  say(hello);

  const run = async (warmup: number, runs: number): Promise<StepSamples> => {
    const out: StepSamples = { forwardBackwardMs: [], optimizerMs: [], stepMs: [], cpuMs: [], loss: null };
    let loss: number | null = null;
    for (let i = 0; i < warmup + runs; i++) {
      const cpuStart = process.cpuUsage();
      const t0 = performance.now();
      const result = await step.run(batch, parameters);
      const t1 = performance.now();
      await optimizer.step(parameters, result.gradients, LEARNING_RATE);
      const t2 = performance.now();
      loss = result.loss;
      if (!Number.isFinite(loss)) throw new Error(`melo ${method} step produced a non-finite loss`);
      if (i < warmup) continue;
      const cpu = process.cpuUsage(cpuStart);
      out.forwardBackwardMs.push(t1 - t0);
      out.optimizerMs.push(t2 - t1);
      out.stepMs.push(t2 - t0);
      out.cpuMs.push((cpu.user + cpu.system) / 1e3);
    }
    return { ...out, loss };
  };

  for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const request = JSON.parse(line) as { warmup?: number; runs?: number };
    say(await run(request.warmup ?? 0, request.runs ?? 0));
  }
  const goodbye: WorkerGoodbye = {
    peakRssBytes: peakRssBytes(),
    peakRssStepsBytes: hello.peakReset ? procStatusBytes('VmHWM') : null,
  };
  say(goodbye);
  await step.release();
}

// ---------------------------------------------------------------------------------------------------------
// The parent: workers per method, interleaved rounds, report.

interface Contender {
  readonly engine: Engine;
  readonly worker: JsonLineWorker;
  readonly hello: WorkerHello;
  readonly samples: { forwardBackwardMs: number[]; optimizerMs: number[]; stepMs: number[]; cpuMs: number[] };
  lastLoss: number | null;
}

/** The step's shape, in the same flags for both workers. */
function stepArgs(options: Options): string[] {
  return [
    '--threads',
    String(options.threads),
    '--batch',
    String(options.batch),
    '--classes',
    String(options.classes),
  ];
}

async function startContender(engine: Engine, worker: JsonLineWorker): Promise<Contender> {
  const hello = (await worker.read()) as WorkerHello;
  return {
    engine,
    worker,
    hello,
    samples: { forwardBackwardMs: [], optimizerMs: [], stepMs: [], cpuMs: [] },
    lastLoss: null,
  };
}

async function sample(contender: Contender, warmup: number, runs: number): Promise<void> {
  const taken = (await contender.worker.request({ warmup, runs })) as StepSamples;
  contender.samples.forwardBackwardMs.push(...taken.forwardBackwardMs);
  contender.samples.optimizerMs.push(...taken.optimizerMs);
  contender.samples.stepMs.push(...taken.stepMs);
  contender.samples.cpuMs.push(...taken.cpuMs);
  contender.lastLoss = taken.loss;
}

/**
 * Matrix-product FLOPs of one training image, same convention as the forward count (2·M·N·K per product,
 * nothing else). Backward of Y = X·W costs one product of Y's size for dX and one for dW; both attention
 * products need two. LoRA trains no backbone weight, so its linears need only dX, and block 0's q/k/v not
 * even that (nothing trainable lies below them); the rank-4 branch itself (~0.2%) is left out. Full
 * fine-tuning needs dX and dW everywhere, and dW of the patch embedding (not its dX: pixels).
 */
function trainingFlopsPerImage(forward: ViTFlops, config: ViTConfig, method: Method): number {
  const linears = forward.attentionProjections + forward.mlp;
  const attention = forward.attentionScores + forward.attentionContext;
  const tokens = vitTokens(config);
  const firstBlockQkv = 3 * 2 * tokens * config.hiddenSize * config.hiddenSize;
  return method === 'lora'
    ? forward.total + linears - firstBlockQkv + 2 * attention + 2 * forward.head
    : forward.total + 2 * linears + 2 * attention + forward.patchEmbed + 2 * forward.head;
}

interface MethodRun {
  readonly method: Method;
  readonly contenders: Contender[];
  readonly goodbyes: Map<Engine, WorkerGoodbye>;
  readonly loadAverage: { start: number; rounds: number[]; end: number };
}

async function runMethod(
  method: Method,
  rounds: number,
  options: Options,
  python: string | undefined,
  tuning: PeerTuning | undefined,
): Promise<MethodRun> {
  const loadStart = loadAverage();
  const args = stepArgs(options);
  const meloWorkerOf = (precision: 'fp32' | 'int8') =>
    JsonLineWorker.start(TSX, fileURLToPath(import.meta.url), [
      '--worker',
      method,
      '--precision',
      precision,
      '--int8-grid',
      options.int8Grid,
      ...args,
    ]);
  const workers: Array<[Engine, JsonLineWorker]> = [['melo', meloWorkerOf('fp32')]];
  workers.push(['melo-int8', meloWorkerOf('int8')]);
  if (python && tuning) {
    for (const configuration of [tuning.default, tuning.tuned]) {
      workers.push([
        configuration.label === 'tuned' ? 'pytorch-tuned' : 'pytorch',
        JsonLineWorker.start(
          python,
          join(here, 'pytorch', 'vit_train.py'),
          ['--serve', '--method', method, ...args],
          configuration.env,
        ),
      ]);
    }
  }
  const contenders: Contender[] = [];
  try {
    // Built one after the other: building is memory- and CPU-heavy and not what is measured.
    for (const [engine, worker] of workers) {
      const contender = await startContender(engine, worker);
      contenders.push(contender);
      console.log(
        `${method}: ${engine} built in ${(contender.hello.buildMs / 1e3).toFixed(1)} s, ${contender.hello.trainableParameters.toLocaleString('en')} trainable parameters, peak RSS ${formatBytes(contender.hello.peakRssBuildBytes)} so far`,
      );
    }
    for (const contender of contenders) {
      await sleep(SETTLE_MS);
      await sample(contender, options.warmup, 0);
    }
    const loadPerRound: number[] = [];
    for (let round = 0; round < rounds; round++) {
      // Rotate the order so that neither engine always runs right after the other.
      for (let i = 0; i < contenders.length; i++) {
        const contender = contenders[(round + i) % contenders.length]!;
        await sleep(SETTLE_MS);
        await sample(contender, 0, 1);
      }
      loadPerRound.push(loadAverage());
      const last = contenders.map((c) => `${c.engine} ${(c.samples.stepMs.at(-1)! / 1e3).toFixed(1)} s`);
      console.log(
        `${method}: round ${round + 1}/${rounds}: ${last.join(', ')} (load ${loadPerRound.at(-1)})`,
      );
    }
    const goodbyes = new Map<Engine, WorkerGoodbye>();
    for (const contender of contenders)
      goodbyes.set(contender.engine, (await contender.worker.finish()) as WorkerGoodbye);
    return {
      method,
      contenders,
      goodbyes,
      loadAverage: { start: loadStart, rounds: loadPerRound, end: loadAverage() },
    };
  } catch (error) {
    for (const [, worker] of workers) worker.kill();
    throw error;
  }
}

function resultOf(run: MethodRun, contender: Contender, options: Options, trainFlops: number): BenchResult {
  const { samples, hello } = contender;
  const goodbye = run.goodbyes.get(contender.engine)!;
  const stepMs = median(samples.stepMs);
  const forwardBackwardMs = median(samples.forwardBackwardMs);
  const imagesPerSecond = options.batch / (stepMs / 1e3);
  const forwardBackwardImagesPerSecond = options.batch / (forwardBackwardMs / 1e3);
  return {
    name: contender.engine,
    model: MODEL,
    method: run.method,
    batch: options.batch,
    threads: options.threads,
    // The whole step, optimiser included: what compares like with like.
    imagesPerSecond,
    gflops: (trainFlops * imagesPerSecond) / 1e9,
    medianMsPerStep: stepMs,
    msPerImage: stepMs / options.batch,
    forwardBackward: {
      medianMsPerStep: forwardBackwardMs,
      imagesPerSecond: forwardBackwardImagesPerSecond,
      gflops: (trainFlops * forwardBackwardImagesPerSecond) / 1e9,
    },
    optimizer: { name: 'adamw', medianMs: median(samples.optimizerMs) },
    // Each configuration's own process: its peak over building and stepping, and the steps' alone.
    peakRssBytes: Math.max(hello.peakRssBuildBytes, goodbye.peakRssBytes),
    peakRssBuildBytes: hello.peakRssBuildBytes,
    peakRssStepsBytes: goodbye.peakRssStepsBytes,
    rssAfterBuildBytes: hello.rssAfterBuildBytes,
    trainableParameters: hello.trainableParameters,
    buildMs: hello.buildMs,
    lastLoss: contender.lastLoss,
    coresBusy: medianCoresBusy({ samplesMs: samples.stepMs, cpuMs: samples.cpuMs }),
    // Images per second of CPU time (all threads): less sensitive to other work than wall time, but it
    // also counts thread pools spinning while they wait, so it is a hint, not the measure.
    imagesPerCpuSecond: options.batch / (median(samples.cpuMs) / 1e3),
    loadAverage: run.loadAverage,
    samplesMs: samples.stepMs,
    forwardBackwardSamplesMs: samples.forwardBackwardMs,
    optimizerSamplesMs: samples.optimizerMs,
    cpuMs: samples.cpuMs,
  };
}

/**
 * Median over rounds of PyTorch's step time ÷ melo's in the same round. Both ran within seconds of each
 * other, so when the load changes between rounds this moves less than the ratio of the medians does.
 */
function pairedRatio(melo: BenchResult | undefined, peer: BenchResult | undefined): number | null {
  if (!melo || !peer) return null;
  const [mine, theirs] = [melo.samplesMs as number[], peer.samplesMs as number[]];
  const rounds = Math.min(mine.length, theirs.length);
  return rounds === 0 ? null : median(Array.from({ length: rounds }, (_, i) => theirs[i]! / mine[i]!));
}

const TABLE_HEADER = [
  'engine '.padEnd(8),
  'method',
  ' images/s',
  ' ms/image',
  '  fwd+bwd ms',
  ' AdamW ms',
  ' GFLOP/s',
  ' cores busy',
  '  peak RSS',
  ' steps RSS',
].join(' ');

function formatRow(r: BenchResult): string {
  const fb = r.forwardBackward as { medianMsPerStep: number };
  const busy = typeof r.coresBusy === 'number' ? r.coresBusy.toFixed(2) : '-';
  const stepsRss = typeof r.peakRssStepsBytes === 'number' ? formatBytes(r.peakRssStepsBytes) : '-';
  return [
    r.name.padEnd(8),
    String(r.method).padEnd(6),
    r.imagesPerSecond.toFixed(3).padStart(9),
    (r.msPerImage as number).toFixed(0).padStart(9),
    fb.medianMsPerStep.toFixed(0).padStart(12),
    (r.optimizer as { medianMs: number }).medianMs.toFixed(0).padStart(9),
    r.gflops.toFixed(1).padStart(8),
    busy.padStart(11),
    formatBytes(r.peakRssBytes as number).padStart(10),
    stepsRss.padStart(10),
  ].join(' ');
}

async function main(): Promise<void> {
  const options = parseOptions();
  if (options.isa) runUnderIsa(options.isa);
  if (options.worker) return meloWorker(options.worker, options);

  const machine = machineInfo();
  const flopsConfig = vitConfig('base', { numClasses: options.classes });
  // PyTorch (timm's layout) runs every block on every token; melo runs the last block for the CLS token
  // only (ViTGraph.forwardPooled), so each engine's GFLOP/s counts the products it actually computes.
  const forwardFlops = vitFlopsPerImage(flopsConfig);
  const meloForwardFlops = vitFlopsPerImage(flopsConfig, flopsConfig.imageSize, 'cls');
  const flopsOf = (engine: Engine, method: Method) =>
    trainingFlopsPerImage(engine.startsWith('melo') ? meloForwardFlops : forwardFlops, flopsConfig, method);
  console.log(
    `machine: ${machine.cpuModel}, ${machine.cores} cores, load average ${machine.loadAverageAtStart}`,
  );
  console.log(
    `node ${machine.node}, onnxruntime-node ${machine.onnxruntimeNode}, ${options.threads} threads, batch ${options.batch}, ${options.classes} classes`,
  );
  console.log(
    `${MODEL} training step, matrix products per image: ${options.methods.map((m) => `${m} ${(flopsOf('pytorch', m) / 1e9).toFixed(1)} GFLOP (melo ${(flopsOf('melo', m) / 1e9).toFixed(1)})`).join(', ')}; forward ${(forwardFlops.total / 1e9).toFixed(1)} (melo ${(meloForwardFlops.total / 1e9).toFixed(1)}: last block on the CLS token only)`,
  );
  if (machine.loadAverageAtStart > machine.cores / 2) {
    console.log(
      `note: the machine was busy at start (load ${machine.loadAverageAtStart}); absolute numbers will be low`,
    );
  }

  let python: string | undefined;
  let torchVersion: string | null = null;
  let peerNote: string | null = null;
  let tuning: PeerTuning | undefined;
  if (options.pytorch) {
    const search = findTorchPython();
    if (search.found) {
      python = search.found.python;
      torchVersion = search.found.torchVersion;
      console.log(`pytorch: ${python}, torch ${torchVersion}`);
      tuning = tunePytorchPeer(python, options.threads);
      console.log(
        `pytorch tuning probe: ${JSON.stringify(tuning.probe)}; tuned: ${JSON.stringify(describePeerEnv(tuning.tuned))}`,
      );
    } else {
      peerNote = `skipped: no Python with torch (${search.reasons.join('; ')})`;
    }
  } else {
    peerNote = 'skipped (--no-pytorch)';
  }
  if (peerNote) console.log(`pytorch: ${peerNote}`);

  const runs: MethodRun[] = [];
  for (const [index, method] of options.methods.entries()) {
    const run = await runMethod(method, options.rounds[index]!, options, python, tuning);
    const peer = run.contenders.find((c) => c.engine === 'pytorch');
    if (peer && peer.hello.forwardFlopsPerImage !== forwardFlops.total) {
      throw new Error(
        `FLOP counts disagree: formula ${forwardFlops.total}, PyTorch's traced shapes ${String(peer.hello.forwardFlopsPerImage)}`,
      );
    }
    runs.push(run);
  }

  const results = runs.flatMap((run) =>
    run.contenders.map((c) => resultOf(run, c, options, flopsOf(c.engine, run.method))),
  );
  const find = (engine: Engine, method: Method) =>
    results.find((r) => r.name === engine && r.method === method);
  const ratio = (a: number | undefined, b: number | undefined) =>
    a !== undefined && b !== undefined ? a / b : null;
  const fbRate = (r: BenchResult | undefined) =>
    (r?.forwardBackward as { imagesPerSecond: number } | undefined)?.imagesPerSecond;
  const [meloLora, meloFull, torchLora, torchFull] = [
    find('melo', 'lora'),
    find('melo', 'full'),
    find('pytorch', 'lora'),
    find('pytorch', 'full'),
  ];
  const loraRatio = ratio(meloLora?.imagesPerSecond, torchLora?.imagesPerSecond);
  const cpuRate = (r: BenchResult | undefined) => r?.imagesPerCpuSecond as number | undefined;
  const fullRatio = ratio(meloFull?.imagesPerSecond, torchFull?.imagesPerSecond);
  const loraPeak = meloLora?.peakRssBytes as number | undefined;
  const fullPeak = meloFull?.peakRssBytes as number | undefined;
  const memoryMet = loraPeak !== undefined && fullPeak !== undefined ? loraPeak < fullPeak : null;
  const vnni = machine.cpuFlags.includes('avx512_vnni') || machine.cpuFlags.includes('avx_vnni');
  const int8Target = vnni ? INT8_TARGET.vnni : INT8_TARGET.avx2;
  const [int8Lora, int8Full, tunedLora, tunedFull] = [
    find('melo-int8', 'lora'),
    find('melo-int8', 'full'),
    find('pytorch-tuned', 'lora'),
    find('pytorch-tuned', 'full'),
  ];
  const againstTuned = {
    meloLoraOverTunedPytorch: ratio(meloLora?.imagesPerSecond, tunedLora?.imagesPerSecond),
    int8LoraOverTunedPytorch: ratio(int8Lora?.imagesPerSecond, tunedLora?.imagesPerSecond),
    int8LoraOverDefaultPytorch: ratio(int8Lora?.imagesPerSecond, torchLora?.imagesPerSecond),
    int8LoraOverMeloLora: ratio(int8Lora?.imagesPerSecond, meloLora?.imagesPerSecond),
    meloFullOverTunedPytorch: ratio(meloFull?.imagesPerSecond, tunedFull?.imagesPerSecond),
    int8FullOverTunedPytorch: ratio(int8Full?.imagesPerSecond, tunedFull?.imagesPerSecond),
    int8FullOverDefaultPytorch: ratio(int8Full?.imagesPerSecond, torchFull?.imagesPerSecond),
    // The targets' ratios paired round by round as well: on a busy host the medians of the two sides can
    // come from rounds of different load (docs/benchmarks.md, the AVX2 rerun of 2026-12-08).
    int8LoraOverTunedPytorchPairedPerRound: pairedRatio(int8Lora, tunedLora),
    int8FullOverTunedPytorchPairedPerRound: pairedRatio(int8Full, tunedFull),
    int8Target: { value: int8Target, cpu: vnni ? 'VNNI' : 'AVX2 only' },
    fullTarget: FULL_TARGET,
    tunedPeerSlowerThanDefault: [
      tunedPeerSlower('LoRA step', tunedLora?.imagesPerSecond, torchLora?.imagesPerSecond),
      tunedPeerSlower('full step', tunedFull?.imagesPerSecond, torchFull?.imagesPerSecond),
    ].filter((line) => line !== undefined),
  };

  console.log(`\n${TABLE_HEADER}`);
  for (const r of results) console.log(formatRow(r));
  console.log('');
  console.log(
    loraRatio === null
      ? 'LoRA step, melo images/s ÷ PyTorch images/s: not measured'
      : `LoRA step (with AdamW), melo images/s ÷ PyTorch images/s: ${loraRatio.toFixed(2)}× (target ≥ ${TARGET_PEER_RATIO}×) ${loraRatio >= TARGET_PEER_RATIO ? 'MET' : 'MISSED'}; forward+backward alone ${ratio(fbRate(meloLora), fbRate(torchLora))?.toFixed(2)}×`,
  );
  if (loraRatio !== null)
    console.log(
      `  hints under load: per-round paired ratio ${pairedRatio(meloLora, torchLora)?.toFixed(2)}×, images per CPU-second ${ratio(cpuRate(meloLora), cpuRate(torchLora))?.toFixed(2)}×`,
    );
  if (fullRatio !== null)
    console.log(
      `full step (with AdamW), melo ÷ PyTorch: ${fullRatio.toFixed(2)}×; forward+backward alone ${ratio(fbRate(meloFull), fbRate(torchFull))?.toFixed(2)}×`,
    );
  const show = (value: number | null) => (value === null ? 'not measured' : `${value.toFixed(2)}×`);
  console.log(
    `against the tuned PyTorch: melo LoRA ${show(againstTuned.meloLoraOverTunedPytorch)}, int8 LoRA ${show(againstTuned.int8LoraOverTunedPytorch)} (target ≥ ${int8Target}× with ${againstTuned.int8Target.cpu}), full ${show(againstTuned.meloFullOverTunedPytorch)}, int8 full ${show(againstTuned.int8FullOverTunedPytorch)} (target ≥ ${FULL_TARGET}×); int8 LoRA ÷ default PyTorch ${show(againstTuned.int8LoraOverDefaultPytorch)}, ÷ melo fp32 ${show(againstTuned.int8LoraOverMeloLora)}`,
  );
  console.log(
    `  paired round by round: int8 LoRA ${show(againstTuned.int8LoraOverTunedPytorchPairedPerRound)}, int8 full ${show(againstTuned.int8FullOverTunedPytorchPairedPerRound)}`,
  );
  for (const line of againstTuned.tunedPeerSlowerThanDefault) console.log(`WARNING ${line}`);
  console.log(
    memoryMet === null
      ? 'peak memory, LoRA vs full: not measured (needs both methods)'
      : `melo peak RSS: LoRA ${formatBytes(loraPeak!)} vs full ${formatBytes(fullPeak!)}: LoRA ${memoryMet ? 'below' : 'NOT below'} full`,
  );
  const loadAtEnd = loadAverage();
  console.log(`load average: ${machine.loadAverageAtStart} at start, ${loadAtEnd} at end`);

  const profiles: Partial<Record<Method, OrtProfile>> = {};
  if (options.profile)
    for (const method of options.methods) {
      const profile = await profileStep(options, method);
      profiles[method] = profile;
      const kernelTotal = Object.values(profile.kernelMsByOp).reduce((a, b) => a + b, 0);
      console.log(
        `\nORT profile, ${options.precision} ${method} step at batch ${options.batch}: median run ${profile.medianRunMs.toFixed(0)} ms, ${kernelTotal.toFixed(0)} ms of kernels; kernel ms per run by op:`,
      );
      for (const [op, ms] of Object.entries(profile.kernelMsByOp))
        if (ms >= 0.5)
          console.log(
            `  ${op.padEnd(24)} ${ms.toFixed(1).padStart(8)}  ${((100 * ms) / kernelTotal).toFixed(1).padStart(5)}%`,
          );
      console.log('the 40 largest nodes, each summed over the blocks:');
      for (const [node, ms] of Object.entries(profile.kernelMsByNode))
        console.log(`  ${ms.toFixed(1).padStart(8)}  ${node}`);
    }

  await writeBenchReport(options.out, {
    results,
    ratios: {
      batch: options.batch,
      meloLoraOverPytorchLoraImagesPerSecond: {
        value: loraRatio,
        target: TARGET_PEER_RATIO,
        met: loraRatio !== null && loraRatio >= TARGET_PEER_RATIO,
        forwardBackwardOnly: ratio(fbRate(meloLora), fbRate(torchLora)),
        pairedPerRound: pairedRatio(meloLora, torchLora),
        perCpuSecond: ratio(cpuRate(meloLora), cpuRate(torchLora)),
      },
      meloFullOverPytorchFullImagesPerSecond: {
        value: fullRatio,
        forwardBackwardOnly: ratio(fbRate(meloFull), fbRate(torchFull)),
        pairedPerRound: pairedRatio(meloFull, torchFull),
        perCpuSecond: ratio(cpuRate(meloFull), cpuRate(torchFull)),
      },
      meloLoraPeakRssBelowFull: { lora: loraPeak ?? null, full: fullPeak ?? null, met: memoryMet },
      ...againstTuned,
    },
    peers: tuning
      ? {
          tuningProbe: tuning.probe,
          default: describePeerEnv(tuning.default),
          tuned: describePeerEnv(tuning.tuned),
        }
      : null,
    flopsPerImage: {
      forward: forwardFlops,
      training: Object.fromEntries(options.methods.map((m) => [m, flopsOf('pytorch', m)])),
      melo: {
        forward: meloForwardFlops,
        training: Object.fromEntries(options.methods.map((m) => [m, flopsOf('melo', m)])),
      },
    },
    environment: {
      ...machine,
      // Graphs on the full grid write their int8 weights this way; training multiplies on these grids
      // (src/runtime/int8-kernels.ts).
      int8WeightEncoding: await int8WeightEncoding(),
      int8FrozenBackboneTrainingGrid:
        options.int8Grid === 'full' ? INT8_GRID : await int8TrainingGrid('frozen'),
      int8TrainedBackboneTrainingGrid:
        options.int8Grid === 'full' ? INT8_GRID : await int8TrainingGrid('trained'),
      loadAverageAtEnd: loadAtEnd,
      torch: torchVersion,
      python: python ?? null,
      pytorchNote: peerNote,
    },
    method: {
      lora: LORA,
      classes: options.classes,
      loss: 'softmax cross-entropy, mean over the batch',
      optimizer: {
        kind: 'adamw',
        lr: LEARNING_RATE,
        weightDecay: WEIGHT_DECAY,
        noDecay: 'biases, norms, cls_token, pos_embed',
      },
      warmupSteps: options.warmup,
      rounds: Object.fromEntries(options.methods.map((m, i) => [m, options.rounds[i]])),
      settleMs: SETTLE_MS,
      statistic: 'median',
      processes: 'one per engine and method',
      profiled: options.profile,
    },
    profiles: options.profile ? profiles : null,
    date: new Date().toISOString(),
  });
  console.log(`wrote ${options.out}`);
}

main().catch((error: unknown) => {
  console.error(`bench:train failed: ${error instanceof Error ? error.message : String(error)}`);
  process.exitCode = 1;
});

/**
 * ORT's profile of one method's training step (the graph TrainStep runs, random weights of the real shapes),
 * in this process after the timed rounds: where a step's time goes, by op type and by node.
 */
async function profileStep(options: Options, method: Method): Promise<OrtProfile> {
  const config = vitConfig('base', { numClasses: 1000 });
  const backbone = await benchBackbone(config, options, method);
  const { graph } = buildTrainStepGraph({
    backbone,
    method,
    ...(method === 'lora' ? { lora: LORA } : {}),
    numClasses: options.classes,
    batchSize: options.batch,
    loss: 'softmax',
  });
  const feeds: Record<string, ort.Tensor> = {};
  for (const [name, tensor] of trainableParameters(config, backbone.weights, method, options.classes))
    feeds[name] = new ort.Tensor('float32', tensor.data, [...tensor.shape]);
  const [height, width] = config.imageSize;
  feeds.pixels = new ort.Tensor('float32', randomPixels(config, options.batch, config.imageSize, 5), [
    options.batch,
    config.channels,
    height,
    width,
  ]);
  const targets = new Float32Array(options.batch * options.classes);
  for (let i = 0; i < options.batch; i++) targets[i * options.classes + (i % options.classes)] = 1;
  feeds.targets = new ort.Tensor('float32', targets, [options.batch, options.classes]);
  feeds.sample_weights = new ort.Tensor('float32', new Float32Array(options.batch).fill(1 / options.batch), [
    options.batch,
  ]);
  return profileOrtModel(await serializeForThisCpu(graph), feeds, {
    threads: options.threads,
    warmup: 1,
    runs: 3,
  });
}
