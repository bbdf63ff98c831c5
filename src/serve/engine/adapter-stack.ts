import type { Adapter } from '../../model/adapter.ts';
import { compareSlots, parseSlotKey, projectionShape, slotKey } from '../../model/anatomy.ts';
import { loraScale } from '../../model/lora-config.ts';
import { pooledFeatureSize, type ViTConfig } from '../../model/vit-config.ts';
import type { HostTensor } from '../../tensor.ts';
import { type LoraSlot, MULTI_TASK_INPUTS, slotInputNames } from './multi-task-graph.ts';

/**
 * A task's weights in the form the stack stores them: each A [rank, in], each B [out, rank] with the
 * adapter's scale already multiplied in, the head [classes, D] and its bias. `rank` may exceed the
 * adapter's own rank (`trueRank`); the extra rows of A and columns of B are zero, which adds nothing.
 */
export interface StackedTaskWeights {
  readonly trueRank: number;
  readonly rank: number;
  readonly classes: number;
  /** Keyed by pairKey(layer, target); only the projections the adapter really adapts. */
  readonly pairs: ReadonlyMap<string, { readonly A: Float32Array; readonly B: Float32Array }>;
  readonly headWeight: Float32Array;
  readonly headBias: Float32Array;
}

/**
 * An adapter's tensors in stack form. Folding scale into B is exact up to float rounding:
 * x·Aᵀ·(s·B)ᵀ = s·(x·Aᵀ·Bᵀ). A linear-probe adapter (no LoRA pairs) has no pairs: zero factors.
 */
export function stackedWeightsOf(adapter: Adapter): StackedTaskWeights {
  const scale = loraScale(adapter.lora);
  const pairs = new Map<string, { A: Float32Array; B: Float32Array }>();
  for (const [key, pair] of adapter.pairs) {
    const B = new Float32Array(pair.B.data.length);
    for (let i = 0; i < B.length; i++) B[i] = pair.B.data[i]! * scale;
    pairs.set(key, { A: Float32Array.from(pair.A.data), B });
  }
  return {
    trueRank: adapter.lora.rank,
    rank: adapter.lora.rank,
    classes: adapter.head.weight.shape[0]!,
    pairs,
    headWeight: Float32Array.from(adapter.head.weight.data),
    headBias: Float32Array.from(adapter.head.bias.data),
  };
}

export interface StackEntry {
  readonly name: string;
  readonly weights: StackedTaskWeights;
}

/**
 * Every loaded adapter's tensors stacked along a leading task axis, the form the serving graph gathers
 * rows from: per slot A [T, R, in] and B [T, out, R], head [T, C, D] and bias [T, C], where R is the
 * largest rank and C the most classes. Built in JS when the registry changes, never per request. Tasks
 * lacking a slot (other targets or layers, or a linear probe) have zeros there. The stack is also the
 * storage: `weightsOf` returns views into it, so each adapter is held in memory once.
 */
export class AdapterStack {
  private constructor(
    readonly slots: readonly LoraSlot[],
    readonly rank: number,
    readonly classes: number,
    readonly hiddenSize: number,
    private readonly rows: ReadonlyMap<string, number>,
    private readonly tensors: ReadonlyMap<string, HostTensor>,
    private readonly views: ReadonlyMap<string, StackedTaskWeights>,
  ) {}

  static build(config: ViTConfig, entries: readonly StackEntry[]): AdapterStack {
    const slotMap = new Map<string, LoraSlot>();
    for (const { weights } of entries) {
      for (const key of weights.pairs.keys()) slotMap.set(key, parseSlotKey(key));
    }
    const slots = [...slotMap.values()].sort(compareSlots);
    const withPairs = entries.filter((entry) => entry.weights.pairs.size > 0);
    const rank = Math.max(1, ...withPairs.map((entry) => entry.weights.trueRank));
    const classes = Math.max(1, ...entries.map((entry) => entry.weights.classes));
    const d = pooledFeatureSize(config);
    const count = entries.length;
    const tensors = new Map<string, HostTensor>();
    const viewPairs = entries.map(() => new Map<string, { A: Float32Array; B: Float32Array }>());

    for (const slot of slots) {
      const key = slotKey(slot);
      const { in: inFeatures, out: outFeatures } = projectionShape(config, slot.target);
      const A = new Float32Array(count * rank * inFeatures);
      const B = new Float32Array(count * outFeatures * rank);
      entries.forEach(({ weights }, row) => {
        const source = weights.pairs.get(key);
        if (!source) return;
        const copied = Math.min(weights.rank, rank);
        const aRow = A.subarray(row * rank * inFeatures, (row + 1) * rank * inFeatures);
        const bRow = B.subarray(row * outFeatures * rank, (row + 1) * outFeatures * rank);
        // A: the first `copied` rows as they are. B: `copied` columns of each output row.
        aRow.set(source.A.subarray(0, copied * inFeatures));
        for (let o = 0; o < outFeatures; o++) {
          bRow.set(source.B.subarray(o * weights.rank, o * weights.rank + copied), o * rank);
        }
        viewPairs[row]!.set(key, { A: aRow, B: bRow });
      });
      const names = slotInputNames(slot);
      tensors.set(names.A, { shape: [count, rank, inFeatures], data: A });
      tensors.set(names.B, { shape: [count, outFeatures, rank], data: B });
    }

    const headWeight = new Float32Array(count * classes * d);
    const headBias = new Float32Array(count * classes);
    const rows = new Map<string, number>();
    const views = new Map<string, StackedTaskWeights>();
    entries.forEach(({ name, weights }, row) => {
      const weightRow = headWeight.subarray(row * classes * d, row * classes * d + weights.classes * d);
      const biasRow = headBias.subarray(row * classes, row * classes + weights.classes);
      weightRow.set(weights.headWeight);
      biasRow.set(weights.headBias);
      rows.set(name, row);
      views.set(name, {
        trueRank: weights.trueRank,
        rank,
        classes: weights.classes,
        pairs: viewPairs[row]!,
        headWeight: weightRow,
        headBias: biasRow,
      });
    });
    tensors.set(MULTI_TASK_INPUTS.headWeight, { shape: [count, classes, d], data: headWeight });
    tensors.set(MULTI_TASK_INPUTS.headBias, { shape: [count, classes], data: headBias });
    return new AdapterStack(slots, rank, classes, d, rows, tensors, views);
  }

  get size(): number {
    return this.rows.size;
  }

  /** The task's row in every stacked tensor, or undefined when it is not in this stack. */
  rowOf(name: string): number | undefined {
    return this.rows.get(name);
  }

  /** The task's weights as views into this stack (to rebuild the next stack from, without a second copy). */
  weightsOf(name: string): StackedTaskWeights | undefined {
    return this.views.get(name);
  }

  /** The stacked graph inputs, keyed by input name. */
  feeds(): ReadonlyMap<string, HostTensor> {
    return this.tensors;
  }

  /** Bytes held by the stacked tensors. */
  get byteLength(): number {
    let bytes = 0;
    for (const tensor of this.tensors.values()) bytes += tensor.data.byteLength;
    return bytes;
  }

  /** Identifies the graph this stack feeds: the slot list (rank, classes and task count are symbolic). */
  get graphKey(): string {
    return slotsKey(this.slots);
  }
}

export function slotsKey(slots: readonly LoraSlot[]): string {
  return slots.map(slotKey).join(',');
}
