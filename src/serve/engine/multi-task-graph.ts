import type { Backbone } from '../../checkpoints/load.ts';
import type { GraphBuilder, Value } from '../../graph/builder.ts';
import { type LoraSlot, projectionShape, slotKey } from '../../model/anatomy.ts';
import { weightsForResolution } from '../../model/inference.ts';
import { type LinearDelta, pixelInput, ViTGraph } from '../../model/vit.ts';
import { WeightBinder } from '../../model/weights.ts';
import { add } from '../../ops/elementwise.ts';
import { gather } from '../../ops/gather.ts';
import { matmul } from '../../ops/matmul.ts';
import { reshape, transposeLast } from '../../ops/shape.ts';

/** A projection that some loaded adapter plugs into: the graph gets a stacked A/B input pair for it. */
export type { LoraSlot };

/** Symbolic dims of the stacked inputs: adapters loaded, padded rank, padded class count. */
export const STACK_DIMS = { tasks: 'tasks', rank: 'rank', classes: 'classes' } as const;

export const MULTI_TASK_INPUTS = {
  pixels: 'pixels',
  taskIndex: 'task_index',
  headWeight: 'stack.head.weight',
  headBias: 'stack.head.bias',
} as const;

export function slotInputNames(slot: LoraSlot): { A: string; B: string } {
  const key = slotKey(slot);
  return { A: `stack.${key}.A`, B: `stack.${key}.B` };
}

export interface MultiTaskGraph {
  readonly pixels: Value;
  readonly taskIndex: Value;
  /** [batch, classes]: each row's logits under its own task's head, padded to the widest head. */
  readonly logits: Value;
}

export interface MultiTaskGraphOptions {
  /**
   * Run the last block on every token, as explanations need (each block's whole attention matrix); the
   * default runs it for the CLS token only (ViTGraph.forwardPooled), which gives the same logits.
   */
  readonly fullLastBlock?: boolean;
}

/**
 * The serving graph: one ViT forward for a batch whose rows may belong to different tasks. Each row's
 * LoRA factors and head are gathered from stacked adapter tensors by its task index, and the low-rank
 * path runs as batched products [B, N, in]·[B, in, r]·[B, r, out] (the Punica / S-LoRA batched
 * low-rank product, in plain ONNX). Frozen weights are initializers; stacks are inputs with symbolic
 * task, rank and class dims, so a registry change only feeds other tensors. The graph depends only on
 * which (layer, target) slots exist.
 */
export function buildMultiTaskGraph(
  graph: GraphBuilder,
  backbone: Backbone,
  slots: readonly LoraSlot[],
  options: MultiTaskGraphOptions = {},
): MultiTaskGraph {
  const config = backbone.config;
  const imageSize = backbone.preprocess.inputSize;
  const { tasks, rank, classes } = STACK_DIMS;
  const pixels = pixelInput(graph, config, 'batch', imageSize);
  const taskIndex = graph.input(MULTI_TASK_INPUTS.taskIndex, ['batch'], 'int64');
  const wanted = new Set(slots.map(slotKey));
  const delta: LinearDelta = (slot, x) => {
    if (!wanted.has(slotKey(slot))) return null;
    const shape = projectionShape(config, slot.target);
    const names = slotInputNames(slot);
    const A = graph.input(names.A, [tasks, rank, shape.in]);
    const B = graph.input(names.B, [tasks, shape.out, rank]);
    // Gather first: only the batch's rows of the stack are touched, however many adapters are loaded.
    const rowA = gather(A, taskIndex);
    const rowB = gather(B, taskIndex);
    return matmul(matmul(x, transposeLast(rowA)), transposeLast(rowB));
  };
  const binder = new WeightBinder(graph, weightsForResolution(backbone, imageSize));
  const vit = new ViTGraph({ config, params: binder, imageSize, delta });
  const features = options.fullLastBlock ? vit.pool(vit.forwardFeatures(pixels)) : vit.forwardPooled(pixels);
  const headWeight = graph.input(MULTI_TASK_INPUTS.headWeight, [tasks, classes, config.hiddenSize]);
  const headBias = graph.input(MULTI_TASK_INPUTS.headBias, [tasks, classes]);
  const logits = graph.scope('task_head', () => {
    const rows = reshape(features, [0, 1, config.hiddenSize]);
    const perRow = matmul(rows, transposeLast(gather(headWeight, taskIndex)));
    return add(reshape(perRow, [0, -1]), gather(headBias, taskIndex));
  });
  return { pixels, taskIndex, logits };
}
