import { test } from 'node:test';
import type { Value } from '../src/graph/builder.ts';
import { attention } from '../src/ops/attention.ts';
import {
  abs,
  add,
  div,
  erf,
  exp,
  gelu,
  log,
  mul,
  neg,
  relu,
  sigmoid,
  sqrt,
  stopGradient,
  sub,
} from '../src/ops/elementwise.ts';
import { gemm, matmul } from '../src/ops/matmul.ts';
import { layerNorm } from '../src/ops/normalization.ts';
import { reduceMax, reduceMean, reduceSum } from '../src/ops/reduce.ts';
import {
  concat,
  expandBatch,
  expandLike,
  pad,
  reshape,
  reshapeLike,
  slice,
  transpose,
  transposeLast,
} from '../src/ops/shape.ts';
import { softmax } from '../src/ops/softmax.ts';
import { checkGradients, type GradCase, type GradInput } from './helpers/gradcheck.ts';

// One entry per op rule (JAX's LAX_GRAD_OPS): each is checked by finite differences of the loss Σ f(x)·c.

const B = 'batch';
const p = (...shape: (number | string)[]): GradInput => ({ shape });
const positive = (...shape: (number | string)[]): GradInput => ({ shape, sample: 'positive' });
const awayFromZero = (...shape: (number | string)[]): GradInput => ({ shape, sample: 'awayFromZero' });
const data = (...shape: (number | string)[]): GradInput => ({ shape, kind: 'data' });
const frozen = (...shape: (number | string)[]): GradInput => ({ shape, kind: 'frozen' });

type Binary = (a: Value, b: Value) => Value;

/** Broadcasting the right side, both sides at once, the left side, and against a symbolic batch. */
function binaryCases(
  name: string,
  op: Binary,
  rhs: (...shape: (number | string)[]) => GradInput,
): GradCase[] {
  const build = ({ a, b }: Record<string, Value>) => op(a!, b!);
  return [
    { name: `${name} [2,3,4]·[4]`, inputs: { a: p(2, 3, 4), b: rhs(4) }, build },
    { name: `${name} [3,1]·[2,1,4]`, inputs: { a: p(3, 1), b: rhs(2, 1, 4) }, build },
    { name: `${name} [4]·[2,3,4]`, inputs: { a: p(4), b: rhs(2, 3, 4) }, build },
    { name: `${name} [batch,3,4]·[3,1]`, inputs: { a: p(B, 3, 4), b: rhs(3, 1) }, build },
    { name: `${name} [1,4]·[batch,1,1]`, inputs: { a: p(1, 4), b: rhs(B, 1, 1) }, build },
    { name: `${name} same shape, same value twice`, inputs: { a: rhs(3, 4) }, build: ({ a }) => op(a!, a!) },
  ];
}

function unaryCase(name: string, op: (x: Value) => Value, input: GradInput = p(2, 3, 4)): GradCase {
  return { name, inputs: { x: input }, build: ({ x }) => op(x!) };
}

