import type { GraphBuilder, Value } from '../graph/builder.ts';
import type { Dim } from '../graph/types.ts';
import type { HostTensor } from '../tensor.ts';
import type { Adapter } from './adapter.ts';
import type { Backbone } from './backbone.ts';
import { buildClassifierGraph, TASK_HEAD } from './classifier-graph.ts';
import { type LoraDropoutStream, loraFeeds } from './lora.ts';
import type { LoraConfig } from './lora-config.ts';

/** MeLo's LoRA, full fine-tuning, or linear probing: which weights a task trains. */
export type TrainingMethod = 'lora' | 'full' | 'linear';

export { TASK_HEAD };

export interface TaskGraphSpec {
  readonly backbone: Backbone;
  readonly method: TrainingMethod;
  /** Required for method 'lora'. */
  readonly lora?: LoraConfig;
  readonly numClasses: number;
  readonly batch: Dim;
  readonly imageSize?: readonly [number, number];
  /** Training graphs only: the LoRA dropout masks' stream (lora.dropout > 0); absent, nothing is dropped. */
  readonly loraDropout?: LoraDropoutStream;
}

export interface TaskGraph {
  readonly pixels: Value;
  readonly features: Value;
  readonly logits: Value;
  /** Graph inputs that hold a task's weights (LoRA factors, head; every backbone weight for 'full'). */
  readonly weightInputs: Map<string, Value>;
}

/**
 * The graph every method shares (the classifier recipe, model/classifier-graph.ts): ViT (frozen weights
 * as initializers, or inputs for 'full'), LoRA factors as graph inputs for 'lora', and a task head
 * `features·Wᵀ + b` fed as inputs (W [classes, D]).
 */
export function buildTaskGraph(graph: GraphBuilder, spec: TaskGraphSpec): TaskGraph {
  const built = buildClassifierGraph(graph, {
    backbone: spec.backbone,
    batch: spec.batch,
    ...(spec.imageSize ? { imageSize: spec.imageSize } : {}),
    lora:
      spec.method === 'lora'
        ? { kind: 'inputs', lora: spec.lora!, ...(spec.loraDropout ? { dropout: spec.loraDropout } : {}) }
        : { kind: 'none' },
    head: { kind: 'inputs', classes: spec.numClasses },
    trainBackbone: spec.method === 'full',
  });
  return {
    pixels: built.pixels,
    features: built.features,
    logits: built.logits!,
    weightInputs: built.weightInputs,
  };
}

/** An adapter's tensors keyed by the task graph's input names. */
export function adapterFeeds(adapter: Adapter): Map<string, HostTensor> {
  const feeds = new Map<string, HostTensor>(Object.entries(loraFeeds(adapter)));
  feeds.set(TASK_HEAD.weight, adapter.head.weight);
  feeds.set(TASK_HEAD.bias, adapter.head.bias);
  return feeds;
}
