/**
 * `npm run bench:infer`: ViT-B/16 inference at 224 px, batch 1 and 8, against two references measured in
 * the same run: a raw ORT MatMul of the ViT's main shape (the ceiling for a graph made of such products)
 * and the same ViT in PyTorch (the peer). The three are timed in interleaved rounds, so that other work on
 * the machine slows all of them alike instead of skewing the ratios. Writes bench/results/infer.json.
 *
 *   npm run bench:infer [-- --threads 2 --batches 1,8 --rounds 15,9 --warmup 2 --no-pytorch --profile --out FILE
 *                          --isa avx2]
 *   --isa avx2 reruns everything (melo and the peer) with CPUID showing an AVX2-only CPU (bench/lib/isa-mask.ts)
 *   and writes bench/results/infer-avx2.json.
 *   --profile adds ORT's per-op profile of the batch-8 forward and the optimised graph's op counts.
 *   MELO_PYTHON=/path/to/python   interpreter with torch for the peer (else /usr/bin/python3, then python3)
 */

import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import ort from 'onnxruntime-node';
import type { Backbone } from '../src/checkpoints/load.ts';
import { GraphBuilder } from '../src/graph/builder.ts';
import { withPrecision } from '../src/model/backbone.ts';
import { buildClassifierGraph } from '../src/model/classifier-graph.ts';
import { BackboneClassifier } from '../src/model/inference.ts';
import { type ViTConfig, vitConfig } from '../src/model/vit-config.ts';
import { matmul } from '../src/ops/matmul.ts';
import { slice } from '../src/ops/shape.ts';
import { defaultMicroBatch } from '../src/runtime/micro-batch.ts';
import { Session, serializeForThisCpu } from '../src/runtime/session.ts';
import type { HostTensor } from '../src/tensor.ts';
import { Random } from '../src/util/random.ts';
import { integerListOption, integerOption } from './lib/args.ts';
import { type IsaLevel, parseIsaLevel, runUnderIsa } from './lib/isa-mask.ts';
import { int8WeightEncoding, loadAverage, machineInfo } from './lib/machine.ts';
import { formatBytes, peakRssBytes } from './lib/memory.ts';
import { type OrtProfile, profileOrtModel } from './lib/ort-profile.ts';
import {
  describePeerEnv,
  type PeerConfiguration,
  type PeerTuning,
  tunedPeerSlower,
  tunePytorchPeer,
} from './lib/peer-tuning.ts';
import { findTorchPython, JsonLineWorker } from './lib/python.ts';
import { randomBackbone, randomPixels } from './lib/random-vit.ts';
import { type BenchResult, writeBenchReport } from './lib/results.ts';
import { median, medianCoresBusy, type Timing, timeRuns } from './lib/timing.ts';
import { vitFlopsPerImage, vitTokens } from './lib/vit-flops.ts';

const MODEL = 'vit-b16-224';
const TARGETS = { batch: 8, ceilingRatio: 0.85, peerRatio: 1.6 } as const;
/** int8 inference against the tuned PyTorch fp32 peer: 3× with AVX-512 VNNI or AVX-VNNI, 2× on AVX2 only. */
const INT8_TARGET = { vnni: 3, avx2: 2 } as const;
/** Pause between contenders so that one's spinning worker threads do not eat into the next one's time. */
const SETTLE_MS = 250;
/** The ceiling product is ~45 ms at batch 8; several runs per round give it as many samples as the rest. */
const MATMUL_RUNS_PER_ROUND = 3;

const here = dirname(fileURLToPath(import.meta.url));

type ContenderName = 'melo' | 'melo-whole-batch' | 'melo-int8' | 'ort-matmul' | 'pytorch' | 'pytorch-tuned';

/** Wall and CPU milliseconds of timed runs. */
type Samples = Pick<Timing, 'samplesMs' | 'cpuMs'>;

/** Something timed once per round: `sample` returns wall and CPU milliseconds of `runs` timed runs. */
interface Contender {
  readonly name: ContenderName;
  warmup(batch: number, runs: number): Promise<void>;
  sample(batch: number, runs: number): Promise<Samples>;
  close(): Promise<void>;
}

