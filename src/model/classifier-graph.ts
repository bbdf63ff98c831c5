/**
 * The one recipe for every classifier graph melo runs: training, `predict`/`eval`, serving, explanations
 * and ONNX export. It is a ViT (model/vit.ts, which knows nothing of LoRA) plus two choices:
 *
 * - where the LoRA factors come from (`LoraSource`; PEFT's idea that a layer type decides how the low-rank
 *   path attaches): graph inputs (training and per-task inference), stacked tensors gathered per row by a
 *   task index (serving: one batch, many tasks), folded into the dense weights (export), or none;
 * - where the head comes from (`HeadSource`): the checkpoint's own classifier, a task head fed as graph
 *   inputs, stacked heads gathered per row, or none (features only). Every head is stored
 *   [classes, features] and applied as Gemm(transB) (per row: a batched MatMul against its transpose).
 *
 * `project` is the seam for a per-projection precision (e.g. int8 weights): it computes x·W for every
 * projection of the backbone; the default is the float MatMul.
 */
import { resamplePositionEmbedding } from '../checkpoints/resample.ts';
import type { GraphBuilder, Value } from '../graph/builder.ts';
import type { Dim } from '../graph/types.ts';
import { add } from '../ops/elementwise.ts';
import { gather } from '../ops/gather.ts';
import { gemm, matmul } from '../ops/matmul.ts';
import { reshape, transposeLast } from '../ops/shape.ts';
import type { Adapter } from './adapter.ts';
import { type LoraSlot, projectionShape, slotKey } from './anatomy.ts';
import type { Backbone } from './backbone.ts';
import { type LoraDropoutStream, loraBranch, mergeLoraIntoWeights } from './lora.ts';
import type { LoraConfig } from './lora-config.ts';
import { int8Projections, switchBackProjections } from './quantize.ts';
import { type LinearDelta, type ProjectionProduct, pixelInput, ViTGraph } from './vit.ts';
import { patchGrid, pooledFeatureSize } from './vit-config.ts';
import { type ViTWeights, WeightBinder } from './weights.ts';

/** Graph input names of a task head fed at run time. */
export const TASK_HEAD = { weight: 'task_head.weight', bias: 'task_head.bias' } as const;

/** Symbolic dims of the stacked serving inputs: adapters loaded, padded rank, padded class count. */
export const STACK_DIMS = { tasks: 'tasks', rank: 'rank', classes: 'classes' } as const;

/** Input names of the serving graph (the stacked factors are `stack.<slot key>.A` / `.B`). */
export const STACK_INPUTS = {
  taskIndex: 'task_index',
  headWeight: 'stack.head.weight',
  headBias: 'stack.head.bias',
} as const;

export function stackedSlotInputNames(slot: LoraSlot): { A: string; B: string } {
  const key = slotKey(slot);
  return { A: `stack.${key}.A`, B: `stack.${key}.B` };
}

/** Where the LoRA factors come from. */
export type LoraSource =
  | { readonly kind: 'none' }
  /** A and B of every slot are graph inputs `lora.<slot key>.A/B` (training: they get gradients). */
  | { readonly kind: 'inputs'; readonly lora: LoraConfig; readonly dropout?: LoraDropoutStream }
  /** Stacked [tasks, …] inputs, each row's factors gathered by `task_index` (scale folded into B). */
  | { readonly kind: 'stacked'; readonly slots: readonly LoraSlot[] }
  /** Folded into the dense weights before they become initializers (W + scale·Aᵀ·Bᵀ). */
  | { readonly kind: 'merged'; readonly adapter: Adapter };

/** Where the classifier head comes from. */
export type HeadSource =
  | { readonly kind: 'none' }
  /** The checkpoint's own classifier (`head.weight`/`head.bias` of the weights), as initializers. */
  | { readonly kind: 'checkpoint' }
  /** Given tensors, as initializers (an exported task). */
  | {
      readonly kind: 'fixed';
      readonly weight: Adapter['head']['weight'];
      readonly bias: Adapter['head']['bias'];
    }
  /** Graph inputs TASK_HEAD.weight [classes, F] and TASK_HEAD.bias [classes]. */
  | { readonly kind: 'inputs'; readonly classes: number }
  /** Stacked inputs [tasks, classes, F] / [tasks, classes], gathered per row by `task_index`. */
  | { readonly kind: 'stacked' };

