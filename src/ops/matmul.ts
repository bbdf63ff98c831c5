import { ShapeError } from '../errors.ts';
import type { Value } from '../graph/builder.ts';
import { MICROSOFT_DOMAIN, type OpDef } from '../graph/op.ts';
import { formatShape, type Shape, type TensorType } from '../graph/types.ts';
import { broadcastShapes, requireInputs, requireSameDtype } from './rules.ts';
import { ReshapeDynamicOp, reshape, reshapeLike, transposeLast } from './shape.ts';

/** Numpy matmul for rank ≥ 2; leading (batch) dims broadcast. */
export const MatMulOp: OpDef<Record<string, never>> = {
  name: 'matmul',
  onnxType: 'MatMul',
  inferShape(inputs, _attributes, node) {
    requireInputs('matmul', node, inputs, 2);
    const dtype = requireSameDtype('matmul', node, inputs);
    const [a, b] = [inputs[0]!.shape, inputs[1]!.shape];
    if (a.length < 2 || b.length < 2)
      throw new ShapeError('matmul', node, `needs rank ≥ 2, got ${formatShape(a)} · ${formatShape(b)}`);
    if (a[a.length - 1] !== b[b.length - 2]) {
      throw new ShapeError('matmul', node, `inner dims differ: ${formatShape(a)} · ${formatShape(b)}`);
    }
    const batch = broadcastShapes('matmul', node, [a.slice(0, -2), b.slice(0, -2)]);
    return [{ shape: [...batch, a[a.length - 2]!, b[b.length - 1]!], dtype }];
  },
  vjp: ({ gradOutputs: [g], inputs: [a, b], needs }) => {
    const grad = g!;
    if (b!.rank === 2 && a!.rank > 2) {
      // x[..., in] · W[in, out]: fold the leading dims so both gradients are single 2-D products, and the
      // frozen W is reused through transB instead of being stored transposed a second time.
      const inFeatures = a!.dim(-1) as number;
      const outFeatures = b!.dim(-1) as number;
      const grad2d = flattenLeading(grad, outFeatures);
      const dA = needs[0] ? reshapeLike(gemm(grad2d, b!, { transB: true }), a!) : null;
      const dB = needs[1] ? gemm(flattenLeading(a!, inFeatures), grad2d, { transA: true }) : null;
      return [dA, dB];
    }
    return [
      needs[0] ? matmul(grad, transposeLast(b!)) : null,
      needs[1] ? matmul(transposeLast(a!), grad) : null,
    ];
  },
};

/**
 * [..., n] → [rows, n]. With a symbolic leading dim the row count has no static size, so both flattened
 * operands get the same derived name (e.g. 'batch*3') for Gemm's inner-dim check; Reshape infers it (-1).
 */
export function flattenLeading(x: Value, last: number): Value {
  const leading = x.shape.slice(0, -1);
  if (leading.every((dim) => typeof dim === 'number')) return reshape(x, [-1, last]);
  const like = [leading.join('*'), last];
  return x.graph.apply1(ReshapeDynamicOp, [x, x.graph.constantInt64([-1, last])], { like });
}

interface GemmAttributes {
  transA: number;
  transB: number;
  alpha: number;
  beta: number;
}

/** 2-D general matrix product alpha·op(A)·op(B) (+ beta·C), used mainly by gradients. */
export const GemmOp: OpDef<GemmAttributes> = {
  name: 'gemm',
  onnxType: 'Gemm',
  emitAttributes: ({ transA, transB, alpha, beta }) => [
    { name: 'transA', type: 'int', value: transA },
    { name: 'transB', type: 'int', value: transB },
    { name: 'alpha', type: 'float', value: alpha },
    { name: 'beta', type: 'float', value: beta },
  ],
  inferShape(inputs, { transA, transB }, node) {
    const dtype = requireSameDtype('gemm', node, inputs);
    const [a, b] = [inputs[0]!.shape, inputs[1]!.shape];
    if (a.length !== 2 || b.length !== 2)
      throw new ShapeError('gemm', node, `needs 2-D inputs, got ${formatShape(a)}, ${formatShape(b)}`);
    const [m, kA] = transA ? [a[1]!, a[0]!] : [a[0]!, a[1]!];
    const [kB, n] = transB ? [b[1]!, b[0]!] : [b[0]!, b[1]!];
    if (kA !== kB)
      throw new ShapeError(
        'gemm',
        node,
        `inner dims differ: ${formatShape(a)}${transA ? 'ᵀ' : ''} · ${formatShape(b)}${transB ? 'ᵀ' : ''}`,
      );
    return [{ shape: [m, n], dtype }];
  },
  vjp: ({ gradOutputs: [g], inputs: [a, b], attributes: { transA, transB, alpha }, needs }) => {
    // Y = α·op(A)·op(B): dop(A) = α·G·op(B)ᵀ, dop(B) = α·op(A)ᵀ·G, then undo the op.
    const grad = g!;
    let dA: Value | null = null;
    let dB: Value | null = null;
    if (needs[0]) {
      dA = transA
        ? gemm(b!, grad, { transA: !!transB, transB: true, alpha })
        : gemm(grad, b!, { transB: !transB, alpha });
    }
    if (needs[1]) {
      dB = transB
        ? gemm(grad, a!, { transA: true, transB: !!transA, alpha })
        : gemm(a!, grad, { transA: !transA, alpha });
    }
    return [dA, dB];
  },
};