interface Options {
  threads: number;
  batches: number[];
  rounds: number[];
  warmup: number;
  pytorch: boolean;
  profile: boolean;
  out: string;
  /** `--isa avx2`: rerun under the AVX2-only CPUID mask (bench/lib/isa-mask.ts); absent: as started. */
  isa: IsaLevel | undefined;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      threads: { type: 'string', default: '2' },
      batches: { type: 'string', default: '1,8' },
      rounds: { type: 'string', default: '15,9' },
      warmup: { type: 'string', default: '2' },
      'no-pytorch': { type: 'boolean', default: false },
      profile: { type: 'boolean', default: false },
      out: { type: 'string' },
      isa: { type: 'string' },
    },
  });
  const isa = values.isa === undefined ? undefined : parseIsaLevel(values.isa);
  const batches = integerListOption('batches', values.batches, 1);
  let rounds = integerListOption('rounds', values.rounds, 1);
  if (rounds.length === 1) rounds = batches.map(() => rounds[0]!);
  if (rounds.length !== batches.length) throw new Error('--rounds needs one value or one per batch size');
  return {
    threads: integerOption('threads', values.threads, 1),
    batches,
    rounds,
    warmup: integerOption('warmup', values.warmup, 0),
    pytorch: !values['no-pytorch'],
    profile: values.profile,
    out: values.out ?? join(here, 'results', isa === 'avx2' ? 'infer-avx2.json' : 'infer.json'),
    isa,
  };
}

/**
 * melo's real inference path: BackboneClassifier over random weights of the real shapes, with its default
 * micro-batching ('melo') or with the whole batch in one ORT run ('melo-whole-batch').
 */
async function meloContender(
  backbone: Backbone,
  threads: number,
  name: 'melo' | 'melo-whole-batch' | 'melo-int8' = 'melo',
): Promise<Contender & { buildMs: number }> {
  const config = backbone.config;
  const start = performance.now();
  const classifier = await BackboneClassifier.create(
    name === 'melo-int8' ? withPrecision(backbone, 'int8') : backbone,
    {
      threads,
      ...(name === 'melo-whole-batch' ? { microBatch: Number.POSITIVE_INFINITY } : {}),
    },
  );
  const buildMs = performance.now() - start;
  const pixels = new Map<number, Float32Array>();
  const run = async (batch: number) => {
    if (!pixels.has(batch)) pixels.set(batch, randomPixels(config, batch, config.imageSize, 100 + batch));
    const { logits } = await classifier.run(pixels.get(batch)!, batch);
    if (!logits || logits.data.length !== batch * config.numClasses || !logits.data.every(Number.isFinite)) {
      throw new Error(`melo produced missing, misshapen or non-finite logits at batch ${batch}`);
    }
  };
  return {
    name,
    buildMs,
    warmup: async (batch, runs) => void (await timeRuns(() => run(batch), { warmup: runs, iterations: 1 })),
    sample: async (batch, runs) => timeRuns(() => run(batch), { warmup: 0, iterations: runs }),
    close: () => classifier.release(),
  };
}

/**
 * The ceiling: one MatMul [tokens·batch, D]·[D, F] (the MLP fc1, the ViT's largest product) with the weight
 * as an initializer, through melo's own Session so the session options are exactly the model's. A 1×1
 * Slice of the product is the graph output.
 */
async function ortMatMulContender(
  config: ViTConfig,
  batches: readonly number[],
  threads: number,
): Promise<Contender> {
  const random = new Random(0x6d61746d);
  const uniform = (shape: [number, number]): HostTensor => {
    const data = new Float32Array(shape[0] * shape[1]);
    for (let i = 0; i < data.length; i++) data[i] = random.uniform(-1, 1);
    return { shape, data };
  };
  const weight = uniform([config.hiddenSize, config.mlpSize]);
  const sessions = new Map<number, { session: Session; input: HostTensor }>();
  for (const batch of batches) {
    const rows = vitTokens(config) * batch;
    const graph = new GraphBuilder('ort-matmul-ceiling');
    const x = graph.input('x', [rows, config.hiddenSize]);
    // Only one element leaves the graph: returning the whole [rows, F] product would time a 19 MB copy
    // into JS as well, which the model (whose outputs are tiny) never pays.
    graph.output(slice(matmul(x, graph.initializer('w', weight)), [0, 0], [1, 1], [0, 1]), 'y');
    sessions.set(batch, {
      session: await Session.fromGraph(graph, { threads }),
      input: uniform([rows, config.hiddenSize]),
    });
  }
  const run = (batch: number) => {
    const { session, input } = sessions.get(batch)!;
    return session.run({ x: input });
  };
  return {
    name: 'ort-matmul',
    warmup: async (batch, runs) => void (await timeRuns(() => run(batch), { warmup: runs, iterations: 1 })),
    sample: async (batch, runs) =>
      timeRuns(() => run(batch), { warmup: 0, iterations: runs * MATMUL_RUNS_PER_ROUND }),
    close: async () => {
      for (const { session } of sessions.values()) await session.release();
    },
  };
}

