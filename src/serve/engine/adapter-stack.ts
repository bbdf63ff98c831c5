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
  /** Keyed by slotKey(slot); only the projections the adapter really adapts. */
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

/**
 * The same as stackedWeightsOf for an adapter nobody else holds (just read from disk): its own arrays
 * become the stack form (B scaled in place) instead of copies, so loading an adapter allocates its
 * bytes once before they move to the inference thread.
 */
export function takeStackedWeights(adapter: Adapter): StackedTaskWeights {
  const scale = loraScale(adapter.lora);
  const pairs = new Map<string, { A: Float32Array; B: Float32Array }>();
  for (const [key, pair] of adapter.pairs) {
    const B = pair.B.data;
    if (scale !== 1) for (let i = 0; i < B.length; i++) B[i] = B[i]! * scale;
    pairs.set(key, { A: pair.A.data, B });
  }
  return {
    trueRank: adapter.lora.rank,
    rank: adapter.lora.rank,
    classes: adapter.head.weight.shape[0]!,
    pairs,
    headWeight: adapter.head.weight.data,
    headBias: adapter.head.bias.data,
  };
}

export interface StackEntry<Key = string> {
  readonly name: Key;
  readonly weights: StackedTaskWeights;
}

/** What `put` had to change beyond writing the task's row: anything but `row` is a whole-stack cost. */
export interface PutResult {
  readonly row: number;
  /** New LoRA slots appeared: the serving graph must be rebuilt for the new slot list. */
  readonly newSlots: boolean;
  /** Every tensor was reallocated and copied (capacity, rank or class count grew). */
  readonly regrown: boolean;
}

const DEFAULT_CAPACITY = 8;

/**
 * Every loaded adapter's tensors stacked along a leading task axis, the form the serving graph gathers
 * rows from: per slot A [T, R, in] and B [T, out, R], head [T, C, D] and bias [T, C], where R is the
 * largest rank and C the most classes. Tasks lacking a slot (other targets or layers, or a linear probe)
 * have zeros there.
 *
 * The stack is the only storage of the adapters' weights, and it changes in place: `put` writes one
 * task's row (a freed row first, else the next unused one), `remove` frees a row for reuse. Both cost
 * one adapter's bytes, whatever the number of tasks loaded. The tensors are allocated for a capacity
 * that doubles when full (amortised O(1) per add; the untouched tail of a fresh allocation is zero
 * pages the kernel maps only when written, so spare capacity costs address space, not resident memory).
 * Only a larger rank or class count than any before, or a new slot, costs more: the first two
 * re-stride every row once; a new slot adds zero tensors and needs a new graph. None of them shrinks
 * when tasks leave (their rows are freed, the padding stays), so removal never moves other rows.
 *
 * Rows are handed out by the stack, and a freed row is written by the next `put`: callers must stop
 * referring to a removed task's row (in-flight batches) before removing it.
 */
export class AdapterStack<Key = string> {
  private slotList: LoraSlot[] = [];
  private rankPadded = 1;
  private classesPadded = 1;
  private capacity = 0;
  /** Rows [0, used) have been handed out at least once. */
  private used = 0;
  private readonly freeRows: number[] = [];
  private readonly rows = new Map<Key, number>();
  /** Per occupied row: the task's own rank and class count (for copies of its weights). */
  private readonly rowShapes = new Map<number, { trueRank: number; classes: number; pairs: string[] }>();
  private readonly factors = new Map<string, { A: Float32Array; B: Float32Array }>();
  private headWeight = new Float32Array(0);
  private headBias = new Float32Array(0);
  private cachedFeeds: Map<string, HostTensor> | undefined;
  /** D of the heads [classes, D]: the pooled feature width (CLS, mean, or both concatenated). */
  private readonly headWidth: number;

  constructor(
    private readonly config: ViTConfig,
    initialCapacity = DEFAULT_CAPACITY,
  ) {
    this.headWidth = pooledFeatureSize(config);
    this.reallocate(Math.max(1, initialCapacity), this.rankPadded, this.classesPadded);
  }

  /** A stack holding these tasks, in this order (rows 0, 1, …). */
  static build<Key = string>(config: ViTConfig, entries: readonly StackEntry<Key>[]): AdapterStack<Key> {
    const stack = new AdapterStack<Key>(config, Math.max(1, entries.length));
    for (const { name, weights } of entries) stack.put(name, weights);
    return stack;
  }

  get slots(): readonly LoraSlot[] {
    return this.slotList;
  }

  get rank(): number {
    return this.rankPadded;
  }

  get classes(): number {
    return this.classesPadded;
  }

  get hiddenSize(): number {
    return this.headWidth;
  }

  /** Tasks in the stack. */
  get size(): number {
    return this.rows.size;
  }

  /** Rows allocated (used or not). */
  get rowCapacity(): number {
    return this.capacity;
  }

