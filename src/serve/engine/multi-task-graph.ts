import type { GraphBuilder, Value } from '../../graph/builder.ts';
import type { LoraSlot } from '../../model/anatomy.ts';
import type { Backbone } from '../../model/backbone.ts';
import {
  buildClassifierGraph,
  STACK_DIMS,
  STACK_INPUTS,
  stackedSlotInputNames,
} from '../../model/classifier-graph.ts';

/** A projection that some loaded adapter plugs into: the graph gets a stacked A/B input pair for it. */
export type { LoraSlot };

/** Symbolic dims of the stacked inputs: adapters loaded, padded rank, padded class count. */
export { STACK_DIMS };

export const MULTI_TASK_INPUTS = { pixels: 'pixels', ...STACK_INPUTS } as const;

export const slotInputNames = stackedSlotInputNames;

export interface MultiTaskGraph {
  readonly pixels: Value;
  readonly taskIndex: Value;
  /** [batch, classes]: each row's logits under its own task's head, padded to the widest head. */
  readonly logits: Value;
}

/**
 * The serving graph: one ViT forward for a batch whose rows may belong to different tasks (the classifier
 * recipe with stacked LoRA and head sources). Each row's LoRA factors and head are gathered from stacked
 * adapter tensors by its task index, and the low-rank path runs as batched products
 * [B, N, in]·[B, in, r]·[B, r, out] (the Punica / S-LoRA batched low-rank product, in plain ONNX). Frozen
 * weights are initializers; stacks are inputs with symbolic task, rank and class dims, so a registry
 * change only feeds other tensors. The graph depends only on which slots exist.
 */
export function buildMultiTaskGraph(
  graph: GraphBuilder,
  backbone: Backbone,
  slots: readonly LoraSlot[],
): MultiTaskGraph {
  const built = buildClassifierGraph(graph, {
    backbone,
    batch: 'batch',
    lora: { kind: 'stacked', slots },
    head: { kind: 'stacked' },
    lastBlock: 'cls',
  });
  return { pixels: built.pixels, taskIndex: built.taskIndex!, logits: built.logits! };
}
