/**
 * The int8 product of a frozen projection (`--backbone-precision int8`): x·W where W is stored as int8 with
 * one scale per output channel (W[k, n] ≈ Wq[k, n]·scale[n], src/model/quantize.ts).
 *
 * One node, ONNX Runtime's com.microsoft DynamicQuantizeMatMul: it quantises x to uint8 on the fly (one
 * scale and zero point per tensor), multiplies with the u8·s8 kernel (AVX-512 VNNI / AVX-VNNI where the CPU
 * has them), and scales the int32 sums back to float. Chosen by measurement (bench/int8-probe.ts, docs/
 * benchmarks.md): the standard-op chain DynamicQuantizeLinear → MatMulInteger → Cast → Mul and
 * DynamicQuantizeLinear → MatMulIntegerToFloat both become this very node after ORT's graph optimisations,
 * MatMulNBits with 8-bit weights was slower, and MatMulInteger with int8 (not uint8) activations had no fast
 * kernel (5× slower than float). A single node also gives the product one VJP, below. The weight's zero
 * point (int8 0) is always an input, so that the graph can be written with the weights as uint8 + 128
 * (zero point 128) on CPUs where ORT's u8·s8 kernel saturates (AVX2 without VNNI; runtime/int8-kernels.ts):
 * the same numbers, multiplied exactly by its u8·u8 kernel.
 *
 * Gradient (SwitchBack, Wortsman et al. 2023): the input gradient is an int8 product as well,
 * dx = dy·Wᵀ = (dy ∘ scale)·Wqᵀ, with the incoming gradient quantised row by row (one scale per token):
 * {@link rowwiseInt8MatMul}. W is frozen and gets none. Per-tensor quantisation, as the forward does, is
 * not enough for gradients: in a ViT the CLS token's rows carry gradients far larger than the patch
 * tokens' (only CLS reaches the head), so one scale for the tensor rounds most patch rows to zero. It
 * cost 0.026 test AUC on BreastMNIST against fp32 training (3 seeds, docs/study.md), while the forward's
 * per-tensor quantisation cost nothing at evaluation.
 */
import { ShapeError } from '../errors.ts';
import type { GraphBuilder, Value } from '../graph/builder.ts';
import { MICROSOFT_DOMAIN, type OpDef } from '../graph/op.ts';
import { formatShape, type TensorType } from '../graph/types.ts';
import { add, maximum, mul, neg, scale } from './elementwise.ts';
import { flattenLeading, gemm } from './matmul.ts';
import { reduceMax, reduceMin } from './reduce.ts';
import { requireDtype, requireInputs } from './rules.ts';
import { ExpandOp, reshape, transpose } from './shape.ts';

