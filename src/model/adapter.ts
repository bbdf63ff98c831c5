import type { TaskRouting } from '../pacs/routing.ts';
import type { HostTensor } from '../tensor.ts';
import type { Random } from '../util/random.ts';
import { type LoraTarget, loraSlots, projectionShape, slotKey } from './anatomy.ts';
import type { LoraConfig } from './lora-config.ts';
import { loraLayers } from './lora-config.ts';
import { pooledFeatureSize, type ViTConfig } from './vit-config.ts';

export type TaskType = 'binary' | 'multiclass' | 'multilabel';

/** What melo records about a task beside the weights (adapter_config.json `melo`, safetensors metadata). */
export interface TaskMetadata {
  readonly task: string;
  readonly taskType: TaskType;
  readonly labels: readonly string[];
  readonly imageSize?: readonly [number, number];
  readonly mean?: readonly [number, number, number];
  readonly std?: readonly [number, number, number];
  readonly backboneFingerprint?: string;
  readonly method?: 'lora' | 'full' | 'linear';
  /** Which DICOM images the task applies to (modalities, body parts); absent: every image. */
  readonly routing?: TaskRouting;
  /** Binary tasks: the class the binary metrics (sensitivity, F1, …) are about; default the second label. */
  readonly positive?: string;
  /** The labels are ordered grades (RetinaMNIST's 0–4): evaluation adds weighted kappa and grade error. */
  readonly ordinal?: boolean;
}

/** Low-rank factors of one projection, PEFT orientation: A [rank, in], B [out, rank]. */
export interface LoraPair {
  readonly A: HostTensor;
  readonly B: HostTensor;
  /**
   * The factors' shapes in the PEFT file they were read from, when they differ from [rank, in] and
   * [out, rank] (a Conv2d target such as the patch embedding: [rank, C, p, p] and [out, rank, 1, 1]), so
   * the adapter is written back as it was read even without its backbone at hand.
   */
  readonly peftShape?: { readonly A: readonly number[]; readonly B: readonly number[] };
}

/**
 * A task plug-in: LoRA factors per slot, keyed `"<layer>.<target>"` (or `"<target>"` for a global
 * projection; anatomy.ts's slotKey / parseSlotKey), and the task head ([classes, D], as every head).
 */
export interface Adapter {
  readonly lora: LoraConfig;
  readonly pairs: Map<string, LoraPair>;
  readonly head: { readonly weight: HostTensor; readonly bias: HostTensor };
  readonly metadata: TaskMetadata;
}

export function pairKey(layer: number | undefined, target: LoraTarget): string {
  return slotKey({ layer, target });
}

export { projectionShape };

/**
 * A fresh adapter: A Kaiming-uniform (a = √5, PEFT/nn.Linear's default: bound = 1/√in), B zeros, so step 0
 * equals the base model; the head is initialised like nn.Linear (uniform ±1/√D) unless given.
 */
export function initAdapter(
  vit: ViTConfig,
  lora: LoraConfig,
  metadata: TaskMetadata,
  random: Random,
  head?: { weight: HostTensor; bias: HostTensor },
): Adapter {
  const pairs = new Map<string, LoraPair>();
  for (const slot of loraSlots(vit, lora.targets, loraLayers(lora, vit.depth))) {
    const shape = projectionShape(vit, slot.target);
    const bound = 1 / Math.sqrt(shape.in);
    const A = new Float32Array(lora.rank * shape.in);
    for (let i = 0; i < A.length; i++) A[i] = random.uniform(-bound, bound);
    pairs.set(slotKey(slot), {
      A: { shape: [lora.rank, shape.in], data: A },
      B: { shape: [shape.out, lora.rank], data: new Float32Array(shape.out * lora.rank) },
    });
  }
  const classes = metadata.labels.length;
  const d = pooledFeatureSize(vit);
  const bound = 1 / Math.sqrt(d);
  const weight = head?.weight ?? {
    shape: [classes, d],
    data: Float32Array.from({ length: classes * d }, () => random.uniform(-bound, bound)),
  };
  const bias = head?.bias ?? {
    shape: [classes],
    data: Float32Array.from({ length: classes }, () => random.uniform(-bound, bound)),
  };
  return { lora, pairs, head: { weight, bias }, metadata };
}

export function loraParameterCount(adapter: Adapter): number {
  let count = 0;
  for (const pair of adapter.pairs.values()) count += pair.A.data.length + pair.B.data.length;
  return count;
}

export function headParameterCount(adapter: Adapter): number {
  return adapter.head.weight.data.length + adapter.head.bias.data.length;
}
