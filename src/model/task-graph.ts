import type { Backbone } from '../checkpoints/load.ts';
import type { GraphBuilder, Value } from '../graph/builder.ts';
import type { Dim } from '../graph/types.ts';
import { add } from '../ops/elementwise.ts';
import { gemm } from '../ops/matmul.ts';
import type { HostTensor } from '../tensor.ts';
import type { Adapter } from './adapter.ts';
import { weightsForResolution } from './inference.ts';
import { type LoraDropoutStream, loraBranch, loraFeeds } from './lora.ts';
import type { LoraConfig } from './lora-config.ts';
import { pixelInput, ViTGraph } from './vit.ts';
import { WeightBinder } from './weights.ts';

/** MeLo's LoRA, full fine-tuning, or linear probing: which weights a task trains. */
export type TrainingMethod = 'lora' | 'full' | 'linear';

export const TASK_HEAD = { weight: 'task_head.weight', bias: 'task_head.bias' } as const;

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
 * The one graph shape every method shares: ViT (frozen weights as initializers, or inputs for 'full'),
 * an optional LoRA branch, and a task head `features·Wᵀ + b` (PyTorch orientation, W [classes, D]).
 */
export function buildTaskGraph(graph: GraphBuilder, spec: TaskGraphSpec): TaskGraph {
  const { backbone, method } = spec;
  const config = backbone.config;
  const imageSize = spec.imageSize ?? backbone.preprocess.inputSize;
  const weights = weightsForResolution(backbone, imageSize);
  const trainedBackbone =
    method === 'full'
      ? new Set([...weights.keys()].filter((name) => !name.startsWith('head.')))
      : new Set<string>();
  const binder = new WeightBinder(graph, weights, trainedBackbone);
  const weightInputs = new Map<string, Value>();
  const declare = (name: string, shape: readonly number[]) => {
    const existing = weightInputs.get(name);
    if (existing) return existing;
    const value = graph.input(name, shape);
    weightInputs.set(name, value);
    return value;
  };
  const branch = method === 'lora' ? loraBranch(config, spec.lora!, declare, spec.loraDropout) : undefined;
  const vit = new ViTGraph({ config, params: binder, imageSize, ...(branch ? { delta: branch.delta } : {}) });
  const pixels = pixelInput(graph, config, spec.batch, imageSize);
  const features = vit.forwardPooled(pixels);
  for (const name of binder.inputNames()) weightInputs.set(name, binder.get(name));
  const headWeight = declare(TASK_HEAD.weight, [spec.numClasses, config.hiddenSize]);
  const headBias = declare(TASK_HEAD.bias, [spec.numClasses]);
  const logits = graph.scope('task_head', () => add(gemm(features, headWeight, { transB: true }), headBias));
  return { pixels, features, logits, weightInputs };
}

/** An adapter's tensors keyed by the task graph's input names. */
export function adapterFeeds(adapter: Adapter): Map<string, HostTensor> {
  const feeds = new Map<string, HostTensor>(Object.entries(loraFeeds(adapter)));
  feeds.set(TASK_HEAD.weight, adapter.head.weight);
  feeds.set(TASK_HEAD.bias, adapter.head.bias);
  return feeds;
}