export const Int8MatMulOp: OpDef<RowGrid> = {
  name: 'int8_matmul',
  onnxType: 'DynamicQuantizeMatMul',
  domain: MICROSOFT_DOMAIN,
  inferShape(inputs, _attributes, node) {
    if (inputs.length !== 4 && inputs.length !== 5)
      throw new ShapeError(
        'int8_matmul',
        node,
        `needs 4 inputs (x, weight, scale, zero point) or 5 (+ bias), got ${inputs.length}`,
      );
    const [x, wq, scale, zeroPoint, bias] = inputs as (typeof inputs)[0][];
    requireDtype('int8_matmul', node, x!, 'float32', 'x');
    requireDtype('int8_matmul', node, wq!, 'int8', 'weight');
    requireDtype('int8_matmul', node, scale!, 'float32', 'scale');
    if (x!.shape.length < 2 || wq!.shape.length !== 2)
      throw new ShapeError(
        'int8_matmul',
        node,
        `needs x of rank ≥ 2 and a 2-D weight, got ${formatShape(x!.shape)} · ${formatShape(wq!.shape)}`,
      );
    const [k, n] = wq!.shape as [number, number];
    if (x!.shape[x!.shape.length - 1] !== k)
      throw new ShapeError(
        'int8_matmul',
        node,
        `inner dims differ: ${formatShape(x!.shape)} · ${formatShape(wq!.shape)}`,
      );
    const scalarOrPerColumn = (t: TensorType) =>
      t.shape.length === 0 || (t.shape.length === 1 && t.shape[0] === n);
    if (!scalarOrPerColumn(scale!))
      throw new ShapeError(
        'int8_matmul',
        node,
        `scale must be a scalar or [${n}], got ${formatShape(scale!.shape)}`,
      );
    requireDtype('int8_matmul', node, zeroPoint!, 'int8', 'zero point');
    if (zeroPoint!.shape.length !== 0)
      throw new ShapeError(
        'int8_matmul',
        node,
        `zero point must be a scalar, got ${formatShape(zeroPoint!.shape)}`,
      );
    if (bias) {
      requireDtype('int8_matmul', node, bias, 'float32', 'bias');
      if (bias.shape.length !== 1 || bias.shape[0] !== n)
        throw new ShapeError('int8_matmul', node, `bias must be [${n}], got ${formatShape(bias.shape)}`);
    }
    return [{ shape: [...x!.shape.slice(0, -1), n], dtype: 'float32' }];
  },
  vjp: ({ gradOutputs: [g], inputs: [, wq, scale, zeroPoint], needs, attributes }) => {
    // The bias's gradient is g itself, summed down to [N] by the backward walk (frozen in MeLo: unasked).
    const biasGrad = needs[4] ? g! : null;
    if (!needs[0]) return [null, null, null, null, biasGrad];
    // Wqᵀ is a Transpose of an initializer, which ORT folds into a second initializer when the session is
    // created: no per-step cost, one more int8 copy of the weight.
    const wqT = transpose(wq!, [1, 0]);
    const dx = rowwiseInt8MatMul(mul(g!, scale!), wqT, zeroPoint!, { rowLevels: attributes.rowLevels });
    return [dx, null, null, null, biasGrad];
  },
};

/**
 * ONNX QuantizeLinear with one scale and zero point per row (axis 0): q = saturate(round_half_even(x / s)
 * + zp) as uint8, in one kernel. No gradient: it only ever quantises a gradient.
 */
export const QuantizeRowsOp: OpDef<Record<string, never>> = {
  name: 'quantize_rows',
  onnxType: 'QuantizeLinear',
  emitAttributes: () => [{ name: 'axis', type: 'int', value: 0 }],
  inferShape(inputs, _attributes, node) {
    requireInputs('quantize_rows', node, inputs, 3);
    const [x, rowScale, zeroPoint] = inputs as [(typeof inputs)[0], (typeof inputs)[0], (typeof inputs)[0]];
    requireDtype('quantize_rows', node, x, 'float32', 'x');
    requireDtype('quantize_rows', node, rowScale, 'float32', 'scale');
    requireDtype('quantize_rows', node, zeroPoint, 'uint8', 'zero point');
    requireRowVector('quantize_rows', node, x, rowScale, zeroPoint);
    return [{ shape: x.shape, dtype: 'uint8' }];
  },
};

/** ONNX DequantizeLinear of int32 sums with one scale per row (axis 0): x·s as float32, in one kernel. */
export const DequantizeRowsOp: OpDef<Record<string, never>> = {
  name: 'dequantize_rows',
  onnxType: 'DequantizeLinear',
  emitAttributes: () => [{ name: 'axis', type: 'int', value: 0 }],
  inferShape(inputs, _attributes, node) {
    requireInputs('dequantize_rows', node, inputs, 2);
    const [x, rowScale] = inputs as [(typeof inputs)[0], (typeof inputs)[0]];
    requireDtype('dequantize_rows', node, x, 'int32', 'x');
    requireDtype('dequantize_rows', node, rowScale, 'float32', 'scale');
    requireRowVector('dequantize_rows', node, x, rowScale);
    return [{ shape: x.shape, dtype: 'float32' }];
  },
};

