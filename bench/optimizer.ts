/**
 * `npm run bench:optimizer`: one AdamW update of every ViT-B/16 full-fine-tuning parameter (85.8 M values,
 * the real tensor shapes), the way melo could run it:
 *
 * | contender | what runs |
 * |---|---|
 * | `in-thread` | the reference loop of src/train/optimizer.ts on the calling thread (float64 arithmetic) |
 * | `workers-N` | src/train/update-kernel.ts: WebAssembly (f64x2 SIMD) on N worker threads over shared memory, bit-identical to the reference; parameter and gradient copied in, parameter copied out, all timed |
 * | `ort-graph` | the same update as an ONNX Runtime graph of element-wise ops (float32 arithmetic, so not bit-identical) over the parameters as one flat tensor, N intra-op threads; output copy into JS timed |
 *
 * Contenders run one after the other (each allocates its own buffers, up to ~3 GB), 1 warm-up and then
 * --rounds timed updates each; the median is reported with CPU time and the load average before and after.
 * The ORT graph gets every parameter decayed alike (a per-parameter no-decay rule would cost it one more
 * input and product), which only favours it.
 *
 *   npm run bench:optimizer [-- --threads 2 --rounds 5 --out FILE]
 */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { GraphBuilder } from '../src/graph/builder.ts';
import { vitConfig } from '../src/model/vit-config.ts';
import { expectedWeightShapes } from '../src/model/weights.ts';
import { add, div, mul, sqrt, sub } from '../src/ops/elementwise.ts';
import { Session } from '../src/runtime/session.ts';
import { type HostTensor, numel } from '../src/tensor.ts';
import { createOptimizer, type Optimizer } from '../src/train/optimizer.ts';
import { createWorkerOptimizer } from '../src/train/update-kernel.ts';
import { Random } from '../src/util/random.ts';
import { integerOption } from './lib/args.ts';
import { loadAverage, machineInfo } from './lib/machine.ts';
import { writeBenchReport } from './lib/results.ts';
import { type Timing, timeRuns } from './lib/timing.ts';

const here = dirname(fileURLToPath(import.meta.url));
const LR = 1e-4;
const WEIGHT_DECAY = 0.01;

const { values } = parseArgs({
  options: {
    threads: { type: 'string', default: '2' },
    rounds: { type: 'string', default: '5' },
    out: { type: 'string', default: join(here, 'results', 'optimizer.json') },
  },
});
const threads = integerOption('threads', values.threads, 1);
const rounds = integerOption('rounds', values.rounds, 1);

/** ViT-B/16's backbone weights plus a 2-class head: what `melo train --method full` updates. */
function parameters(random: Random): { params: Map<string, HostTensor>; grads: Map<string, HostTensor> } {
  const shapes = new Map(expectedWeightShapes(vitConfig('base', { numClasses: 2 })));
  const params = new Map<string, HostTensor>();
  const grads = new Map<string, HostTensor>();
  for (const [name, shape] of shapes) {
    const p = new Float32Array(numel(shape));
    const g = new Float32Array(p.length);
    for (let i = 0; i < p.length; i++) {
      p[i] = random.uniform(-0.03, 0.03);
      g[i] = random.uniform(-1e-3, 1e-3);
    }
    params.set(name, { shape, data: p });
    grads.set(name, { shape, data: g });
  }
  return { params, grads };
}

async function timeOptimizer(
  optimizer: Optimizer,
  params: Map<string, HostTensor>,
  grads: Map<string, HostTensor>,
): Promise<Timing> {
  try {
    return await timeRuns(() => optimizer.step(params, grads, LR), { warmup: 1, iterations: rounds });
  } finally {
    await optimizer.close();
  }
}

