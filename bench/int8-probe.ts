/**
 * `npx tsx bench/int8-probe.ts`: which ONNX formulation of an int8 matrix product is fastest on this CPU
 * with onnxruntime-node, for the products of a ViT-B/16 forward (X [rows, K] fp32 activations times a
 * frozen weight W [K, N]), and what ORT actually runs for each (its profile: op types after its graph
 * optimisations, kernel time per op). Weights are quantised per output channel (symmetric int8, one scale
 * per column of W) except for MatMulNBits, whose scales are per block of `block` rows of each column.
 *
 * | formulation | graph |
 * |---|---|
 * | `fp32` | MatMul(X, W) — melo today |
 * | `qdq-std` | DynamicQuantizeLinear(X) → MatMulInteger(Xq, Wq, x_zp, 0) → Cast → Mul(x_scale·w_scale[N]), standard ops only |
 * | `dq-matmul` | com.microsoft DynamicQuantizeMatMul(X, Wq, w_scale[N]) |
 * | `dql-itf` | DynamicQuantizeLinear(X) → com.microsoft MatMulIntegerToFloat(Xq, Wq, x_scale, w_scale[N], x_zp) |
 * | `row-s8`, `row-u8` | row-wise symmetric scales for X (ReduceMax(Abs) per row, Round, Cast to int8, or shifted by 128 to uint8) → MatMulInteger → Cast → Mul(row scale) → Mul(w_scale[N]): SwitchBack's quantisation |
 * | `row-ql` | the row-wise scales with QuantizeLinear / DequantizeLinear per row (axis 0) in place of Div, Round, +128, Cast and Cast, Mul |
 * | `dq-matmul-u8w`, `row-ql-u8w` | `dq-matmul` and `row-ql` with the weight written as uint8 + 128 (zero point 128): ORT's u8·u8 kernels, which melo uses where the u8·s8 one saturates (AVX2 without VNNI, src/runtime/int8-kernels.ts) |
 * | `nbits8-bB` | com.microsoft MatMulNBits(X, W as 8-bit blocks of B rows, accuracy_level 4 = int8 compute) |
 *
 * Each product's output is sliced to [1, 1] inside the graph (as bench:infer's ceiling does) so that a
 * 10–20 MB copy into JS is not timed. Formulations of one shape are timed in interleaved rounds. Accuracy:
 * relative Frobenius error of the full output against float64 products of the same fp32 inputs.
 *
 *   npx tsx bench/int8-probe.ts [-- --threads 2 --rows 1576 --rounds 7 --formulations a,b --out FILE --isa avx2]
 *   --isa avx2 reruns it with CPUID showing an AVX2-only CPU (bench/lib/isa-mask.ts): ORT's AVX2 kernels
 */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import onnxProto, { type onnx as OnnxTypes } from 'onnx-proto';
import ort from 'onnxruntime-node';
import { Random } from '../src/util/random.ts';
import { integerOption } from './lib/args.ts';
import { parseIsaLevel, runUnderIsa } from './lib/isa-mask.ts';
import { int8WeightEncoding, loadAverage, machineInfo } from './lib/machine.ts';
import { type OrtProfile, profileOrtModel } from './lib/ort-profile.ts';
import { type BenchResult, writeBenchReport } from './lib/results.ts';
import { median } from './lib/timing.ts';

const { onnx } = onnxProto;
const T = onnx.TensorProto.DataType;
const here = dirname(fileURLToPath(import.meta.url));

const { values } = parseArgs({
  options: {
    threads: { type: 'string', default: '2' },
    rows: { type: 'string', default: String(197 * 8) },
    rounds: { type: 'string', default: '7' },
    formulations: { type: 'string' },
    out: { type: 'string' },
    isa: { type: 'string' },
  },
});
const isa = values.isa === undefined ? undefined : parseIsaLevel(values.isa);
if (isa) runUnderIsa(isa);
const out = values.out ?? join(here, 'results', isa === 'avx2' ? 'int8-probe-avx2.json' : 'int8-probe.json');
const threads = integerOption('threads', values.threads, 1);
const rows = integerOption('rows', values.rows, 1);
const rounds = integerOption('rounds', values.rounds, 1);