function requireRowVector(op: string, node: string, x: TensorType, ...perRow: TensorType[]): void {
  for (const vector of perRow)
    if (x.shape.length !== 2 || vector.shape.length !== 1 || vector.shape[0] !== x.shape[0])
      throw new ShapeError(
        op,
        node,
        `needs [rows, n] and one value per row, got ${formatShape(x.shape)} and ${formatShape(vector.shape)}`,
      );
}

/**
 * ONNX MatMulInteger, uint8 activations (with a zero point) · int8 weights (with theirs, 0) → int32 sums;
 * ONNX Runtime runs it with the u8·s8 kernel (AVX-512 VNNI / AVX-VNNI), or u8·u8 where the weights are
 * written unsigned ({@link ModelExtras.int8AsUint8}). `activationMax` (build time only) bounds the uint8
 * operand, which {@link int8PairsFit16Bits} reads. No gradient: it forms an input gradient.
 */
export const MatMulIntegerOp: OpDef<{ activationMax: number }> = {
  name: 'matmul_integer',
  onnxType: 'MatMulInteger',
  inferShape(inputs, _attributes, node) {
    requireInputs('matmul_integer', node, inputs, 4);
    const [a, b, aZeroPoint, bZeroPoint] = inputs as TensorType[];
    const shape = integerProductShape('matmul_integer', node, a!, b!, aZeroPoint!, bZeroPoint!);
    return [{ shape, dtype: 'int32' }];
  },
};

/** The shape of uint8 a [..., K] · int8 b [K, N], each with its scalar zero point: [..., N]. */
function integerProductShape(
  op: string,
  node: string,
  a: TensorType,
  b: TensorType,
  aZeroPoint: TensorType,
  bZeroPoint: TensorType,
): TensorType['shape'] {
  requireDtype(op, node, a, 'uint8', 'a');
  requireDtype(op, node, b, 'int8', 'b');
  requireDtype(op, node, aZeroPoint, 'uint8', 'a_zero_point');
  requireDtype(op, node, bZeroPoint, 'int8', 'b_zero_point');
  if (a.shape.length < 2 || b.shape.length !== 2 || a.shape[a.shape.length - 1] !== b.shape[0])
    throw new ShapeError(
      op,
      node,
      `needs [..., K] · [K, N], got ${formatShape(a.shape)} · ${formatShape(b.shape)}`,
    );
  return [...a.shape.slice(0, -1), b.shape[1]!];
}

/**
 * com.microsoft MatMulIntegerToFloat: uint8 activations · int8 weights, each with its zero point, as float:
 * (a − a_zp)·(b − b_zp) · a_scale · b_scale, the scales applied in the product's output stage (the same
 * kernels as {@link MatMulIntegerOp}). ORT 1.30 takes one activation scale and a weight scale per tensor or
 * per column. `activationMax` as for MatMulIntegerOp. No gradient: {@link RowwiseForwardOp} gives the
 * forward that uses it its VJP.
 */
export const MatMulIntegerToFloatOp: OpDef<{ activationMax: number }> = {
  name: 'matmul_integer_to_float',
  onnxType: 'MatMulIntegerToFloat',
  domain: MICROSOFT_DOMAIN,
  inferShape(inputs, _attributes, node) {
    requireInputs('matmul_integer_to_float', node, inputs, 6);
    const [a, b, aScale, bScale, aZeroPoint, bZeroPoint] = inputs as TensorType[];
    const shape = integerProductShape('matmul_integer_to_float', node, a!, b!, aZeroPoint!, bZeroPoint!);
    requireDtype('matmul_integer_to_float', node, aScale!, 'float32', 'a_scale');
    requireDtype('matmul_integer_to_float', node, bScale!, 'float32', 'b_scale');
    const n = b!.shape[1];
    const perColumn = bScale!.shape.length === 1 && bScale!.shape[0] === n;
    if (aScale!.shape.length !== 0 || (bScale!.shape.length !== 0 && !perColumn))
      throw new ShapeError(
        'matmul_integer_to_float',
        node,
        `needs a scalar a_scale and a scalar or [${String(n)}] b_scale, got ${formatShape(aScale!.shape)} and ${formatShape(bScale!.shape)}`,
      );
    return [{ shape, dtype: 'float32' }];
  },
};

