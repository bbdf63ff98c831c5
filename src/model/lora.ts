import type { Value } from '../graph/builder.ts';
import { dropout } from '../ops/dropout.ts';
import { mul } from '../ops/elementwise.ts';
import { matmul } from '../ops/matmul.ts';
import { transposeLast } from '../ops/shape.ts';
import type { HostTensor } from '../tensor.ts';
import type { Adapter } from './adapter.ts';
import {
  LORA_TARGETS,
  type LoraSlot,
  type LoraTarget,
  loraSlots,
  parseSlotKey,
  projectionShape,
  slotKey,
  slotWeightName,
} from './anatomy.ts';
import { type LoraConfig, loraLayers, loraScale } from './lora-config.ts';
import type { LinearDelta } from './vit.ts';
import type { ViTConfig } from './vit-config.ts';

/** Graph input names of one projection's factors: `lora.<slot key>.A` / `.B`. */
export function loraInputNames(slot: LoraSlot): { A: string; B: string } {
  const key = slotKey(slot);
  return { A: `lora.${key}.A`, B: `lora.${key}.B` };
}

/** Where a training graph's LoRA dropout masks come from (see loraDropoutSeed). */
export interface LoraDropoutStream {
  /** The run's seed. */
  readonly seed: number;
  /** How many times training steps of this run have already drawn masks (0 for a fresh run). */
  readonly runsDone: number;
}

/** ORT's CPU Dropout seeds a minstd_rand0 engine, whose seeds live modulo 2^31 − 1. */
const SEED_MODULUS = 2 ** 31 - 1;
/** Six block targets in each of up to 85 blocks (ViT-G has 48); global projections take the last nodes. */
const MAX_DROPOUT_NODES = 512;
/** Dropout nodes per block: the six block targets (query … fc2), whose seeds runs already depend on. */
const BLOCK_NODES = 6;
/** Room per node: the streams of two nodes would only meet after this many runs (about 4.2 million). */
const NODE_STRIDE = Math.floor(SEED_MODULUS / MAX_DROPOUT_NODES);

/**
 * Seed of one projection's dropout node. ORT's Dropout draws its k-th run's mask from seed + k, so a node
 * built with `runsDone` added continues exactly where an uninterrupted run's node would be: that is what
 * makes `--resume` with dropout end with the same adapter (on the CPU provider; CUDA's Philox generator
 * advances by another rule). Nodes get seeds NODE_STRIDE apart, so the query and value paths of a
 * block (same x) draw independent masks, as PEFT's separate Dropout modules do. `layer` is undefined for a
 * global projection (the patch embedding).
 */
export function loraDropoutSeed(
  stream: LoraDropoutStream,
  layer: number | undefined,
  target: LoraTarget,
): number {
  // Global projections (the patch embedding) take the last nodes, counted down from the end, so block
  // nodes keep the indices (and seeds) they had before global targets existed.
  const globalNodes = LORA_TARGETS.length - BLOCK_NODES;
  const node =
    layer === undefined
      ? MAX_DROPOUT_NODES - 1 - (LORA_TARGETS.indexOf(target) - BLOCK_NODES)
      : layer * BLOCK_NODES + LORA_TARGETS.indexOf(target);
  if (layer !== undefined ? node >= MAX_DROPOUT_NODES - globalNodes : node >= MAX_DROPOUT_NODES)
    throw new RangeError(`LoRA dropout supports ${MAX_DROPOUT_NODES} projections, got index ${node}`);
  let hash = Math.imul(stream.seed ^ 0x9e3779b9, 0x85ebca6b) >>> 0;
  hash = Math.imul(hash ^ (hash >>> 13), 0xc2b2ae35) >>> 0;
  const base = ((hash ^ (hash >>> 16)) >>> 0) % SEED_MODULUS;
  return (base + node * NODE_STRIDE + stream.runsDone) % SEED_MODULUS;
}

/**
 * The low-rank path as a separate branch, x·Aᵀ·Bᵀ·scale (x through dropout when training with
 * lora.dropout > 0, as PEFT's lora_dropout), whose A and B are graph inputs: switching adapters feeds
 * other tensors and never rebuilds the graph. Returns the delta hook for ViTGraph and the input values
 * created (for gradients). Inference graphs pass no `trainingDropout` and never drop.
 */
export function loraBranch(
  vit: ViTConfig,
  lora: LoraConfig,
  declare: (name: string, shape: readonly number[]) => Value,
  trainingDropout?: LoraDropoutStream,
) {
  const scale = loraScale(lora);
  const wanted = new Set(loraSlots(vit, lora.targets, loraLayers(lora, vit.depth)).map(slotKey));
  const inputs = new Map<string, Value>();
  const delta: LinearDelta = (slot, x) => {
    if (!wanted.has(slotKey(slot))) return null;
    const shape = projectionShape(vit, slot.target);
    const names = loraInputNames(slot);
    const A = declare(names.A, [lora.rank, shape.in]);
    const B = declare(names.B, [shape.out, lora.rank]);
    inputs.set(names.A, A);
    inputs.set(names.B, B);
    const input =
      trainingDropout !== undefined && lora.dropout > 0
        ? dropout(x, lora.dropout, loraDropoutSeed(trainingDropout, slot.layer, slot.target))
        : x;
    const low = matmul(matmul(input, transposeLast(A)), transposeLast(B));
    return scale === 1 ? low : mul(low, x.graph.constantFloat(scale));
  };
  return { delta, inputs };
}

/** The feeds for an adapter's factors, keyed by graph input name. */
export function loraFeeds(adapter: Adapter): Record<string, HostTensor> {
  const feeds: Record<string, HostTensor> = {};
  for (const [key, pair] of adapter.pairs) {
    const names = loraInputNames(parseSlotKey(key));
    feeds[names.A] = pair.A;
    feeds[names.B] = pair.B;
  }
  return feeds;
}

/**
 * Folds an adapter into dense weights (melo layout, W [in, out]): W' = W + scale·Aᵀ·Bᵀ. Refuses
 * non-finite results instead of writing them (PEFT's safe_merge).
 */
export function mergeLoraIntoWeights(
  weights: Map<string, HostTensor>,
  vit: ViTConfig,
  adapter: Adapter,
): Map<string, HostTensor> {
  const merged = new Map(weights);
  const scale = loraScale(adapter.lora);
  for (const [key, pair] of adapter.pairs) {
    const slot = parseSlotKey(key);
    const name = slotWeightName(vit, slot);
    const base = weights.get(name)!;
    const { in: inFeatures, out: outFeatures } = projectionShape(vit, slot.target);
    const rank = adapter.lora.rank;
    const data = Float32Array.from(base.data);
    for (let i = 0; i < inFeatures; i++) {
      for (let o = 0; o < outFeatures; o++) {
        let sum = 0;
        for (let r = 0; r < rank; r++) sum += pair.A.data[r * inFeatures + i]! * pair.B.data[o * rank + r]!;
        data[i * outFeatures + o]! += scale * sum;
      }
    }
    if (!data.every(Number.isFinite))
      throw new RangeError(`merging the adapter into ${name} gives non-finite weights`);
    merged.set(name, { shape: base.shape, data });
  }
  return merged;
}