/** ViT-B/16's products: q, k, v and the output projection; fused qkv; MLP fc1 and fc2. */
const SHAPES: { name: string; k: number; n: number }[] = [
  { name: 'attn q/k/v/proj', k: 768, n: 768 },
  { name: 'attn qkv fused', k: 768, n: 2304 },
  { name: 'mlp fc1', k: 768, n: 3072 },
  { name: 'mlp fc2', k: 3072, n: 768 },
];

interface Built {
  readonly model: Uint8Array;
  /** Full-output twin of the model for the accuracy check (no slice). */
  readonly full: Uint8Array;
}

type Init = OnnxTypes.ITensorProto;

function tensor(name: string, dims: number[], dataType: number, bytes: Uint8Array): Init {
  return { name, dims, dataType, rawData: bytes };
}
const f32 = (name: string, dims: number[], data: Float32Array): Init =>
  tensor(name, dims, T.FLOAT, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
const i8 = (name: string, dims: number[], data: Int8Array): Init =>
  tensor(name, dims, T.INT8, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
const u8 = (name: string, dims: number[], data: Uint8Array): Init => tensor(name, dims, T.UINT8, data);
const i64 = (name: string, data: number[]): Init =>
  tensor(name, [data.length], T.INT64, new Uint8Array(BigInt64Array.from(data.map(BigInt)).buffer));

function node(
  opType: string,
  input: string[],
  output: string[],
  attrs: OnnxTypes.IAttributeProto[] = [],
  domain = '',
): OnnxTypes.INodeProto {
  return { opType, input, output, attribute: attrs, domain, name: `${opType}_${output[0]}` };
}
const intAttr = (name: string, i: number): OnnxTypes.IAttributeProto => ({
  name,
  type: onnx.AttributeProto.AttributeType.INT,
  i,
});

/** A model from nodes that compute `y` [rows, n] from input `x`; `sliced` adds Slice to [1, 1]. */
function model(
  nodes: OnnxTypes.INodeProto[],
  inits: Init[],
  k: number,
  n: number,
  sliced: boolean,
): Uint8Array {
  const all = [...nodes];
  const extra: Init[] = [];
  let out = 'y';
  if (sliced) {
    extra.push(i64('s0', [0, 0]), i64('s1', [1, 1]));
    all.push(node('Slice', ['y', 's0', 's1'], ['y11']));
    out = 'y11';
  }
  const info = (name: string, dims: number[]): OnnxTypes.IValueInfoProto => ({
    name,
    type: { tensorType: { elemType: T.FLOAT, shape: { dim: dims.map((d) => ({ dimValue: d })) } } },
  });
  const proto = onnx.ModelProto.create({
    irVersion: 8,
    producerName: 'melo-int8-probe',
    opsetImport: [
      { domain: '', version: 18 },
      { domain: 'com.microsoft', version: 1 },
    ],
    graph: {
      name: 'probe',
      node: all,
      input: [info('x', [rows, k])],
      output: [info(out, sliced ? [1, 1] : [rows, n])],
      initializer: [...inits, ...extra],
    },
  });
  return onnx.ModelProto.encode(proto).finish();
}

/** Symmetric int8 per output channel: scale[n] = max |W[:, n]| / 127. */
function quantizePerColumn(w: Float32Array, k: number, n: number): { q: Int8Array; scale: Float32Array } {
  const scale = new Float32Array(n);
  for (let r = 0; r < k; r++)
    for (let c = 0; c < n; c++) scale[c] = Math.max(scale[c]!, Math.abs(w[r * n + c]!));
  for (let c = 0; c < n; c++) scale[c] = scale[c]! / 127 || 1;
  const q = new Int8Array(k * n);
  for (let r = 0; r < k; r++)
    for (let c = 0; c < n; c++) q[r * n + c] = Math.round(w[r * n + c]! / scale[c]!);
  return { q, scale };
}

/** MatMulNBits' layout for 8 bits: B [n, k/block, block] unsigned (zero point 128), scales [n, k/block]. */
function quantizeNBits8(
  w: Float32Array,
  k: number,
  n: number,
  block: number,
): { b: Uint8Array; scales: Float32Array } {
  const blocks = k / block;
  const b = new Uint8Array(n * k);
  const scales = new Float32Array(n * blocks);
  for (let c = 0; c < n; c++) {
    for (let j = 0; j < blocks; j++) {
      let max = 0;
      for (let r = j * block; r < (j + 1) * block; r++) max = Math.max(max, Math.abs(w[r * n + c]!));
      const s = max / 127 || 1;
      scales[c * blocks + j] = s;
      for (let r = j * block; r < (j + 1) * block; r++) b[c * k + r] = Math.round(w[r * n + c]! / s) + 128;
    }
  }
  return { b, scales };
}

function formulations(w: Float32Array, k: number, n: number): Map<string, Built> {
  const both = (nodes: OnnxTypes.INodeProto[], inits: Init[]): Built => ({
    model: model(nodes, inits, k, n, true),
    full: model(nodes, inits, k, n, false),
  });
  const out = new Map<string, Built>();
  out.set('fp32', both([node('MatMul', ['x', 'w'], ['y'])], [f32('w', [k, n], w)]));
  const { q, scale } = quantizePerColumn(w, k, n);
  const wq = i8('wq', [k, n], q);
  const ws = f32('ws', [n], scale);
  const wzp = i8('wzp', [n], new Int8Array(n));
  out.set(
    'qdq-std',
    both(
      [
        node('DynamicQuantizeLinear', ['x'], ['xq', 'xs', 'xzp']),
        node('MatMulInteger', ['xq', 'wq', 'xzp', 'wzp'], ['acc']),
        node('Cast', ['acc'], ['accf'], [intAttr('to', T.FLOAT)]),
        node('Mul', ['xs', 'ws'], ['scale']),
        node('Mul', ['accf', 'scale'], ['y']),
      ],
      [wq, ws, wzp],
    ),
  );
  out.set(
    'dq-matmul',
    both(
      [node('DynamicQuantizeMatMul', ['x', 'wq', 'ws', 'wzp'], ['y'], [], 'com.microsoft')],
      [wq, ws, wzp],
    ),
  );
  out.set(
    'dql-itf',
    both(
      [
        node('DynamicQuantizeLinear', ['x'], ['xq', 'xs', 'xzp']),
        node('MatMulIntegerToFloat', ['xq', 'wq', 'xs', 'ws', 'xzp', 'wzp'], ['y'], [], 'com.microsoft'),
      ],
      [wq, ws, wzp],
    ),
  );
  // Row-wise activation scales (SwitchBack's choice for training): one scale per row of X, symmetric.
  const rowScale = [
    node('Abs', ['x'], ['xabs']),
    node('ReduceMax', ['xabs', 'lastAxis'], ['amax'], [intAttr('keepdims', 1)]),
    node('Max', ['amax', 'tiny'], ['amaxSafe']),
    node('Div', ['amaxSafe', 'c127'], ['rs']),
    node('Div', ['x', 'rs'], ['xscaled']),
    node('Round', ['xscaled'], ['xround']),
  ];
  const rowInits = [
    i64('lastAxis', [-1]),
    f32('tiny', [], Float32Array.of(1e-30)),
    f32('c127', [], Float32Array.of(127)),
  ];
  const rescale = [
    node('Cast', ['acc'], ['accf'], [intAttr('to', T.FLOAT)]),
    node('Mul', ['accf', 'rs'], ['yrow']),
    node('Mul', ['yrow', 'ws'], ['y']),
  ];
  out.set(
    'row-s8',
    both(
      [
        ...rowScale,
        node('Cast', ['xround'], ['xq'], [intAttr('to', T.INT8)]),
        node('MatMulInteger', ['xq', 'wq'], ['acc']),
        ...rescale,
      ],
      [wq, ws, ...rowInits],
    ),
  );
  out.set(
    'row-u8',
    both(
      [
        ...rowScale,
        node('Add', ['xround', 'c128'], ['xshift']),
        node('Cast', ['xshift'], ['xq'], [intAttr('to', T.UINT8)]),
        node('MatMulInteger', ['xq', 'wq', 'zp128'], ['acc']),
        ...rescale,
      ],
      [wq, ws, ...rowInits, f32('c128', [], Float32Array.of(128)), u8('zp128', [], Uint8Array.of(128))],
    ),
  );
  // The same row-wise quantisation in two fused kernels: QuantizeLinear with one scale (and zero point 128)
  // per row (axis 0) does the Div, Round, +128 and Cast in one pass; DequantizeLinear of the int32 sums
  // with the same per-row scales does the Cast and the row Mul in another.
  const rowQuantizeLinear = (weight: Init, weightZeroPoint: string[]) =>
    both(
      [
        ...rowScale.slice(0, 4),
        node('Reshape', ['rs', 'rowsShape'], ['rs1']),
        node('Shape', ['rs1'], ['rsShape']),
        node('Expand', ['zp128', 'rsShape'], ['zpRows']),
        node('QuantizeLinear', ['x', 'rs1', 'zpRows'], ['xq'], [intAttr('axis', 0)]),
        node('MatMulInteger', ['xq', weight.name!, 'zp128', ...weightZeroPoint], ['acc']),
        node('DequantizeLinear', ['acc', 'rs1'], ['yrow'], [intAttr('axis', 0)]),
        node('Mul', ['yrow', 'ws'], ['y']),
      ],
      [weight, ws, ...rowInits, i64('rowsShape', [-1]), u8('zp128', [], Uint8Array.of(128))],
    );
  out.set('row-ql', rowQuantizeLinear(wq, []));
  // The same products with the weight stored as uint8 (q + 128, zero point 128): ORT then runs its u8·u8
  // kernel, whose AVX2 form widens to 16 bits before multiplying. Its u8·s8 AVX2 kernel (vpmaddubsw) adds
  // two u8·s8 products in saturating 16-bit lanes, which overflow past 32767 (255·127·2 = 64770).
  const wqU8 = u8(
    'wqU8',
    [k, n],
    Uint8Array.from(q, (v) => v + 128),
  );
  out.set(
    'dq-matmul-u8w',
    both(
      [node('DynamicQuantizeMatMul', ['x', 'wqU8', 'ws', 'zp128'], ['y'], [], 'com.microsoft')],
      [wqU8, ws, u8('zp128', [], Uint8Array.of(128))],
    ),
  );
  out.set('row-ql-u8w', rowQuantizeLinear(wqU8, ['zp128']));
  for (const block of [32, 256]) {
    if (k % block !== 0) continue;
    const { b, scales } = quantizeNBits8(w, k, n, block);
    out.set(
      `nbits8-b${block}`,
      both(
        [
          node(
            'MatMulNBits',
            ['x', 'b', 'scales'],
            ['y'],
            [
              intAttr('K', k),
              intAttr('N', n),
              intAttr('bits', 8),
              intAttr('block_size', block),
              intAttr('accuracy_level', 4),
            ],
            'com.microsoft',
          ),
        ],
        [u8('b', [n, k / block, block], b), f32('scales', [n * (k / block)], scales)],
      ),
    );
  }
  const wanted = values.formulations?.split(',');
  return wanted ? new Map([...out].filter(([name]) => wanted.includes(name))) : out;
}

const sessionOptions: ort.InferenceSession.SessionOptions = {
  executionProviders: ['cpu'],
  intraOpNumThreads: threads,
  interOpNumThreads: 1,
  graphOptimizationLevel: 'all',
  enableMemPattern: false,
  enableCpuMemArena: true,
  executionMode: 'sequential',
  logSeverityLevel: 3,
};

function relativeError(x: Float32Array, w: Float32Array, y: Float32Array, k: number, n: number): number {
  // Rows sampled evenly: the float64 reference over every row would take longer than the probe.
  let num = 0;
  let den = 0;
  const step = Math.max(1, Math.floor(rows / 64));
  const ref = new Float64Array(n);
  for (let r = 0; r < rows; r += step) {
    ref.fill(0);
    for (let j = 0; j < k; j++) {
      const a = x[r * k + j]!;
      for (let c = 0; c < n; c++) ref[c]! += a * w[j * n + c]!;
    }
    for (let c = 0; c < n; c++) {
      num += (y[r * n + c]! - ref[c]!) ** 2;
      den += ref[c]! ** 2;
    }
  }
  return Math.sqrt(num / den);
}

const machine = machineInfo();
console.log(
  `int8 probe: ${rows} rows, ${threads} threads, ${rounds} rounds, load ${machine.loadAverageAtStart}, flags ${machine.cpuFlags.join(' ')}`,
);
const random = new Random(1);
const results: BenchResult[] = [];
for (const { name, k, n } of SHAPES) {
  // Activations like a LayerNorm output (unit spread) with a few large channels, weights with timm's spread.
  const x = new Float32Array(rows * k);
  for (let i = 0; i < x.length; i++) x[i] = random.normal() * (i % k < 4 ? 8 : 1);
  const w = new Float32Array(k * n);
  for (let i = 0; i < w.length; i++) w[i] = random.normal() * 0.02;
  const feeds = { x: new ort.Tensor('float32', x, [rows, k]) };
  const built = formulations(w, k, n);
  const sessions = new Map<string, ort.InferenceSession>();
  const errors = new Map<string, number | string>();
  for (const [formulation, { model: bytes, full }] of built) {
    try {
      const check = await ort.InferenceSession.create(full, sessionOptions);
      const y = (await check.run(feeds)).y!.data as Float32Array;
      errors.set(formulation, relativeError(x, w, y, k, n));
      await check.release();
      const session = await ort.InferenceSession.create(bytes, sessionOptions);
      for (let i = 0; i < 2; i++) await session.run(feeds);
      sessions.set(formulation, session);
    } catch (error) {
      errors.set(formulation, `failed: ${String((error as Error).message).split('\n')[0]}`);
    }
  }
  const samples = new Map<string, number[]>([...sessions.keys()].map((f) => [f, []]));
  const order = [...sessions.keys()];
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < order.length; i++) {
      const formulation = order[(i + round) % order.length]!;
      const start = performance.now();
      await sessions.get(formulation)!.run(feeds);
      samples.get(formulation)!.push(performance.now() - start);
    }
  }
  const flops = 2 * rows * k * n;
  const fp32Ms = samples.has('fp32') ? median(samples.get('fp32')!) : Number.NaN;
  for (const formulation of built.keys()) {
    const taken = samples.get(formulation);
    const ms = taken ? median(taken) : Number.NaN;
    let profile: OrtProfile | string | null = null;
    if (taken) {
      await sessions.get(formulation)!.release();
      profile = await profileOrtModel(built.get(formulation)!.model, feeds, {
        threads,
        warmup: 1,
        runs: 2,
      }).catch((error: unknown) => `profile failed: ${String(error)}`);
    }
    const error = errors.get(formulation);
    const ops = typeof profile === 'object' && profile ? Object.keys(profile.optimizedOps).join('+') : '';
    console.log(
      `${name.padEnd(16)} ${`${rows}x${k}x${n}`.padEnd(15)} ${formulation.padEnd(12)} ${Number.isFinite(ms) ? `${ms.toFixed(2).padStart(8)} ms ${(flops / ms / 1e6).toFixed(0).padStart(5)} GFLOP/s ×${(fp32Ms / ms).toFixed(2)}` : ''.padEnd(30)}  err ${typeof error === 'number' ? error.toExponential(2) : error}  [${ops}]`,
    );
    results.push({
      name: formulation,
      model: `${name} ${rows}x${k}x${n}`,
      batch: rows,
      threads,
      imagesPerSecond: 0,
      gflops: Number.isFinite(ms) ? flops / ms / 1e6 : 0,
      shape: { rows, k, n },
      medianMs: ms,
      samplesMs: taken ?? [],
      speedupOverFp32: fp32Ms / ms,
      relativeError: error,
      profile,
    });
  }
}
await writeBenchReport(out, {
  date: new Date().toISOString(),
  machine: { ...machine, int8WeightEncoding: await int8WeightEncoding() },
  loadAverageAtEnd: loadAverage(),
  results,
});
console.log(`wrote ${out}`);