/**
 * g [..., N] · Wq [N, K] (int8) → [..., K] float, with g quantised per row: s = max|g_row| / L,
 * q = round(g / s) + L + 1 as uint8 (zero point L + 1, so the symmetric range [−L, L] maps to [1, 2L + 1]),
 * the u8·s8 product in int32, then times s; L is `rowLevels` (127 unless the grid says otherwise,
 * {@link Int8Grid}). Each row keeps its own levels, whatever the other rows' magnitudes. A row of zeros
 * gets s = 1e-30 and stays zero. `wZeroPoint` is the weight's (int8 0, written as uint8 128 with the weight
 * on CPUs that need it). A scalar `weightScale` (a weight quantised per tensor) multiplies the row scales of
 * the dequantisation.
 *
 * The rows are flattened to [rows, N] so that QuantizeLinear and DequantizeLinear take the row scales
 * per axis: one kernel each, in place of Div, Round, Add, Cast and Cast, Mul. Same numbers (both round half
 * to even after a true division); on this 2-core AVX-512 VNNI EPYC, at the 1576 rows of a batch of 8, the
 * product with its quantisation took 3.1 ms instead of 6.6 (768 × 768) and 14.7 instead of 22.7 (768 ×
 * 3072) (bench/int8-probe.ts, `row-ql` against `row-u8`). The leading dims must be static (the training
 * step's batch is).
 */
export function rowwiseInt8MatMul(
  g: Value,
  wq: Value,
  wZeroPoint: Value,
  options: { weightScale?: Value; rowLevels: number },
): Value {
  const rows = quantizeRows(g, options.rowLevels);
  const sums = g.graph.apply1(MatMulIntegerOp, [rows.quantized, wq, rows.zeroPoint, wZeroPoint], {
    activationMax: 2 * options.rowLevels + 1,
  });
  const outputScale = options.weightScale ? mul(rows.rowScale, options.weightScale) : rows.rowScale;
  const product = g.graph.apply1(DequantizeRowsOp, [sums, outputScale], {});
  return reshape(product, [...rows.leading, wq.dim(-1) as number]);
}

/**
 * x [..., K] · (Wq [K, N] ∘ columnScale) with x quantised per row as in {@link rowwiseInt8MatMul}: the
 * forward of a row-wise int8 product. com.microsoft MatMulIntegerToFloat applies the weight's scale (per
 * column, or one for the tensor) in the product's output stage, so only the row scales need a pass of their
 * own (MatMulIntegerToFloat takes one activation scale, not one per row). Against MatMulInteger →
 * DequantizeLinear per row → Mul by the weight's scale, under the AVX2 CPUID mask on this 2-core EPYC,
 * `npm run bench:train -- --isa avx2 --methods lora --no-pytorch --precision int8` went from 5.158 and
 * 4.477 to 5.182 and 4.543 images/s (alternating; the machine was shared): about 1%, the pass it saves
 * (docs/benchmarks.md, AVX2 section).
 */
export function rowwiseInt8ForwardMatMul(
  x: Value,
  wq: Value,
  wZeroPoint: Value,
  options: { columnScale: Value; rowLevels: number },
): Value {
  const graph = x.graph;
  const rows = quantizeRows(x, options.rowLevels);
  const scaled = graph.apply1(
    MatMulIntegerToFloatOp,
    [rows.quantized, wq, graph.constantFloat(1), options.columnScale, rows.zeroPoint, wZeroPoint],
    { activationMax: 2 * options.rowLevels + 1 },
  );
  const product = mul(scaled, reshape(rows.rowScale, [rows.count, 1]));
  return reshape(product, [...rows.leading, wq.dim(-1) as number]);
}

interface QuantizedRows {
  /** [rows, N] uint8 on ±levels around `zeroPoint`. */
  readonly quantized: Value;
  /** [rows] float: max |row| / levels. */
  readonly rowScale: Value;
  readonly zeroPoint: Value;
  readonly leading: number[];
  readonly count: number;
}