  /** The task's row in every stacked tensor, or undefined when it is not in this stack. */
  rowOf(name: Key): number | undefined {
    return this.rows.get(name);
  }

  /** Makes room for at least `rows` tasks now, so that adding them later never regrows the stack. */
  reserve(rows: number): void {
    if (rows > this.capacity) this.reallocate(rows, this.rankPadded, this.classesPadded);
  }

  /**
   * Writes a task's weights into the stack: over its own row when it is already there, else into a
   * freed or new row. Costs one row, unless the stack must first grow (see PutResult).
   */
  put(name: Key, weights: StackedTaskWeights): PutResult {
    const newSlots = this.addSlots(weights);
    const rank = Math.max(this.rankPadded, weights.pairs.size > 0 ? weights.trueRank : 1);
    const classes = Math.max(this.classesPadded, weights.classes);
    let row = this.rows.get(name);
    let capacity = this.capacity;
    if (row === undefined && this.freeRows.length === 0 && this.used === capacity) capacity = 2 * capacity;
    const regrown = rank !== this.rankPadded || classes !== this.classesPadded || capacity !== this.capacity;
    if (regrown) this.reallocate(capacity, rank, classes);
    if (row === undefined) {
      row = this.freeRows.pop() ?? this.used++;
      this.rows.set(name, row);
    }
    this.writeRow(row, weights);
    this.cachedFeeds = undefined;
    return { row, newSlots, regrown };
  }

  /** Frees the task's row for the next `put`; returns whether the task was there. */
  remove(name: Key): boolean {
    const row = this.rows.get(name);
    if (row === undefined) return false;
    this.rows.delete(name);
    this.rowShapes.delete(row);
    this.freeRows.push(row);
    return true;
  }

  /** A copy of the task's weights in stack form (rank padded to the stack's, scale folded into B). */
  weightsOf(name: Key): StackedTaskWeights | undefined {
    const row = this.rows.get(name);
    if (row === undefined) return undefined;
    const { trueRank, classes, pairs: keys } = this.rowShapes.get(row)!;
    const rank = this.rankPadded;
    const d = this.headWidth;
    const pairs = new Map<string, { A: Float32Array; B: Float32Array }>();
    for (const key of keys) {
      const { A, B } = this.factors.get(key)!;
      const { in: inFeatures, out: outFeatures } = this.slotShape(key);
      pairs.set(key, {
        A: A.slice(row * rank * inFeatures, (row + 1) * rank * inFeatures),
        B: B.slice(row * outFeatures * rank, (row + 1) * outFeatures * rank),
      });
    }
    return {
      trueRank,
      rank,
      classes,
      pairs,
      headWeight: this.headWeight.slice(
        row * this.classesPadded * d,
        (row * this.classesPadded + classes) * d,
      ),
      headBias: this.headBias.slice(row * this.classesPadded, row * this.classesPadded + classes),
    };
  }

  /** The stacked graph inputs, keyed by input name: views of the first `used` rows (no copy). */
  feeds(): ReadonlyMap<string, HostTensor> {
    if (this.cachedFeeds) return this.cachedFeeds;
    const feeds = new Map<string, HostTensor>();
    const rows = Math.max(1, this.used);
    const rank = this.rankPadded;
    for (const slot of this.slotList) {
      const key = slotKey(slot);
      const { in: inFeatures, out: outFeatures } = this.slotShape(key);
      const { A, B } = this.factors.get(key)!;
      const names = slotInputNames(slot);
      feeds.set(names.A, { shape: [rows, rank, inFeatures], data: A.subarray(0, rows * rank * inFeatures) });
      feeds.set(names.B, {
        shape: [rows, outFeatures, rank],
        data: B.subarray(0, rows * outFeatures * rank),
      });
    }
    const d = this.headWidth;
    const classes = this.classesPadded;
    feeds.set(MULTI_TASK_INPUTS.headWeight, {
      shape: [rows, classes, d],
      data: this.headWeight.subarray(0, rows * classes * d),
    });
    feeds.set(MULTI_TASK_INPUTS.headBias, {
      shape: [rows, classes],
      data: this.headBias.subarray(0, rows * classes),
    });
    this.cachedFeeds = feeds;
    return feeds;
  }

  /** Bytes one row takes across every stacked tensor (one task's weights at the padded rank and classes). */
  get rowBytes(): number {
    let values = this.classesPadded * (this.headWidth + 1);
    for (const key of this.factors.keys()) {
      const { in: inFeatures, out: outFeatures } = this.slotShape(key);
      values += this.rankPadded * (inFeatures + outFeatures);
    }
    return 4 * values;
  }

  /** Bytes of the rows handed out so far: what the stack can have written, so at most what it holds resident. */
  get byteLength(): number {
    return this.used * this.rowBytes;
  }

  /** Bytes allocated for every row of the capacity (the unwritten tail is never paged in). */
  get allocatedBytes(): number {
    return this.capacity * this.rowBytes;
  }

