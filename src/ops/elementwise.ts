import type { Value } from '../graph/builder.ts';
import type { OpDef } from '../graph/op.ts';
import { broadcastShapes, requireInputs, requireSameDtype } from './rules.ts';

type NoAttributes = Record<string, never>;

function binary(name: string, onnxType: string, vjp: OpDef<NoAttributes>['vjp']): OpDef<NoAttributes> {
  return {
    name,
    onnxType,
    inferShape(inputs, _attributes, node) {
      requireInputs(name, node, inputs, 2);
      const dtype = requireSameDtype(name, node, inputs);
      return [{ shape: broadcastShapes(name, node, [inputs[0]!.shape, inputs[1]!.shape]), dtype }];
    },
    vjp,
  };
}

function unary(name: string, onnxType: string, vjp: OpDef<NoAttributes>['vjp']): OpDef<NoAttributes> {
  return {
    name,
    onnxType,
    inferShape(inputs, _attributes, node) {
      requireInputs(name, node, inputs, 1);
      return [{ shape: inputs[0]!.shape, dtype: inputs[0]!.dtype }];
    },
    vjp,
  };
}

// Gradients below have the broadcast (output) shape; backward.ts sums them down to each input's shape.

export const AddOp = binary('add', 'Add', ({ gradOutputs: [g] }) => [g!, g!]);
export const SubOp = binary('sub', 'Sub', ({ gradOutputs: [g], needs }) => [g!, needs[1] ? neg(g!) : null]);
export const MulOp = binary('mul', 'Mul', ({ gradOutputs: [g], inputs: [a, b], needs }) => [
  needs[0] ? mul(g!, b!) : null,
  needs[1] ? mul(g!, a!) : null,
]);
export const DivOp = binary('div', 'Div', ({ gradOutputs: [g], inputs: [, b], outputs: [y], needs }) => [
  needs[0] ? div(g!, b!) : null,
  // d(a/b)/db = -a/b² = -y/b
  needs[1] ? neg(div(mul(g!, y!), b!)) : null,
]);

/** Elementwise max of two tensors; no gradient: it only sizes a quantisation scale (ops/quantized.ts). */
export const MaxOp = binary('max', 'Max', () => [null, null]);

export const NegOp = unary('neg', 'Neg', ({ gradOutputs: [g] }) => [neg(g!)]);
export const ExpOp = unary('exp', 'Exp', ({ gradOutputs: [g], outputs: [y] }) => [mul(g!, y!)]);
export const LogOp = unary('log', 'Log', ({ gradOutputs: [g], inputs: [x] }) => [div(g!, x!)]);
export const SqrtOp = unary('sqrt', 'Sqrt', ({ gradOutputs: [g], outputs: [y] }) => [
  div(g!, mul(y!, y!.graph.constantFloat(2))),
]);
export const SigmoidOp = unary('sigmoid', 'Sigmoid', ({ gradOutputs: [g], outputs: [y] }) => [
  mul(g!, mul(y!, sub(y!.graph.constantFloat(1), y!))),
]);
export const AbsOp = unary('abs', 'Abs', ({ gradOutputs: [g], inputs: [x] }) => [mul(g!, sign(x!))]);
export const SignOp = unary('sign', 'Sign', () => [null]);
export const ReluOp = unary('relu', 'Relu', ({ gradOutputs: [g], outputs: [y] }) => [mul(g!, sign(y!))]);
export const ErfOp = unary('erf', 'Erf', ({ gradOutputs: [g], inputs: [x] }) => {
  // d erf(x)/dx = 2/√π · exp(-x²)
  const graph = x!.graph;
  return [mul(g!, mul(graph.constantFloat(2 / Math.sqrt(Math.PI)), exp(neg(mul(x!, x!)))))];
});
/** Passes values through and blocks gradients (used where the math makes the gradient vanish, e.g. a max shift). */
export const StopGradientOp = unary('stop_gradient', 'Identity', () => [null]);

export const add = (a: Value, b: Value): Value => a.graph.apply1(AddOp, [a, b], {});
export const sub = (a: Value, b: Value): Value => a.graph.apply1(SubOp, [a, b], {});
export const mul = (a: Value, b: Value): Value => a.graph.apply1(MulOp, [a, b], {});
export const div = (a: Value, b: Value): Value => a.graph.apply1(DivOp, [a, b], {});
export const neg = (x: Value): Value => x.graph.apply1(NegOp, [x], {});
export const maximum = (a: Value, b: Value): Value => a.graph.apply1(MaxOp, [a, b], {});
export const exp = (x: Value): Value => x.graph.apply1(ExpOp, [x], {});
export const log = (x: Value): Value => x.graph.apply1(LogOp, [x], {});
export const sqrt = (x: Value): Value => x.graph.apply1(SqrtOp, [x], {});
export const sigmoid = (x: Value): Value => x.graph.apply1(SigmoidOp, [x], {});
export const abs = (x: Value): Value => x.graph.apply1(AbsOp, [x], {});
export const sign = (x: Value): Value => x.graph.apply1(SignOp, [x], {});
export const relu = (x: Value): Value => x.graph.apply1(ReluOp, [x], {});
export const erf = (x: Value): Value => x.graph.apply1(ErfOp, [x], {});
export const stopGradient = (x: Value): Value => x.graph.apply1(StopGradientOp, [x], {});