function quantizeRows(g: Value, levels: number): QuantizedRows {
  const graph = g.graph;
  const leading = staticLeadingDims(g);
  if (!leading)
    throw new ShapeError(
      'int8_matmul',
      g.name,
      `row-wise quantisation needs static leading dims, got ${formatShape(g.shape)}`,
    );
  const count = leading.reduce((a, b) => a * b, 1);
  const flat = reshape(g, [count, g.dim(-1) as number]);
  // max |g| per row as max(max g, −min g): two reads of g instead of Abs's read and write and a read.
  const rowMax = maximum(reduceMax(flat, [-1], true), neg(reduceMin(flat, [-1], true)));
  const rowScale = reshape(add(scale(rowMax, 1 / levels), graph.constantFloat(1e-30)), [count]);
  // ORT folds this Expand of two constants into one initializer when the session is created.
  const zeroPoint = graph.constantUint8(levels + 1);
  const zeroPoints = graph.apply1(ExpandOp, [zeroPoint, graph.constantInt64([count])], { outShape: [count] });
  const quantized = graph.apply1(QuantizeRowsOp, [flat, rowScale, zeroPoints], {});
  return { quantized, rowScale, zeroPoint, leading, count };
}

function staticLeadingDims(x: Value): number[] | undefined {
  const leading = x.shape.slice(0, -1);
  return leading.every((d): d is number => typeof d === 'number') ? leading : undefined;
}

/**
 * How int8 products quantise, chosen per CPU by runtime/int8-kernels.ts. Where ONNX Runtime's u8·s8 kernel
 * sums in 32 bits (AVX-512 VNNI, AVX-VNNI) any grid is exact and {@link INT8_GRID} is used. Without VNNI
 * (AVX2) it adds each pair of u8·s8 products in a saturating 16-bit lane, so a product is exact only if
 * 2 · (largest uint8) · (largest |weight|) ≤ 32767 ({@link int8PairsFit16Bits}).
 */
export interface Int8Grid {
  /** Every int8 weight is within ±weightLevels (frozen: per output channel; trained: per tensor). */
  readonly weightLevels: number;
  /** Row-wise quantised operands use ±rowLevels around zero point rowLevels + 1 ({@link rowwiseInt8MatMul}). */
  readonly rowLevels: number;
  /**
   * Whether forward products with static leading dims (training steps) quantise their activations per row
   * too, by QuantizeLinear → MatMulIntegerToFloat ({@link rowwiseInt8ForwardMatMul}), instead of per
   * tensor inside DynamicQuantizeMatMul, whose activations span all 255 uint8 values.
   */
  readonly rowwiseForward: boolean;
}

/** The full int8 grid: 8-bit weights, activations per tensor inside DynamicQuantizeMatMul. */
export const INT8_GRID: Int8Grid = { weightLevels: 127, rowLevels: 127, rowwiseForward: false };

/**
 * The grid whose u8·s8 pairs fit 16 bits: 2 · 181 · 90 = 32580 ≤ 32767, with activations, gradients and
 * weights all on ±90, all row-wise in training, so ORT's fast u8·s8 kernel is exact without VNNI. 7-bit
 * weights with DynamicQuantizeMatMul's 255-level activations (ORT's `reduce_range`) fit too, but the
 * forward's weight grid is what LoRA gradients feel, so the levels are split evenly. On the fixture ViT
 * (`npx tsx bench/int8-grid-accuracy.ts`, bench/results/int8-grid-accuracy-lora.json), the lowest LoRA
 * gradient cosine to fp32 on the fixture batch and the mean 1 − cosine over 12 random batches of 8:
 * full grid 0.99320 and 1.04e-3, this grid 0.99699 and 1.55e-3, 7-bit weights 0.97457 (below the tests'
 * 0.99 gate) and 2.28e-3. Under an AVX2 CPUID mask the int8 LoRA step ran at 5.22–5.61 images/s on this
 * grid against 4.72–4.87 on the full grid written as uint8 (three alternating pairs of `npm run
 * bench:train -- --isa avx2 --methods lora --no-pytorch --precision int8 --int8-grid auto|full`).
 */