interface PeerInfo {
  torch: string;
  python: string;
  threads: number;
  flopsPerImage: number;
  interpreter: string;
  worker: JsonLineWorker;
  configuration: PeerConfiguration;
}

/** The PyTorch peer as a long-lived worker (bench/pytorch/vit_infer.py --serve), or why there is none. */
async function startPeer(
  python: string,
  threads: number,
  configuration: PeerConfiguration,
): Promise<PeerInfo> {
  const worker = JsonLineWorker.start(
    python,
    join(here, 'pytorch', 'vit_infer.py'),
    ['--serve', '--threads', String(threads)],
    configuration.env,
  );
  const hello = (await worker.read()) as Omit<PeerInfo, 'worker' | 'interpreter' | 'configuration'>;
  return { ...hello, interpreter: python, worker, configuration };
}

function peerContender(peer: PeerInfo): Contender {
  const request = async (batch: number, warmup: number, runs: number) =>
    (await peer.worker.request({ batch, warmup, runs })) as Samples;
  return {
    name: peer.configuration.label === 'tuned' ? 'pytorch-tuned' : 'pytorch',
    warmup: async (batch, runs) => void (await request(batch, runs, 0)),
    sample: (batch, runs) => request(batch, 0, runs),
    close: async () => undefined,
  };
}

const TABLE_HEADER = ['name'.padEnd(17), 'batch', ' images/s', ' GFLOP/s', '  ms/batch', ' cores busy'].join(
  ' ',
);

/**
 * The graph BackboneClassifier.create builds (the classifier recipe with the checkpoint's head), profiled
 * by ORT at `batch`: which ops take the time and which fusions ORT applied.
 */
async function profileMelo(backbone: Backbone, batch: number, threads: number): Promise<OrtProfile> {
  const graph = new GraphBuilder('melo-backbone');
  const { features, logits } = buildClassifierGraph(graph, {
    backbone,
    batch: 'batch',
    lora: { kind: 'none' },
    head: { kind: 'checkpoint' },
  });
  graph.output(features, 'features');
  graph.output(logits!, 'logits');
  const [height, width] = backbone.config.imageSize;
  const pixels = randomPixels(backbone.config, batch, backbone.config.imageSize, 100 + batch);
  const feeds = {
    pixels: new ort.Tensor('float32', pixels, [batch, backbone.config.channels, height, width]),
  };
  return profileOrtModel(await serializeForThisCpu(graph), feeds, { threads, warmup: 2, runs: 5 });
}

function formatRow(r: BenchResult): string {
  const msPerBatch = (r.batch / r.imagesPerSecond) * 1e3;
  const busy = typeof r.coresBusy === 'number' ? r.coresBusy.toFixed(2) : '-';
  return [
    r.name.padEnd(17),
    String(r.batch).padStart(5),
    r.imagesPerSecond.toFixed(2).padStart(9),
    r.gflops.toFixed(1).padStart(8),
    msPerBatch.toFixed(1).padStart(10),
    busy.padStart(11),
  ].join(' ');
}

