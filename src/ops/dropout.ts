import type { Value } from '../graph/builder.ts';
import type { OpDef } from '../graph/op.ts';
import { cast } from './cast.ts';
import { mul } from './elementwise.ts';
import { requireDtype, requireInputs } from './rules.ts';

export interface DropoutAttributes {
  readonly ratio: number;
  /** Seed of this node's generator; every node needs its own, or two masks of one shape would be equal. */
  readonly seed: number;
}

/**
 * ONNX Dropout in training mode (inverted dropout, as PyTorch's training mode): y = x·mask/(1-ratio), mask
 * 0 with probability `ratio`; outputs y and the boolean mask. ORT gives each node a generator seeded from
 * `seed`, so a fresh session replays the same masks and each run draws new ones. x must depend on a graph
 * input: ORT folds a Dropout of constants at load time as if it were inference.
 */
export const DropoutOp: OpDef<DropoutAttributes> = {
  name: 'dropout',
  onnxType: 'Dropout',
  outputCount: 2,
  emitAttributes: ({ seed }) => [{ name: 'seed', type: 'int', value: seed }],
  inferShape(inputs, _attributes, node) {
    requireInputs('dropout', node, inputs, 3);
    requireDtype('dropout', node, inputs[0]!, 'float32');
    requireDtype('dropout', node, inputs[1]!, 'float32', 'ratio');
    requireDtype('dropout', node, inputs[2]!, 'bool', 'training_mode');
    return [
      { shape: inputs[0]!.shape, dtype: 'float32' },
      { shape: inputs[0]!.shape, dtype: 'bool' },
    ];
  },
  // dy/dx = mask/(1-ratio), with the scale rounded to float32 as ORT's kernel does.
  vjp: ({ gradOutputs: [g], outputs: [, mask], attributes: { ratio }, needs }) => {
    if (!needs[0] || !g) return [null, null, null];
    const keptScale = Math.fround(1 / Math.fround(1 - Math.fround(ratio)));
    return [mul(g, mul(cast(mask!, 'float32'), g.graph.constantFloat(keptScale))), null, null];
  },
};

/** Inverted dropout as in PyTorch's training mode; returns y (see DropoutOp). */
export function dropout(x: Value, ratio: number, seed: number): Value {
  return dropoutWithMask(x, ratio, seed).output;
}

/** Inverted dropout that also returns the boolean keep-mask (true = kept). */
function dropoutWithMask(x: Value, ratio: number, seed: number): { output: Value; mask: Value } {
  if (!(ratio > 0 && ratio < 1)) throw new RangeError(`dropout ratio must be in (0, 1), got ${ratio}`);
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 31)
    throw new RangeError(`dropout seed must be an integer in [0, 2^31), got ${seed}`);
  const graph = x.graph;
  const [output, mask] = graph.apply(DropoutOp, [x, graph.constantFloat(ratio), graph.constantBool(true)], {
    ratio,
    seed,
  });
  return { output: output!, mask: mask! };
}