export const INT8_GRID_16BIT_PAIRS: Int8Grid = { weightLevels: 90, rowLevels: 90, rowwiseForward: true };

/**
 * The grid whose u8·s8 pairs fit 16 bits for weights that are themselves trained (full fine-tuning): the
 * weights keep the full ±127 (one scale per tensor, quantised at every step), activations and gradients
 * go per row on ±64 (2 · 129 · 127 = 32766). On the fixture ViT (`npx tsx bench/int8-grid-accuracy.ts
 * --method full --grids full,16bit,127/64/rows`, bench/results/int8-grid-accuracy-full.json), the lowest
 * gradient cosine to fp32 on the fixture batch is 0.99302, where {@link INT8_GRID_16BIT_PAIRS}, with its
 * weights on ±90, gives 0.98290 (the patch-embedding bias's) and the full grid 0.99640.
 */
export const INT8_GRID_16BIT_PAIRS_TRAINED: Int8Grid = {
  weightLevels: 127,
  rowLevels: 64,
  rowwiseForward: true,
};

/**
 * Whether every sum of two u8·s8 products any int8 product of the graph can form fits a signed 16-bit
 * lane: 2 · (largest uint8 operand: 255 for DynamicQuantizeMatMul, `activationMax` for MatMulInteger) ·
 * (largest |int8| weight: its int8 initializers' values, the grids of its in-graph quantisations) ≤ 32767.
 * A graph where it does not needs its weights written unsigned where ORT's u8·s8 kernel saturates
 * (runtime/session.ts). True for a graph without int8 products.
 */
export function int8PairsFit16Bits(graph: GraphBuilder): boolean {
  let activationMax = 0;
  let weightMax = 0;
  for (const node of graph.nodes) {
    if (node.op.onnxType === 'DynamicQuantizeMatMul') activationMax = 255;
    else if (node.op.name === MatMulIntegerOp.name || node.op.name === MatMulIntegerToFloatOp.name)
      activationMax = Math.max(activationMax, (node.attributes as { activationMax: number }).activationMax);
    else if (node.op.name === QuantizeTensorOp.name)
      weightMax = Math.max(weightMax, (node.attributes as { levels: number }).levels);
  }
  if (activationMax === 0) return true;
  const limit = Math.floor(INT16_MAX / (2 * activationMax));
  if (weightMax > limit) return false;
  for (const { tensor } of graph.initializers.values())
    if (tensor.dtype === 'int8') for (const q of tensor.data) if (q > limit || q < -limit) return false;
  return true;
}

const INT16_MAX = 32767;

/** The rows' grid of an int8 product's gradient, an attribute of its op (build time only). */
interface RowGrid {
  readonly rowLevels: number;
}

/**
 * x [..., K] · (Wq [K, N] int8 ∘ scale [N]) (+ bias [N]) → [..., N] float. The bias is added in the
 * product's output stage, not by a separate Add over the output. With a `grid` that asks for row-wise
 * forward products and static leading dims, x is quantised per row instead ({@link rowwiseForward}).
 */
export function int8MatMul(
  x: Value,
  wq: Value,
  scale: Value,
  bias?: Value,
  grid: Int8Grid = INT8_GRID,
): Value {
  const zeroPoint = x.graph.constantInt8(0);
  const inputs = bias ? [x, wq, scale, zeroPoint, bias] : [x, wq, scale, zeroPoint];
  const attributes = { rowLevels: grid.rowLevels };
  if (grid.rowwiseForward && staticLeadingDims(x)) {
    const y = rowwiseInt8ForwardMatMul(x, wq, zeroPoint, { columnScale: scale, rowLevels: grid.rowLevels });
    return rowwiseForward(Int8MatMulOp, bias ? add(y, bias) : y, inputs, attributes);
  }
  return x.graph.apply1(Int8MatMulOp, inputs, attributes);
}