export const scale = (x: Value, factor: number): Value => mul(x, x.graph.constantFloat(factor));
export const addScalar = (x: Value, value: number): Value => add(x, x.graph.constantFloat(value));

/**
 * Exact GELU, 0.5·x·(1 + erf(x/√2)), as one op with its own VJP. It is written into the ONNX file as
 * Div(x, √2) → Erf → Add 1 → Mul(x·0.5, ·): the form ORT 1.30's GeluFusion matches (not Mul by 1/√2),
 * after which it folds the preceding bias Add into one BiasGelu kernel (measured: ~3.5% of a ViT-B/16
 * forward, logits bit-identical; docs/benchmarks.md).
 *
 * Why one op and not those five: differentiated node by node, the backward read the forward's
 * intermediates (erf, 1 + erf, x·0.5), so in a training graph ORT could not fuse the forward at all (five
 * passes over [tokens, 3072] and a bias Add per block, and three more such tensors kept for the backward).
 * The VJP below reads x alone; the forward then fuses in training too. ViT-B/16 int8 LoRA step at batch 8
 * on this 2-core EPYC, ORT profile: 885 → about 800 ms.
 */
export const GeluOp: OpDef<NoAttributes> = {
  name: 'gelu',
  onnxType: 'Gelu',
  inferShape(inputs, _attributes, node) {
    requireInputs('gelu', node, inputs, 4);
    requireSameDtype('gelu', node, inputs);
    return [{ shape: inputs[0]!.shape, dtype: inputs[0]!.dtype }];
  },
  lowerIntermediates: ['scaled', 'erf', 'inner', 'half_x'],
  lower: ([x, sqrt2, one, half], [y], [scaled, erfOf, inner, halfX]) => {
    return [
      { opType: 'Div', inputs: [x!, sqrt2!], outputs: [scaled!] },
      { opType: 'Erf', inputs: [scaled!], outputs: [erfOf!] },
      { opType: 'Add', inputs: [erfOf!, one!], outputs: [inner!] },
      { opType: 'Mul', inputs: [x!, half!], outputs: [halfX!] },
      { opType: 'Mul', inputs: [halfX!, inner!], outputs: [y!] },
    ];
  },
  // gelu'(x) = Φ(x) + x·φ(x) with u = x/√2: Φ(x) = ½·(1 + erf(u)) in one HardSigmoid pass (erf lies in
  // [−1, 1], so its clip never acts), x·φ(x) = u·exp(ln(1/√π) − u²) with the constant in the exponent.
  // Nine passes over the tensor in all (ten before HardSigmoid; int8 LoRA step's GELU backward, ORT profile,
  // two runs each way: 92 and 101 → 54 and 82 ms).
  vjp: ({ gradOutputs: [g], inputs: [x] }) => {
    // Mul by 1/√2, not the forward's Div by √2: ORT's common-subexpression elimination would otherwise
    // merge the two and hand the backward the forward's intermediates, which stops the forward fusing.
    const u = scale(x!, Math.SQRT1_2);
    const cdf = hardSigmoid(erf(u), 0.5, 0.5);
    const xPdf = mul(u, exp(sub(x!.graph.constantFloat(Math.log(1 / Math.sqrt(Math.PI))), mul(u, u))));
    return [mul(g!, add(cdf, xPdf)), null, null, null];
  },
};

/**
 * ONNX HardSigmoid, max(0, min(1, alpha·x + beta)): one pass for an affine map whose result is known to
 * lie in [0, 1] (GELU's VJP). No gradient: it only forms gradients.
 */
export const HardSigmoidOp: OpDef<{ alpha: number; beta: number }> = {
  name: 'hard_sigmoid',
  onnxType: 'HardSigmoid',
  emitAttributes: ({ alpha, beta }) => [
    { name: 'alpha', type: 'float', value: alpha },
    { name: 'beta', type: 'float', value: beta },
  ],
  inferShape(inputs, _attributes, node) {
    requireInputs('hard_sigmoid', node, inputs, 1);
    return [{ shape: inputs[0]!.shape, dtype: inputs[0]!.dtype }];
  },
};

export const hardSigmoid = (x: Value, alpha: number, beta: number): Value =>
  x.graph.apply1(HardSigmoidOp, [x], { alpha, beta });

export function gelu(x: Value): Value {
  const graph = x.graph;
  return graph.apply1(
    GeluOp,
    [x, graph.constantFloat(Math.SQRT2), graph.constantFloat(1), graph.constantFloat(0.5)],
    {},
  );
}
