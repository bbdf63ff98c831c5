import { MeloError, ShapeError } from '../errors.ts';
import { AddOp } from '../ops/elementwise.ts';
import { reduceSum } from '../ops/reduce.ts';
import { expandLike, reshape, reshapeLike } from '../ops/shape.ts';
import type { GraphBuilder, GraphNode, Value } from './builder.ts';
import { formatShape, type Shape } from './types.ts';

export interface BackwardOptions {
  /**
   * Gradient of the loss to start from (same shape as the loss). Defaults to a constant 1, which needs a
   * scalar loss ([] or [1]); with a seed the "loss" may have any shape and the result is a plain VJP.
   */
  readonly seed?: Value;
  /**
   * A parameter that no differentiable path links to the loss is an error by default, because it almost
   * always means the wrong value was passed. With this set it gets a zero gradient instead.
   */
  readonly allowUnused?: boolean;
}

/**
 * Appends the reverse-mode gradient of `loss` with respect to each parameter to the same graph, so that the
 * forward pass, the loss and the backward pass run as one ONNX Runtime session. Returns each parameter's
 * gradient (same shape as the parameter); mark them with `graph.output(grad, `${name}_grad`)` to read them.
 *
 * The walk is restricted to nodes on a path from a parameter to the loss, and a rule is asked only for the
 * inputs that lie on such a path, so frozen initializers never get gradient work beyond what their
 * neighbours need. Gradient nodes of node N live under the scope `N_Grad/`.
 *
 * A gradient that a rule returns null for (stop-gradient, sign, a max used as a shift) stops there: a
 * parameter reached only through such nodes gets a zero gradient. If building fails (a node on the path
 * has no gradient rule), the graph is left with the backward nodes built so far and should be discarded.
 */
export function buildBackward(
  graph: GraphBuilder,
  loss: Value,
  parameters: readonly Value[],
  options: BackwardOptions = {},
): Map<Value, Value> {
  checkArguments(graph, loss, parameters, options);
  const nodeCount = graph.nodes.length;

  // Forward from the parameters: which float values depend on one (the others never need a gradient).
  const dependsOnParameter = new Set<Value>(parameters);
  for (let index = 0; index < nodeCount; index++) {
    const node = graph.nodes[index]!;
    if (!node.inputs.some((input) => dependsOnParameter.has(input))) continue;
    for (const output of node.outputs) if (output.dtype === 'float32') dependsOnParameter.add(output);
  }

  // Backward from the loss, only along edges that carry a gradient: the nodes to differentiate, latest first.
  const reachesLoss = new Set<Value>([loss]);
  const path: GraphNode[] = [];
  for (let index = Math.min(loss.producer, nodeCount - 1); index >= 0; index--) {
    const node = graph.nodes[index]!;
    if (!node.outputs.some((output) => reachesLoss.has(output) && dependsOnParameter.has(output))) continue;
    path.push(node);
    for (const input of node.inputs) if (dependsOnParameter.has(input)) reachesLoss.add(input);
  }

  const unused = parameters.filter((parameter) => !reachesLoss.has(parameter));
  if (unused.length > 0 && !options.allowUnused) {
    throw new MeloError(
      'USAGE',
      `loss '${loss.name}' does not depend on parameter${unused.length > 1 ? 's' : ''} ${unused.map((p) => `'${p.name}'`).join(', ')} (pass allowUnused for a zero gradient)`,
    );
  }

  const grads = new Map<Value, Value>();
  grads.set(loss, options.seed ?? graph.constantFloat(loss.rank === 0 ? 1 : [1], loss.rank === 0 ? [] : [1]));

  for (const node of path) {
    const gradOutputs = node.outputs.map((output) => grads.get(output) ?? null);
    if (gradOutputs.every((grad) => grad === null)) continue;
    const vjp = node.op.vjp;
    if (vjp === undefined) {
      throw new MeloError(
        'UNSUPPORTED',
        `no gradient rule for op '${node.op.name}' (ONNX ${node.op.onnxType}) at node '${node.name}', which lies between the parameters and loss '${loss.name}'`,
      );
    }
    const needs = node.inputs.map((input) => dependsOnParameter.has(input));
    graph.scope(`${node.name}_Grad`, () => {
      const results = vjp({
        graph,
        inputs: node.inputs,
        outputs: node.outputs,
        gradOutputs,
        attributes: node.attributes,
        needs,
      });
      node.inputs.forEach((input, i) => {
        const grad = needs[i] ? (results[i] ?? null) : null;
        if (grad === null) return;
        const shaped = sumToShape(grad, input, node, i);
        const previous = grads.get(input);
        grads.set(
          input,
          previous === undefined ? shaped : graph.apply1(AddOp, [previous, shaped], {}, `${input.name}_grad`),
        );
      });
    });
  }

  const result = new Map<Value, Value>();
  for (const parameter of parameters) {
    result.set(parameter, grads.get(parameter) ?? zeroGradient(graph, parameter));
  }
  return result;
}