/**
 * A forward product computed row-wise from standard ops, given the VJP of the DynamicQuantizeMatMul op it
 * stands in for (JAX's custom_vjp): inputs [y, ...that op's inputs], written as Identity(y). Its gradient
 * is that op's, so the backward walk never enters the quantisation that produced y.
 */
export const RowwiseForwardOp: OpDef<RowGrid & { readonly product: OpDef<RowGrid> }> = {
  name: 'int8_rowwise_forward',
  onnxType: 'Identity',
  lower: ([y], [output]) => [{ opType: 'Identity', inputs: [y!], outputs: [output!] }],
  inferShape(inputs, attributes, node) {
    const [y, ...productInputs] = inputs as TensorType[];
    const [expected] = attributes.product.inferShape(productInputs, attributes, node);
    if (formatShape(y!.shape) !== formatShape(expected!.shape) || y!.dtype !== expected!.dtype)
      throw new ShapeError(
        'int8_rowwise_forward',
        node,
        `the row-wise product ${formatShape(y!.shape)} is not the ${attributes.product.name} it stands for, ${formatShape(expected!.shape)}`,
      );
    return [y!];
  },
  vjp: (context) => {
    const { product, rowLevels } = context.attributes;
    const gradients = product.vjp!({
      ...context,
      inputs: context.inputs.slice(1),
      needs: context.needs.slice(1),
      attributes: { rowLevels },
    });
    return [null, ...gradients];
  },
};

function rowwiseForward(product: OpDef<RowGrid>, y: Value, inputs: Value[], attributes: RowGrid): Value {
  return y.graph.apply1(RowwiseForwardOp, [y, ...inputs], { ...attributes, product });
}

/**
 * ONNX QuantizeLinear with one scale for the whole tensor and an int8 zero point of 0: q = saturate(
 * round_half_even(w / s)) as int8. No gradient: the weight it quantises gets its gradient straight
 * through {@link SwitchBackMatMulOp}. `levels` (build time only) is the grid its scale was made for,
 * |q| ≤ levels, which {@link int8PairsFit16Bits} reads.
 */
export const QuantizeTensorOp: OpDef<{ levels: number }> = {
  name: 'quantize_tensor',
  onnxType: 'QuantizeLinear',
  inferShape(inputs, _attributes, node) {
    requireInputs('quantize_tensor', node, inputs, 3);
    const [w, tensorScale, zeroPoint] = inputs as [TensorType, TensorType, TensorType];
    requireDtype('quantize_tensor', node, w, 'float32', 'w');
    requireDtype('quantize_tensor', node, tensorScale, 'float32', 'scale');
    requireDtype('quantize_tensor', node, zeroPoint, 'int8', 'zero point');
    if (tensorScale.shape.length !== 0 || zeroPoint.shape.length !== 0)
      throw new ShapeError(
        'quantize_tensor',
        node,
        `needs a scalar scale and zero point, got ${formatShape(tensorScale.shape)} and ${formatShape(zeroPoint.shape)}`,
      );
    return [{ shape: w.shape, dtype: 'int8' }];
  },
};

/**
 * A float weight quantised in the graph with one scale for the tensor, s = max |W| / levels: SwitchBack's
 * weight quantisation, for a weight that is itself being trained and so is quantised again at every step.
 * Per tensor rather than per output channel (as model/quantize.ts does once for a frozen backbone) because
 * ORT's QuantizeLinear along axis 1 runs element by element: 1380 ms for a ViT-B/16's 72 block projections
 * on this 2-core EPYC, against one vectorised pass per tensor.
 */
export function quantizeTensor(w: Value, levels = 127): { wq: Value; scale: Value } {
  const graph = w.graph;
  const all = Array.from({ length: w.rank }, (_, axis) => axis);
  const magnitude = maximum(reduceMax(w, all), neg(reduceMin(w, all)));
  const tensorScale = add(scale(magnitude, 1 / levels), graph.constantFloat(1e-30));
  return {
    wq: graph.apply1(QuantizeTensorOp, [w, tensorScale, graph.constantInt8(0)], { levels }),
    scale: tensorScale,
  };
}

