import type { Value } from '../graph/builder.ts';
import { dropout } from '../ops/dropout.ts';
import { mul } from '../ops/elementwise.ts';
import { matmul } from '../ops/matmul.ts';
import { transposeLast } from '../ops/shape.ts';
import type { HostTensor } from '../tensor.ts';
import { type Adapter, pairKey, projectionShape } from './adapter.ts';
import { type LoraConfig, loraLayers, loraScale } from './lora-config.ts';
import type { LinearDelta, LinearTarget } from './vit.ts';
import type { ViTConfig } from './vit-config.ts';

/** Graph input names of one projection's factors. */
export function loraInputNames(layer: number, target: LinearTarget): { A: string; B: string } {
  return { A: `lora.${layer}.${target}.A`, B: `lora.${layer}.${target}.B` };
}

/**
 * Seed of one projection's dropout node: distinct per (layer, target), so that the query and value paths
 * of a block, which read the same x, draw independent masks as PEFT's separate Dropout modules do.
 */
export function loraDropoutSeed(baseSeed: number, layer: number, target: LinearTarget): number {
  const targetIndex = ['query', 'key', 'value', 'output', 'fc1', 'fc2'].indexOf(target);
  let hash = (baseSeed ^ 0x9e3779b9) >>> 0;
  for (const part of [layer, targetIndex]) hash = Math.imul(hash ^ (part + 0x7f4a7c15), 0x85ebca6b) >>> 0;
  hash = Math.imul(hash ^ (hash >>> 13), 0xc2b2ae35) >>> 0;
  return (hash ^ (hash >>> 16)) & 0x7fffffff;
}

/**
 * The low-rank path as a separate branch, x·Aᵀ·Bᵀ·scale (x through dropout when training with
 * lora.dropout > 0, as PEFT's lora_dropout), whose A and B are graph inputs: switching adapters feeds
 * other tensors and never rebuilds the graph. Returns the delta hook for ViTGraph and the input values
 * created (for gradients). Inference graphs pass no `trainingDropoutSeed` and never drop.
 */
export function loraBranch(
  vit: ViTConfig,
  lora: LoraConfig,
  declare: (name: string, shape: readonly number[]) => Value,
  trainingDropoutSeed?: number,
) {
  const scale = loraScale(lora);
  const layers = new Set(loraLayers(lora, vit.depth));
  const inputs = new Map<string, Value>();
  const delta: LinearDelta = (layer, target, x) => {
    if (!layers.has(layer) || !lora.targets.includes(target)) return null;
    const shape = projectionShape(vit, target);
    const names = loraInputNames(layer, target);
    const A = declare(names.A, [lora.rank, shape.in]);
    const B = declare(names.B, [shape.out, lora.rank]);
    inputs.set(names.A, A);
    inputs.set(names.B, B);
    const input =
      trainingDropoutSeed !== undefined && lora.dropout > 0
        ? dropout(x, lora.dropout, loraDropoutSeed(trainingDropoutSeed, layer, target))
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
    const [layer, target] = key.split('.') as [string, LinearTarget];
    const names = loraInputNames(Number(layer), target);
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
    const [layerText, target] = key.split('.') as [string, LinearTarget];
    const name = `blocks.${layerText}.${canonicalModule(target)}.weight`;
    const base = weights.get(name)!;
    const { in: inFeatures, out: outFeatures } = projectionShape(vit, target);
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

export function canonicalModule(target: LinearTarget): string {
  switch (target) {
    case 'query':
    case 'key':
    case 'value':
      return `attn.${target}`;
    case 'output':
      return 'attn.proj';
    case 'fc1':
      return 'mlp.fc1';
    case 'fc2':
      return 'mlp.fc2';
  }
}