function checkArguments(
  graph: GraphBuilder,
  loss: Value,
  parameters: readonly Value[],
  options: BackwardOptions,
): void {
  if (loss.graph !== graph) throw new MeloError('USAGE', `loss '${loss.name}' belongs to another graph`);
  if (loss.dtype !== 'float32')
    throw new MeloError('USAGE', `loss '${loss.name}' must be float32, got ${loss.dtype}`);
  for (const parameter of parameters) {
    if (parameter.graph !== graph)
      throw new MeloError('USAGE', `parameter '${parameter.name}' belongs to another graph`);
    if (parameter.dtype !== 'float32') {
      throw new MeloError(
        'USAGE',
        `parameter '${parameter.name}' is ${parameter.dtype}; only float32 values have gradients`,
      );
    }
  }
  const { seed } = options;
  if (seed === undefined) {
    if (loss.rank > 1 || (loss.rank === 1 && loss.shape[0] !== 1)) {
      throw new MeloError(
        'USAGE',
        `loss '${loss.name}' has shape ${formatShape(loss.shape)}; a loss must be a scalar ([] or [1]) unless a seed gradient is given`,
      );
    }
    return;
  }
  if (seed.graph !== graph) throw new MeloError('USAGE', `seed '${seed.name}' belongs to another graph`);
  if (seed.dtype !== 'float32' || !sameShape(seed.shape, loss.shape)) {
    throw new MeloError(
      'USAGE',
      `seed '${seed.name}' ${formatShape(seed.shape)} ${seed.dtype} must be float32 with the loss's shape ${formatShape(loss.shape)}`,
    );
  }
}

function sameShape(a: Shape, b: Shape): boolean {
  return a.length === b.length && a.every((dim, axis) => dim === b[axis]);
}

/**
 * Un-broadcasts a rule's gradient to its input's shape: sum over the leading axes the input lacks and over
 * the axes where the input has size 1 (keeping them), then drop the leading ones with a Reshape.
 */
function sumToShape(grad: Value, input: Value, node: GraphNode, index: number): Value {
  const fail = (why: string): never => {
    throw new ShapeError(
      node.op.name,
      node.name,
      `gradient rule returned ${formatShape(grad.shape)} ${grad.dtype} for input ${index} '${input.name}' ${formatShape(input.shape)}: ${why}`,
    );
  };
  if (grad.dtype !== input.dtype) fail('dtype differs');
  if (sameShape(grad.shape, input.shape)) return grad;
  const lead = grad.rank - input.rank;
  if (lead < 0) fail('it has fewer axes than the input');
  const axes = [...Array(lead).keys()];
  input.shape.forEach((dim, axis) => {
    const gradDim = grad.shape[lead + axis];
    if (gradDim === dim) return;
    if (dim === 1) axes.push(lead + axis);
    else fail(`axis ${axis} does not broadcast to the input`);
  });
  const summed = reduceSum(grad, axes, true);
  return lead === 0 ? summed : reshapeToInput(summed, input);
}

function reshapeToInput(x: Value, input: Value): Value {
  const symbolic = input.shape.filter((dim) => typeof dim === 'string');
  if (symbolic.length === 0) return reshape(x, input.shape as number[]);
  // One run-time dim can be inferred by Reshape itself (-1); more need the input's shape at run time.
  if (symbolic.length === 1)
    return reshape(
      x,
      input.shape.map((dim) => (typeof dim === 'string' ? -1 : dim)),
    );
  return reshapeLike(x, input);
}

function zeroGradient(graph: GraphBuilder, parameter: Value): Value {
  return graph.scope(`${parameter.name}_Grad`, () => expandLike(graph.constantFloat(0), parameter));
}