export interface ClassifierGraphSpec {
  readonly backbone: Backbone;
  readonly batch: Dim;
  /** Input resolution; default the backbone's preprocessing size (position embeddings are resampled). */
  readonly imageSize?: readonly [number, number];
  /** Name of the pixel input (default 'pixels'; exported models use 'pixel_values'). */
  readonly pixelsName?: string;
  readonly lora: LoraSource;
  readonly head: HeadSource;
  /** Full fine-tuning: every backbone weight is a graph input instead of an initializer. */
  readonly trainBackbone?: boolean;
  /**
   * 'cls' (default) runs the last block for the CLS token only (exact for CLS pooling, ~7% fewer
   * products; explanations too, whose rollout needs only the CLS row); 'all' keeps every token.
   */
  readonly lastBlock?: 'cls' | 'all';
  /** Seam for a per-projection precision: computes x·W for each backbone projection (default MatMul). */
  readonly project?: ProjectionProduct;
}

export interface ClassifierGraph {
  readonly pixels: Value;
  /** [batch] int64, for the stacked sources. */
  readonly taskIndex: Value | undefined;
  /** Pooled features [batch, F] (the input of the head). */
  readonly features: Value;
  /** [batch, classes]; undefined with head 'none'. */
  readonly logits: Value | undefined;
  /** Graph inputs that hold weights, in declaration order (LoRA factors, head; backbone for full). */
  readonly weightInputs: Map<string, Value>;
  readonly imageSize: readonly [number, number];
}

/** Builds the classifier graph of `spec` into `graph` (outputs are the caller's to mark). */
export function buildClassifierGraph(graph: GraphBuilder, spec: ClassifierGraphSpec): ClassifierGraph {
  const { backbone } = spec;
  const config = backbone.config;
  const imageSize = spec.imageSize ?? backbone.preprocess.inputSize;
  const pixels =
    spec.pixelsName === undefined
      ? pixelInput(graph, config, spec.batch, imageSize)
      : graph.input(spec.pixelsName, [spec.batch, config.channels, imageSize[0], imageSize[1]]);
  const stacked = spec.lora.kind === 'stacked' || spec.head.kind === 'stacked';
  const taskIndex = stacked ? graph.input(STACK_INPUTS.taskIndex, [spec.batch], 'int64') : undefined;

  let weights: ViTWeights = weightsForResolution(backbone, imageSize);
  if (spec.lora.kind === 'merged') weights = mergeLoraIntoWeights(weights, config, spec.lora.adapter);
  if (spec.head.kind === 'fixed') {
    weights = new Map(weights);
    weights.set('head.weight', spec.head.weight);
    weights.set('head.bias', spec.head.bias);
  }
  const trained = spec.trainBackbone
    ? new Set([...weights.keys()].filter((name) => !name.startsWith('head.')))
    : new Set<string>();
  const binder = new WeightBinder(graph, weights, trained);
  const weightInputs = new Map<string, Value>();
  const declare = (name: string, shape: readonly number[]) => {
    const existing = weightInputs.get(name);
    if (existing) return existing;
    const value = graph.input(name, shape);
    weightInputs.set(name, value);
    return value;
  };

  const delta = loraDelta(graph, backbone, spec.lora, declare, taskIndex);
  // int8: a frozen backbone's projections multiply by int8 copies made once; a trained backbone's weights
  // are graph inputs, quantised again in the graph at every step (SwitchBack, ops/quantized.ts).
  const project =
    spec.project ??
    (backbone.precision === 'int8'
      ? spec.trainBackbone
        ? switchBackProjections(backbone.int8Grid)
        : int8Projections(weights, backbone.int8Weights, backbone.int8Grid)
      : undefined);
  const vit = new ViTGraph({
    config,
    params: binder,
    imageSize,
    ...(delta ? { delta } : {}),
    ...(project ? { project } : {}),
  });
  const features =
    spec.lastBlock === 'all' ? vit.pool(vit.forwardFeatures(pixels)) : vit.forwardPooled(pixels);
  for (const name of binder.inputNames()) weightInputs.set(name, binder.get(name));
  const logits = applyHead(graph, spec.head, features, vit, pooledFeatureSize(config), declare, taskIndex);
  return { pixels, taskIndex, features, logits, weightInputs, imageSize };
}