/** AdamW over flat float32 tensors as ONNX element-wise ops; the step's scalars are inputs of shape [1]. */
async function timeOrtGraph(
  params: Map<string, HostTensor>,
  grads: Map<string, HostTensor>,
): Promise<Timing> {
  const count = [...params.values()].reduce((sum, t) => sum + t.data.length, 0);
  const flat = (tensors: Map<string, HostTensor>) => {
    const out = new Float32Array(count);
    let at = 0;
    for (const t of tensors.values()) {
      out.set(t.data, at);
      at += t.data.length;
    }
    return out;
  };
  const graph = new GraphBuilder('adamw');
  const [p, g, m, v] = ['p', 'g', 'm', 'v'].map((name) => graph.input(name, [count])) as [
    ReturnType<typeof graph.input>,
    ReturnType<typeof graph.input>,
    ReturnType<typeof graph.input>,
    ReturnType<typeof graph.input>,
  ];
  const scalar = (name: string) => graph.input(name, [1]);
  const [b1, k1, b2, k2, stepSize, ic2, eps, decay] = [
    'b1',
    'k1',
    'b2',
    'k2',
    'stepSize',
    'ic2',
    'eps',
    'decay',
  ].map(scalar) as ReturnType<typeof scalar>[];
  const m2 = add(mul(b1!, m), mul(k1!, g));
  const v2 = add(mul(b2!, v), mul(mul(k2!, g), g));
  const p2 = sub(mul(p, decay!), div(mul(stepSize!, m2), add(mul(sqrt(v2), ic2!), eps!)));
  graph.output(p2, 'p_out');
  graph.output(m2, 'm_out');
  graph.output(v2, 'v_out');
  const session = await Session.fromGraph(graph, { threads });
  const state: Record<'p' | 'g' | 'm' | 'v', Float32Array> = {
    p: flat(params),
    g: flat(grads),
    m: new Float32Array(count),
    v: new Float32Array(count),
  };
  let t = 0;
  const one = (value: number) => ({ shape: [1], data: Float32Array.of(value) });
  try {
    return await timeRuns(
      async () => {
        t += 1;
        const out = await session.run({
          p: { shape: [count], data: state.p },
          g: { shape: [count], data: state.g },
          m: { shape: [count], data: state.m },
          v: { shape: [count], data: state.v },
          b1: one(0.9),
          k1: one(0.1),
          b2: one(0.999),
          k2: one(0.001),
          stepSize: one(LR / (1 - 0.9 ** t)),
          ic2: one(1 / Math.sqrt(1 - 0.999 ** t)),
          eps: one(1e-8),
          decay: one(1 - LR * WEIGHT_DECAY),
        });
        state.p = out.p_out!.data;
        state.m = out.m_out!.data;
        state.v = out.v_out!.data;
      },
      { warmup: 1, iterations: rounds },
    );
  } finally {
    await session.release();
  }
}

const machine = machineInfo();
const { params, grads } = parameters(new Random(3));
const count = [...params.values()].reduce((sum, t) => sum + t.data.length, 0);
console.log(
  `AdamW over ${count.toLocaleString('en')} parameters, ${threads} threads, ${rounds} rounds, load ${machine.loadAverageAtStart}`,
);
const contenders: [string, () => Promise<Timing>][] = [
  [
    'in-thread',
    async () => timeOptimizer(createOptimizer({ kind: 'adamw', weightDecay: WEIGHT_DECAY }), params, grads),
  ],
  ...[1, threads]
    .filter((n, i, all) => all.indexOf(n) === i)
    .map(
      (n) =>
        [
          `workers-${n}`,
          async () =>
            timeOptimizer(
              await createWorkerOptimizer({ kind: 'adamw', weightDecay: WEIGHT_DECAY }, params, n),
              params,
              grads,
            ),
        ] as [string, () => Promise<Timing>],
    ),
  ['ort-graph', () => timeOrtGraph(params, grads)],
];
const results = [];
for (const [name, run] of contenders) {
  const loadBefore = loadAverage();
  const timing = await run();
  const cpuMs = timing.cpuMs.slice().sort((a, b) => a - b)[timing.cpuMs.length >> 1]!;
  console.log(
    `${name.padEnd(12)} median ${timing.medianMs.toFixed(0).padStart(6)} ms  (min ${timing.minMs.toFixed(0)}, max ${timing.maxMs.toFixed(0)})  cpu ${cpuMs.toFixed(0)} ms  load ${loadBefore}`,
  );
  results.push({
    name,
    model: 'vit_base_patch16_224 full fine-tuning parameters',
    parameters: count,
    batch: 0,
    threads: name === 'in-thread' ? 1 : name === 'workers-1' ? 1 : threads,
    imagesPerSecond: 0,
    gflops: 0,
    medianMs: timing.medianMs,
    samplesMs: timing.samplesMs,
    cpuMs: timing.cpuMs,
    loadAverageBefore: loadBefore,
  });
}
await writeBenchReport(values.out, {
  date: new Date().toISOString(),
  machine,
  loadAverageAtEnd: loadAverage(),
  optimizer: { kind: 'adamw', lr: LR, weightDecay: WEIGHT_DECAY },
  results,
});
console.log(`wrote ${values.out}`);