  /** Every buffer the stack owns (tests count them: the stack holds each adapter once). */
  buffers(): ArrayBufferLike[] {
    const buffers: ArrayBufferLike[] = [this.headWeight.buffer, this.headBias.buffer];
    for (const { A, B } of this.factors.values()) buffers.push(A.buffer, B.buffer);
    return buffers;
  }

  /** Identifies the graph this stack feeds: the slot list (rank, classes and task count are symbolic). */
  get graphKey(): string {
    return slotsKey(this.slotList);
  }

  private slotShape(key: string): { in: number; out: number } {
    return projectionShape(this.config, parseSlotKey(key).target);
  }

  /** Adds zero tensors for slots the task brings; returns whether there were any. */
  private addSlots(weights: StackedTaskWeights): boolean {
    let added = false;
    for (const key of weights.pairs.keys()) {
      if (this.factors.has(key)) continue;
      const slot = parseSlotKey(key);
      const { in: inFeatures, out: outFeatures } = projectionShape(this.config, slot.target);
      this.factors.set(key, {
        A: new Float32Array(this.capacity * this.rankPadded * inFeatures),
        B: new Float32Array(this.capacity * outFeatures * this.rankPadded),
      });
      this.slotList.push(slot);
      added = true;
    }
    if (added) {
      this.slotList.sort(compareSlots);
      this.cachedFeeds = undefined;
    }
    return added;
  }

  /** New tensors for `capacity` rows at `rank` and `classes`, every used row copied over (re-strided). */
  private reallocate(capacity: number, rank: number, classes: number): void {
    const oldRank = this.rankPadded;
    const oldClasses = this.classesPadded;
    const rows = this.used;
    for (const [key, { A, B }] of this.factors) {
      const { in: inFeatures, out: outFeatures } = this.slotShape(key);
      const nextA = new Float32Array(capacity * rank * inFeatures);
      const nextB = new Float32Array(capacity * outFeatures * rank);
      for (let row = 0; row < rows; row++) {
        nextA.set(
          A.subarray(row * oldRank * inFeatures, (row + 1) * oldRank * inFeatures),
          row * rank * inFeatures,
        );
        for (let o = 0; o < outFeatures; o++) {
          const from = (row * outFeatures + o) * oldRank;
          nextB.set(B.subarray(from, from + oldRank), (row * outFeatures + o) * rank);
        }
      }
      this.factors.set(key, { A: nextA, B: nextB });
    }
    const d = this.headWidth;
    const headWeight = new Float32Array(capacity * classes * d);
    const headBias = new Float32Array(capacity * classes);
    for (let row = 0; row < rows; row++) {
      headWeight.set(
        this.headWeight.subarray(row * oldClasses * d, (row + 1) * oldClasses * d),
        row * classes * d,
      );
      headBias.set(this.headBias.subarray(row * oldClasses, (row + 1) * oldClasses), row * classes);
    }
    this.headWeight = headWeight;
    this.headBias = headBias;
    this.capacity = capacity;
    this.rankPadded = rank;
    this.classesPadded = classes;
    this.cachedFeeds = undefined;
  }

  /** Writes one task into `row`, zeros wherever it has nothing (a reused row may hold another task's values). */
  private writeRow(row: number, weights: StackedTaskWeights): void {
    const rank = this.rankPadded;
    const copied = weights.pairs.size > 0 ? weights.trueRank : 0;
    for (const [key, { A, B }] of this.factors) {
      const { in: inFeatures, out: outFeatures } = this.slotShape(key);
      const aRow = A.subarray(row * rank * inFeatures, (row + 1) * rank * inFeatures);
      const bRow = B.subarray(row * outFeatures * rank, (row + 1) * outFeatures * rank);
      aRow.fill(0);
      bRow.fill(0);
      const source = weights.pairs.get(key);
      if (!source) continue;
      // A: the first `copied` rows as they are. B: `copied` columns of each output row.
      aRow.set(source.A.subarray(0, copied * inFeatures));
      for (let o = 0; o < outFeatures; o++)
        bRow.set(source.B.subarray(o * weights.rank, o * weights.rank + copied), o * rank);
    }
    const d = this.headWidth;
    const classes = this.classesPadded;
    const weightRow = this.headWeight.subarray(row * classes * d, (row + 1) * classes * d);
    const biasRow = this.headBias.subarray(row * classes, (row + 1) * classes);
    weightRow.fill(0);
    biasRow.fill(0);
    weightRow.set(weights.headWeight.subarray(0, weights.classes * d));
    biasRow.set(weights.headBias.subarray(0, weights.classes));
    this.rowShapes.set(row, {
      trueRank: weights.trueRank,
      classes: weights.classes,
      pairs: [...weights.pairs.keys()],
    });
  }
}

export function slotsKey(slots: readonly LoraSlot[]): string {
  return slots.map(slotKey).join(',');
}