async function main(): Promise<void> {
  const options = parseOptions();
  if (options.isa) runUnderIsa(options.isa);
  const machine = machineInfo();
  const config = vitConfig('base', { numClasses: 1000 });
  // PyTorch (timm's layout) runs the last block on every token; melo on the CLS token only
  // (ViTGraph.forwardPooled). Each engine's GFLOP/s counts the products it actually computes.
  const flops = vitFlopsPerImage(config);
  const meloFlops = vitFlopsPerImage(config, config.imageSize, 'cls');
  const tokens = vitTokens(config);
  console.log(
    `machine: ${machine.cpuModel}, ${machine.cores} cores, load average ${machine.loadAverageAtStart}`,
  );
  console.log(
    `node ${machine.node}, onnxruntime-node ${machine.onnxruntimeNode}, ${options.threads} threads`,
  );
  console.log(
    `${MODEL}: ${(flops.total / 1e9).toFixed(2)} GFLOP of matrix products per image (melo ${(meloFlops.total / 1e9).toFixed(2)}: last block on the CLS token only)`,
  );
  const tuning = Object.entries(machine.threadEnvironment).map(([name, value]) => `${name}=${value}`);
  if (tuning.length > 0) console.log(`thread environment: ${tuning.join(' ')}`);
  if (machine.schedulerGroup && !machine.schedulerGroup.endsWith('nice 0')) {
    console.log(`scheduler group: ${machine.schedulerGroup}`);
  }
  if (machine.loadAverageAtStart > machine.cores / 2) {
    console.log(
      `note: the machine was busy at start (load ${machine.loadAverageAtStart}); absolute numbers will be low`,
    );
  }

  let peerNote: string | undefined;
  const peers: PeerInfo[] = [];
  let peerTuning: PeerTuning | undefined;
  if (options.pytorch) {
    const search = findTorchPython();
    if (!search.found) peerNote = `skipped: no Python with torch (${search.reasons.join('; ')})`;
    else {
      // The peer twice, with its defaults and tuned (bench/lib/peer-tuning.ts): ratios mean something only
      // against the best-configured peer.
      peerTuning = tunePytorchPeer(search.found.python, options.threads);
      console.log(`pytorch tuning probe: ${JSON.stringify(peerTuning.probe)}`);
      for (const configuration of [peerTuning.default, peerTuning.tuned]) {
        const peer = await startPeer(search.found.python, options.threads, configuration);
        peers.push(peer);
        if (peer.flopsPerImage !== flops.total) {
          for (const started of peers) started.worker.kill();
          throw new Error(
            `FLOP counts disagree: formula ${flops.total}, PyTorch's traced shapes ${peer.flopsPerImage}`,
          );
        }
        console.log(
          `pytorch (${configuration.label}: ${JSON.stringify(describePeerEnv(configuration))}): ${peer.interpreter}, torch ${peer.torch}, ${peer.threads} threads`,
        );
      }
    }
  } else {
    peerNote = 'skipped (--no-pytorch)';
  }
  const peer = peers[0];
  if (peerNote) console.log(`pytorch: ${peerNote}`);

  const backbone = randomBackbone(config, 1);
  const melo = await meloContender(backbone, options.threads);
  console.log(
    `melo: graph built and session created in ${(melo.buildMs / 1e3).toFixed(1)} s; micro-batches of ${defaultMicroBatch()} images`,
  );
  const contenders: Contender[] = [melo, await ortMatMulContender(config, options.batches, options.threads)];
  if (options.batches.some((batch) => batch > defaultMicroBatch()))
    contenders.push(await meloContender(backbone, options.threads, 'melo-whole-batch'));
  contenders.push(await meloContender(backbone, options.threads, 'melo-int8'));
  for (const started of peers) contenders.push(peerContender(started));

  const samples = new Map<string, { samplesMs: number[]; cpuMs: number[] }>();
  const key = (name: ContenderName, batch: number) => `${name}@${batch}`;
  const pool = (name: ContenderName, batch: number) => {
    const existing = samples.get(key(name, batch));
    if (existing) return existing;
    const created = { samplesMs: [] as number[], cpuMs: [] as number[] };
    samples.set(key(name, batch), created);
    return created;
  };
  try {
    for (const [index, batch] of options.batches.entries()) {
      for (const contender of contenders) {
        await sleep(SETTLE_MS);
        await contender.warmup(batch, options.warmup);
      }
      const rounds = options.rounds[index]!;
      for (let round = 0; round < rounds; round++) {
        // Rotate the order so that no contender always runs right after the same neighbour.
        for (let i = 0; i < contenders.length; i++) {
          const contender = contenders[(round + i) % contenders.length]!;
          await sleep(SETTLE_MS);
          const taken = await contender.sample(batch, 1);
          const into = pool(contender.name, batch);
          into.samplesMs.push(...taken.samplesMs);
          into.cpuMs.push(...taken.cpuMs);
        }
        if (process.stdout.isTTY) process.stdout.write(`\rbatch ${batch}: round ${round + 1}/${rounds}`);
      }
      const done = (name: ContenderName) => `${name} ${median(pool(name, batch).samplesMs).toFixed(1)} ms`;
      const line = `batch ${batch}: ${rounds} rounds, medians ${contenders.map((c) => done(c.name)).join(', ')}`;
      console.log(process.stdout.isTTY ? `\r${line}` : line);
    }
  } finally {
    for (const contender of contenders) await contender.close();
  }
  const peerSummaries = await Promise.all(
    peers.map(async (started) => (await started.worker.finish()) as { peakRssBytes: number }),
  );
  const peerSummary = peerSummaries[0];

  const results: BenchResult[] = [];
  for (const batch of options.batches) {
    for (const contender of contenders) {
      const taken = pool(contender.name, batch);
      const medianMs = median(taken.samplesMs);
      const common = { name: contender.name, model: MODEL, batch, threads: options.threads };
      // CPU time ÷ wall time: ≈ threads when the run had its cores, lower when other work took them.
      const measured = { coresBusy: medianCoresBusy(taken), samplesMs: taken.samplesMs, cpuMs: taken.cpuMs };
      if (contender.name === 'ort-matmul') {
        const shape = { m: tokens * batch, k: config.hiddenSize, n: config.mlpSize };
        const gflops = (2 * shape.m * shape.k * shape.n) / (medianMs / 1e3) / 1e9;
        // Images/s melo's ViT graph would reach if every one of its FLOPs ran at this product's rate.
        const imagesPerSecond = (gflops * 1e9) / meloFlops.total;
        results.push({
          ...common,
          imagesPerSecond,
          gflops,
          matmulShape: shape,
          medianMsPerMatMul: medianMs,
          ...measured,
        });
      } else {
        const imagesPerSecond = batch / (medianMs / 1e3);
        const gflops =
          ((contender.name.startsWith('pytorch') ? flops : meloFlops).total * imagesPerSecond) / 1e9;
        results.push({ ...common, imagesPerSecond, gflops, medianMsPerBatch: medianMs, ...measured });
      }
    }
  }

  const find = (name: ContenderName) => results.find((r) => r.name === name && r.batch === TARGETS.batch);
  const [meloAt, ceilingAt, peerAt] = [find('melo'), find('ort-matmul'), find('pytorch')];
  const ceilingRatio = meloAt && ceilingAt ? meloAt.gflops / ceilingAt.gflops : null;
  const peerRatio = meloAt && peerAt ? meloAt.imagesPerSecond / peerAt.imagesPerSecond : null;
  const [int8At, tunedAt] = [find('melo-int8'), find('pytorch-tuned')];
  const over = (a: BenchResult | undefined, b: BenchResult | undefined) =>
    a && b ? a.imagesPerSecond / b.imagesPerSecond : null;
  const vnni = machine.cpuFlags.includes('avx512_vnni') || machine.cpuFlags.includes('avx_vnni');
  const int8Target = vnni ? INT8_TARGET.vnni : INT8_TARGET.avx2;
  const againstTuned = {
    meloOverTunedPytorch: over(meloAt, tunedAt),
    int8OverTunedPytorch: over(int8At, tunedAt),
    int8OverDefaultPytorch: over(int8At, peerAt),
    int8OverMelo: over(int8At, meloAt),
    int8Target: { value: int8Target, cpu: vnni ? 'VNNI' : 'AVX2 only' },
    tunedPeerSlowerThanDefault: [
      tunedPeerSlower(`batch ${TARGETS.batch}`, tunedAt?.imagesPerSecond, peerAt?.imagesPerSecond),
    ].filter((line) => line !== undefined),
  };

  console.log(`\n${TABLE_HEADER}`);
  for (const r of results) console.log(formatRow(r));
  console.log('');
  const verdict = (label: string, ratio: number | null, target: number, unit: string) =>
    console.log(
      ratio === null
        ? `${label}: not measured`
        : `${label}: ${ratio.toFixed(2)}${unit} (target ≥ ${target}${unit}) ${ratio >= target ? 'MET' : 'MISSED'}`,
    );
  verdict(
    `batch ${TARGETS.batch}, melo GFLOP/s ÷ ORT MatMul GFLOP/s`,
    ceilingRatio,
    TARGETS.ceilingRatio,
    '',
  );
  verdict(`batch ${TARGETS.batch}, melo images/s ÷ PyTorch images/s`, peerRatio, TARGETS.peerRatio, '×');
  verdict(
    `batch ${TARGETS.batch}, melo int8 images/s ÷ tuned PyTorch fp32 (${againstTuned.int8Target.cpu})`,
    againstTuned.int8OverTunedPytorch,
    int8Target,
    '×',
  );
  console.log(
    `batch ${TARGETS.batch}: melo fp32 ÷ tuned PyTorch ${againstTuned.meloOverTunedPytorch?.toFixed(2) ?? '-'}×, int8 ÷ default PyTorch ${againstTuned.int8OverDefaultPytorch?.toFixed(2) ?? '-'}×, int8 ÷ melo fp32 ${againstTuned.int8OverMelo?.toFixed(2) ?? '-'}×`,
  );
  for (const line of againstTuned.tunedPeerSlowerThanDefault) console.log(`WARNING ${line}`);
  const loadAtEnd = loadAverage();
  console.log(`load average: ${machine.loadAverageAtStart} at start, ${loadAtEnd} at end`);
  console.log(
    `peak RSS: melo process ${formatBytes(peakRssBytes())}${peerSummary ? `, PyTorch ${formatBytes(peerSummary.peakRssBytes)}` : ''}`,
  );

  let profile: OrtProfile | undefined;
  if (options.profile) {
    profile = await profileMelo(backbone, TARGETS.batch, options.threads);
    console.log(
      `\nORT profile, batch ${TARGETS.batch}: median run ${profile.medianRunMs.toFixed(0)} ms; kernel ms per run by op:`,
    );
    const kernelTotal = Object.values(profile.kernelMsByOp).reduce((a, b) => a + b, 0);
    for (const [op, ms] of Object.entries(profile.kernelMsByOp)) {
      if (ms >= 0.5)
        console.log(
          `  ${op.padEnd(24)} ${ms.toFixed(1).padStart(8)}  ${((100 * ms) / kernelTotal).toFixed(1).padStart(5)}%`,
        );
    }
    const ops = Object.entries(profile.optimizedOps).map(([op, count]) => `${op} ${count}`);
    console.log(`optimised graph: ${ops.join(', ')}`);
  }

  await writeBenchReport(options.out, {
    results,
    ratios: {
      batch: TARGETS.batch,
      meloOverOrtMatMulGflops: {
        value: ceilingRatio,
        target: TARGETS.ceilingRatio,
        met: ceilingRatio !== null && ceilingRatio >= TARGETS.ceilingRatio,
      },
      meloOverPytorchImagesPerSecond: {
        value: peerRatio,
        target: TARGETS.peerRatio,
        met: peerRatio !== null && peerRatio >= TARGETS.peerRatio,
      },
      ...againstTuned,
      int8Met: againstTuned.int8OverTunedPytorch !== null && againstTuned.int8OverTunedPytorch >= int8Target,
    },
    peers: {
      tuningProbe: peerTuning?.probe ?? null,
      configurations: peers.map((started, i) => ({
        name: started.configuration.label === 'tuned' ? 'pytorch-tuned' : 'pytorch',
        env: describePeerEnv(started.configuration),
        peakRssBytes: peerSummaries[i]?.peakRssBytes ?? null,
      })),
    },
    flopsPerImage: flops,
    meloFlopsPerImage: meloFlops,
    environment: {
      ...machine,
      int8WeightEncoding: await int8WeightEncoding(),
      loadAverageAtEnd: loadAtEnd,
      torch: peer?.torch ?? null,
      python: peer ? `${peer.interpreter} (${peer.python})` : null,
      pytorchNote: peerNote ?? null,
      peakRssBytes: { meloProcess: peakRssBytes(), pytorch: peerSummary?.peakRssBytes ?? null },
    },
    method: {
      warmupRuns: options.warmup,
      rounds: Object.fromEntries(options.batches.map((batch, i) => [batch, options.rounds[i]])),
      matmulRunsPerRound: MATMUL_RUNS_PER_ROUND,
      settleMs: SETTLE_MS,
      statistic: 'median',
      meloSessionBuildMs: melo.buildMs,
      meloMicroBatch: defaultMicroBatch(),
    },
    profileBatch8: profile ?? null,
    date: new Date().toISOString(),
  });
  console.log(`wrote ${options.out}`);
}

main().catch((error: unknown) => {
  console.error(`bench:infer failed: ${error instanceof Error ? error.message : String(error)}`);
  process.exitCode = 1;
});