/** The LoRA strategy's delta hook for ViTGraph (none for 'none' and 'merged'). */
function loraDelta(
  graph: GraphBuilder,
  backbone: Backbone,
  source: LoraSource,
  declare: (name: string, shape: readonly number[]) => Value,
  taskIndex: Value | undefined,
): LinearDelta | undefined {
  const config = backbone.config;
  switch (source.kind) {
    case 'none':
    case 'merged':
      return undefined;
    case 'inputs':
      return loraBranch(config, source.lora, declare, source.dropout).delta;
    case 'stacked': {
      const { tasks, rank } = STACK_DIMS;
      const wanted = new Set(source.slots.map(slotKey));
      return (slot, x) => {
        if (!wanted.has(slotKey(slot))) return null;
        const shape = projectionShape(config, slot.target);
        const names = stackedSlotInputNames(slot);
        const A = graph.input(names.A, [tasks, rank, shape.in]);
        const B = graph.input(names.B, [tasks, shape.out, rank]);
        // Gather first: only the batch's rows of the stack are touched, however many adapters are loaded.
        const rowA = gather(A, taskIndex!);
        const rowB = gather(B, taskIndex!);
        return matmul(matmul(x, transposeLast(rowA)), transposeLast(rowB));
      };
    }
  }
}

function applyHead(
  graph: GraphBuilder,
  head: HeadSource,
  features: Value,
  vit: ViTGraph,
  width: number,
  declare: (name: string, shape: readonly number[]) => Value,
  taskIndex: Value | undefined,
): Value | undefined {
  switch (head.kind) {
    case 'none':
      return undefined;
    case 'checkpoint':
    case 'fixed':
      return vit.forwardHead(features);
    case 'inputs': {
      const weight = declare(TASK_HEAD.weight, [head.classes, width]);
      const bias = declare(TASK_HEAD.bias, [head.classes]);
      return graph.scope('task_head', () => add(gemm(features, weight, { transB: true }), bias));
    }
    case 'stacked': {
      const { tasks, classes } = STACK_DIMS;
      const weight = graph.input(STACK_INPUTS.headWeight, [tasks, classes, width]);
      const bias = graph.input(STACK_INPUTS.headBias, [tasks, classes]);
      return graph.scope('task_head', () => {
        const rows = reshape(features, [0, 1, width]);
        const perRow = matmul(rows, transposeLast(gather(weight, taskIndex!)));
        return add(reshape(perRow, [0, -1]), gather(bias, taskIndex!));
      });
    }
  }
}

/**
 * The backbone's weights with the position embedding resampled to `imageSize` when its grid differs, in
 * the source library's way (`backbone.positionInterpolation`, checkpoints/resample.ts).
 */
export function weightsForResolution(backbone: Backbone, imageSize: readonly [number, number]): ViTWeights {
  const oldGrid = patchGrid(backbone.config);
  const newGrid = patchGrid(backbone.config, imageSize);
  if (oldGrid[0] === newGrid[0] && oldGrid[1] === newGrid[1]) return backbone.weights;
  const weights = new Map(backbone.weights);
  // The CLS row keeps its position (when it has one); the grid is resampled as the source library does.
  const prefix = backbone.config.positionEmbedding === 'patches' ? 0 : 1;
  const mode = backbone.positionInterpolation ?? 'bicubic';
  weights.set(
    'pos_embed',
    resamplePositionEmbedding(backbone.weights.get('pos_embed')!, oldGrid, newGrid, prefix, mode),
  );
  return weights;
}