/**
 * SwitchBack (Wortsman et al. 2023) for a projection whose weight is trained (full fine-tuning with
 * `--backbone-precision int8`): inputs x [..., K], W [K, N] float, its per-step int8 copy Wq with its one
 * scale ({@link quantizeTensor}), and optionally the bias. The forward and the input gradient are int8
 * products, as for a frozen backbone ({@link Int8MatMulOp}); the weight's gradient is the float product
 * xᵀ·dy, passed straight through the quantisation to W. W itself is not read by the emitted node (it is
 * DynamicQuantizeMatMul on Wq): it is an input so that the gradient walk reaches it.
 */
export const SwitchBackMatMulOp: OpDef<RowGrid> = {
  name: 'switchback_matmul',
  onnxType: 'DynamicQuantizeMatMul',
  domain: MICROSOFT_DOMAIN,
  inferShape(inputs, attributes, node) {
    if (inputs.length !== 5 && inputs.length !== 6)
      throw new ShapeError(
        'switchback_matmul',
        node,
        `needs 5 inputs (x, weight, int8 weight, scale, zero point) or 6 (+ bias), got ${inputs.length}`,
      );
    const [x, w, wq, ...rest] = inputs as TensorType[];
    requireDtype('switchback_matmul', node, w!, 'float32', 'weight');
    if (formatShape(w!.shape) !== formatShape(wq!.shape))
      throw new ShapeError(
        'switchback_matmul',
        node,
        `the int8 copy ${formatShape(wq!.shape)} is not the weight's shape ${formatShape(w!.shape)}`,
      );
    return Int8MatMulOp.inferShape([x!, wq!, ...rest], attributes, node);
  },
  lower: ([x, , wq, ...rest], [y]) => [
    { opType: 'DynamicQuantizeMatMul', domain: MICROSOFT_DOMAIN, inputs: [x!, wq!, ...rest], outputs: [y!] },
  ],
  vjp: ({ gradOutputs: [g], inputs: [x, w, wq, wScale, wZeroPoint], needs, attributes }) => {
    const k = w!.dim(0) as number;
    const n = w!.dim(1) as number;
    // One weight scale: it multiplies the row scales of the dequantisation, not the gradient itself.
    const rows = { weightScale: wScale!, rowLevels: attributes.rowLevels };
    const dx = needs[0] ? rowwiseInt8MatMul(g!, transpose(wq!, [1, 0]), wZeroPoint!, rows) : null;
    const dw = needs[1] ? gemm(flattenLeading(x!, k), flattenLeading(g!, n), { transA: true }) : null;
    return [dx, dw, null, null, null, needs[5] ? g! : null];
  },
};

/**
 * x·W (+ bias) for a trained W, by {@link SwitchBackMatMulOp} on W's per-step int8 copy on the `grid`'s
 * weight levels (row-wise where the grid asks and the leading dims are static, as {@link int8MatMul}).
 */
export function switchBackMatMul(x: Value, w: Value, bias?: Value, grid: Int8Grid = INT8_GRID): Value {
  const graph = x.graph;
  const { wq, scale: wScale } = quantizeTensor(w, grid.weightLevels);
  const zeroPoint = graph.constantInt8(0);
  const inputs = bias ? [x, w, wq, wScale, zeroPoint, bias] : [x, w, wq, wScale, zeroPoint];
  const attributes = { rowLevels: grid.rowLevels };
  if (grid.rowwiseForward && staticLeadingDims(x)) {
    const y = rowwiseInt8ForwardMatMul(x, wq, zeroPoint, { columnScale: wScale, rowLevels: grid.rowLevels });
    return rowwiseForward(SwitchBackMatMulOp, bias ? add(y, bias) : y, inputs, attributes);
  }
  return graph.apply1(SwitchBackMatMulOp, inputs, attributes);
}