const cases: GradCase[] = [
  ...binaryCases('add', add, p),
  ...binaryCases('sub', sub, p),
  ...binaryCases('mul', mul, p),
  ...binaryCases('div', div, positive),

  unaryCase('neg', neg),
  unaryCase('exp', exp),
  unaryCase('log', log, positive(2, 3, 4)),
  unaryCase('sqrt', sqrt, positive(2, 3, 4)),
  unaryCase('sigmoid', sigmoid),
  unaryCase('abs', abs, awayFromZero(2, 3, 4)),
  unaryCase('relu', relu, awayFromZero(2, 3, 4)),
  unaryCase('erf', erf),
  unaryCase('gelu (composite)', gelu),
  unaryCase('gelu, symbolic batch', gelu, p(B, 5)),
  {
    // The max is a shift the math cancels, so stopping its gradient still gives the true gradient.
    name: 'log-sum-exp with a stop-gradient max shift',
    inputs: { x: p(3, 5) },
    build: ({ x }) => {
      const shift = stopGradient(reduceMax(x!, [-1], true));
      return add(log(reduceSum(exp(sub(x!, shift)), [-1], true)), shift);
    },
  },

  { name: 'matmul 2-D', inputs: { a: p(3, 4), b: p(4, 5) }, build: ({ a, b }) => matmul(a!, b!) },
  {
    name: 'matmul batched 4-D',
    inputs: { a: p(2, 3, 4, 5), b: p(2, 3, 5, 2) },
    build: ({ a, b }) => matmul(a!, b!),
  },
  {
    name: 'matmul batched, broadcast batch dims',
    inputs: { a: p(2, 1, 4, 5), b: p(3, 5, 2) },
    build: ({ a, b }) => matmul(a!, b!),
  },
  {
    name: 'matmul 3-D·2-D (Gemm path)',
    inputs: { a: p(2, 3, 4), b: p(4, 5) },
    build: ({ a, b }) => matmul(a!, b!),
  },
  {
    name: 'matmul 3-D·2-D (Gemm path), symbolic batch',
    inputs: { a: p(B, 3, 4), b: p(4, 5) },
    build: ({ a, b }) => matmul(a!, b!),
  },
  {
    name: 'matmul 4-D·2-D (Gemm path)',
    inputs: { a: p(2, 2, 3, 4), b: p(4, 5) },
    build: ({ a, b }) => matmul(a!, b!),
  },
  { name: 'matmul 2-D·3-D', inputs: { a: p(3, 4), b: p(2, 4, 5) }, build: ({ a, b }) => matmul(a!, b!) },
  {
    name: 'matmul of a transposed value (attention scores)',
    inputs: { q: p(B, 3, 4), k: p(B, 3, 4) },
    build: ({ q, k }) => matmul(q!, transposeLast(k!)),
  },

  ...[
    [false, false],
    [false, true],
    [true, false],
    [true, true],
  ].map(
    ([transA, transB]): GradCase => ({
      name: `gemm transA=${Number(transA)} transB=${Number(transB)} alpha=0.7`,
      inputs: { a: transA ? p(4, 3) : p(3, 4), b: transB ? p(5, 4) : p(4, 5) },
      build: ({ a, b }) => gemm(a!, b!, { transA, transB, alpha: 0.7 }),
    }),
  ),

  { name: 'reshape with 0 and -1', inputs: { x: p(2, 3, 4) }, build: ({ x }) => reshape(x!, [0, -1]) },
  {
    name: 'reshape with 0 in the middle',
    inputs: { x: p(2, 3, 4) },
    build: ({ x }) => reshape(x!, [4, 0, 2]),
  },
  { name: 'reshape, symbolic batch', inputs: { x: p(B, 3, 4) }, build: ({ x }) => reshape(x!, [0, -1]) },
  {
    name: 'reshape to a symbolic shape at run time',
    inputs: { x: p(B, 12), like: data(B, 3, 4) },
    build: ({ x, like }) => reshapeLike(x!, like!),
  },
  { name: 'transpose', inputs: { x: p(2, 3, 4) }, build: ({ x }) => transpose(x!, [2, 0, 1]) },
  {
    name: 'transpose, symbolic batch',
    inputs: { x: p(B, 3, 4) },
    build: ({ x }) => transpose(x!, [0, 2, 1]),
  },
  {
    name: 'concat axis 1',
    inputs: { a: p(2, 1, 3), b: p(2, 2, 3), c: p(2, 3, 3) },
    build: ({ a, b, c }) => concat([a!, b!, c!], 1),
  },
  {
    name: 'concat axis -1, symbolic batch, one input frozen',
    inputs: { a: p(B, 2), b: data(B, 3) },
    build: ({ a, b }) => concat([b!, a!], -1),
  },
  { name: 'slice two axes', inputs: { x: p(4, 5) }, build: ({ x }) => slice(x!, [1, -3], [3, 5], [0, 1]) },
  {
    name: 'slice with clamped bounds',
    inputs: { x: p(4, 5) },
    build: ({ x }) => slice(x!, [-100, 2], [2, 100], [0, 1]),
  },
  {
    name: 'slice, symbolic batch (class token)',
    inputs: { x: p(B, 4, 3) },
    build: ({ x }) => slice(x!, [0], [1], [1]),
  },
  { name: 'pad', inputs: { x: p(2, 3) }, build: ({ x }) => pad(x!, [1, 0, 0, 2], [3, 5]) },
  {
    name: 'expandBatch [1,3,4] to [batch,3,4]',
    inputs: { x: p(1, 3, 4), like: data(B, 5) },
    build: ({ x, like }) => expandBatch(x!, like!, [3, 4]),
  },
  {
    name: 'expandBatch [3,4] to [batch,3,4]',
    inputs: { x: p(3, 4), like: data(B, 5) },
    build: ({ x, like }) => expandBatch(x!, like!, [3, 4]),
  },
  {
    name: 'expandLike [1,4] to [batch,3,4]',
    inputs: { x: p(1, 4), like: data(B, 3, 4) },
    build: ({ x, like }) => expandLike(x!, like!),
  },

  ...[false, true].flatMap((keepdims): GradCase[] => [
    {
      name: `reduceSum axis 1 keepdims=${keepdims}`,
      inputs: { x: p(2, 3, 4) },
      build: ({ x }) => reduceSum(x!, [1], keepdims),
    },
    {
      name: `reduceSum axes 0,-1 keepdims=${keepdims}`,
      inputs: { x: p(2, 3, 4) },
      build: ({ x }) => reduceSum(x!, [0, -1], keepdims),
    },
    {
      name: `reduceMean axis 1 keepdims=${keepdims}`,
      inputs: { x: p(2, 3, 4) },
      build: ({ x }) => reduceMean(x!, [1], keepdims),
    },
    {
      name: `reduceMean axes 0,2 keepdims=${keepdims}`,
      inputs: { x: p(2, 3, 4) },
      build: ({ x }) => reduceMean(x!, [0, 2], keepdims),
    },
    {
      name: `reduceSum over tokens, symbolic batch, keepdims=${keepdims}`,
      inputs: { x: p(B, 3, 4) },
      build: ({ x }) => reduceSum(x!, [1], keepdims),
    },
    {
      name: `reduceSum before a symbolic axis keepdims=${keepdims}`,
      inputs: { x: p(3, B) },
      build: ({ x }) => reduceSum(x!, [0], keepdims),
    },
    {
      name: `reduceMean over a symbolic batch (a batch-mean loss) keepdims=${keepdims}`,
      inputs: { x: p(B, 3) },
      build: ({ x }) => reduceMean(x!, [0], keepdims),
    },
  ]),

  {
    name: 'layerNorm (x, gamma, beta)',
    inputs: { x: p(2, 3, 6), gamma: p(6), beta: p(6) },
    build: ({ x, gamma, beta }) => layerNorm(x!, gamma!, beta!, 1e-5),
  },
  {
    name: 'layerNorm, symbolic batch',
    inputs: { x: p(B, 3, 5), gamma: p(5), beta: p(5) },
    build: ({ x, gamma, beta }) => layerNorm(x!, gamma!, beta!, 1e-5),
  },
  { name: 'softmax', inputs: { x: p(2, 3, 5) }, build: ({ x }) => softmax(x!) },
  { name: 'softmax, symbolic batch', inputs: { x: p(B, 2, 4) }, build: ({ x }) => softmax(x!) },
  {
    name: 'attention (composite: FlashAttention-style softmax backward, transposes as FusedMatMul flags)',
    inputs: { q: p(2, 3, 5, 4), k: p(2, 3, 5, 4), v: p(2, 3, 5, 6) },
    build: ({ q, k, v }) => attention(q!, k!, v!, 0.5).context,
  },
  {
    name: 'attention, one query row (the last block under CLS pooling)',
    inputs: { q: p(2, 3, 1, 4), k: p(2, 3, 5, 4), v: p(2, 3, 5, 4) },
    build: ({ q, k, v }) => attention(q!, k!, v!, 0.7).context,
  },
  {
    name: 'attention, symbolic batch',
    inputs: { q: p(B, 2, 3, 4), k: p(B, 2, 3, 4), v: p(B, 2, 3, 4) },
    build: ({ q, k, v }) => attention(q!, k!, v!, 0.5).context,
  },
  {
    name: 'attention, with a gradient reaching the weights as well as the context',
    inputs: { q: p(2, 3, 5, 4), k: p(2, 3, 5, 4), v: p(2, 3, 5, 4), w: p(2, 3, 5, 4) },
    build: ({ q, k, v, w }) => {
      const { context, weights } = attention(q!, k!, v!, 0.5);
      return add(context, matmul(weights, w!));
    },
  },
  {
    name: 'attention, only the values differentiated',
    inputs: { q: frozen(2, 3, 5, 4), k: frozen(2, 3, 5, 4), v: p(2, 3, 5, 4) },
    build: ({ q, k, v }) => attention(q!, k!, v!, 0.5).context,
  },
];

for (const spec of cases) {
  const symbolic = Object.values(spec.inputs).some((input) => input.shape.includes(B));
  test(`vjp: ${spec.name}`, async () => {
    await checkGradients(spec, { moreSizes: symbolic ? [{ batch: 3 }] : [] });
  });
}