export const matmul = (a: Value, b: Value): Value => a.graph.apply1(MatMulOp, [a, b], {});

export function gemm(
  a: Value,
  b: Value,
  options: { transA?: boolean; transB?: boolean; alpha?: number } = {},
): Value {
  return a.graph.apply1(GemmOp, [a, b], {
    transA: options.transA ? 1 : 0,
    transB: options.transB ? 1 : 0,
    alpha: options.alpha ?? 1,
    beta: 1,
  });
}

interface FusedMatMulAttributes {
  transA: number;
  transB: number;
  alpha: number;
}

/**
 * ONNX Runtime's com.microsoft FusedMatMul: alpha·op(A)·op(B) over the last two dims, leading (batch) dims
 * equal. Written by hand where ORT would not fuse a Transpose into MatMul itself: its transpose optimiser
 * merges the transpose of a head split with a last-two-dims transpose into one general Transpose, which
 * then runs as its own pass over the tensor (measured in attention's backward, ops/attention.ts). No
 * gradient: it only forms gradients.
 */
export const FusedMatMulOp: OpDef<FusedMatMulAttributes> = {
  name: 'fused_matmul',
  onnxType: 'FusedMatMul',
  domain: MICROSOFT_DOMAIN,
  emitAttributes: ({ transA, transB, alpha }) => [
    { name: 'transA', type: 'int', value: transA },
    { name: 'transB', type: 'int', value: transB },
    { name: 'alpha', type: 'float', value: alpha },
  ],
  inferShape(inputs, attributes, node) {
    requireInputs('fused_matmul', node, inputs, 2);
    return [fusedMatMulType('fused_matmul', node, inputs[0]!, inputs[1]!, attributes)];
  },
};

/** The output type of alpha·op(A)·op(B) with equal batch dims: FusedMatMul's shape rule, shared with attention. */
export function fusedMatMulType(
  op: string,
  node: string,
  a: TensorType,
  b: TensorType,
  { transA, transB }: { transA: number; transB: number },
): TensorType {
  const dtype = requireSameDtype(op, node, [a, b]);
  if (a.shape.length < 2 || a.shape.length !== b.shape.length)
    throw new ShapeError(
      op,
      node,
      `needs equal ranks ≥ 2, got ${formatShape(a.shape)} · ${formatShape(b.shape)}`,
    );
  const rows = (s: Shape, trans: number) => s[s.length - (trans ? 1 : 2)]!;
  const cols = (s: Shape, trans: number) => s[s.length - (trans ? 2 : 1)]!;
  const batchA = a.shape.slice(0, -2);
  const batchB = b.shape.slice(0, -2);
  if (cols(a.shape, transA) !== rows(b.shape, transB) || batchA.some((dim, i) => dim !== batchB[i]))
    throw new ShapeError(
      op,
      node,
      `cannot multiply ${formatShape(a.shape)}${transA ? 'ᵀ' : ''} · ${formatShape(b.shape)}${transB ? 'ᵀ' : ''}`,
    );
  return { shape: [...batchA, rows(a.shape, transA), cols(b.shape, transB)], dtype };
}

/** alpha·op(a)·op(b) with ORT's FusedMatMul (batched, equal leading dims). */
export function fusedMatMul(
  a: Value,
  b: Value,
  options: { transA?: boolean; transB?: boolean; alpha?: number } = {},
): Value {
  return a.graph.apply1(FusedMatMulOp, [a, b], {
    transA: options.transA ? 1 : 0,
    transB: options.transB ? 1 : 0,
    alpha: options.alpha ?? 1,
  });
}
