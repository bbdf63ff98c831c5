/**
 * Quantisation of frozen backbone weights to int8 (`--backbone-precision int8`): symmetric, one scale per
 * output channel, derived from the float weights when the backbone is put in int8 (withPrecision), so that
 * an adapter never holds them and works with either precision.
 */
import type { Value } from '../graph/builder.ts';
import { INT8_GRID, type Int8Grid, int8MatMul, switchBackMatMul } from '../ops/quantized.ts';
import type { HostTensor } from '../tensor.ts';
import { familyOf, familyTargets, loraSlots, slotWeightName } from './anatomy.ts';
import type { Backbone } from './backbone.ts';
import { floatProduct, type ProjectionProduct } from './vit.ts';
import type { ViTConfig } from './vit-config.ts';
import type { ViTWeights } from './weights.ts';

export interface Int8Weight {
  /** [in, out], the layout of the float weight it replaces (x·W). */
  readonly shape: readonly [number, number];
  readonly data: Int8Array;
  /** [out]: W[k, n] ≈ data[k, n]·scale[n]. */
  readonly scale: Float32Array;
}

/**
 * scale[n] = max_k |W[k, n]| / levels and q = round(W / scale) in [−levels, levels] (−128 is never used,
 * so the range is symmetric). An all-zero column gets scale 1 and zeros. Each quantised value is within
 * scale/2 of the float one. `levels` is the grid's (ops/quantized.ts, Int8Grid): 127, or 90 for training
 * where ONNX Runtime's u8·s8 kernel would saturate.
 */
export function quantizePerOutputChannel(weight: HostTensor, levels = INT8_GRID.weightLevels): Int8Weight {
  if (weight.shape.length !== 2)
    throw new RangeError(`int8 quantisation needs a 2-D weight, got [${weight.shape.join(', ')}]`);
  const [rows, cols] = weight.shape as [number, number];
  const w = weight.data;
  const scale = new Float32Array(cols);
  for (let r = 0; r < rows; r++) {
    const row = r * cols;
    for (let c = 0; c < cols; c++) {
      const magnitude = Math.abs(w[row + c]!);
      if (magnitude > scale[c]!) scale[c] = magnitude;
    }
  }
  for (let c = 0; c < cols; c++) scale[c] = scale[c]! > 0 ? scale[c]! / levels : 1;
  const data = new Int8Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const row = r * cols;
    for (let c = 0; c < cols; c++) {
      const q = Math.round(w[row + c]! / scale[c]!);
      data[row + c] = Math.min(levels, Math.max(-levels, q));
    }
  }
  return { shape: [rows, cols], data, scale };
}

/** Quantised copies by float tensor and levels: every graph built from one backbone quantises each once. */
const quantizedCache = new WeakMap<Float32Array, Map<number, Int8Weight>>();

function quantizedOnce(weight: HostTensor, levels: number): Int8Weight {
  let byLevels = quantizedCache.get(weight.data);
  if (!byLevels) {
    byLevels = new Map();
    quantizedCache.set(weight.data, byLevels);
  }
  let found = byLevels.get(levels);
  if (!found) {
    found = quantizePerOutputChannel(weight, levels);
    byLevels.set(levels, found);
  }
  return found;
}

/** The weight names every projection of the backbone multiplies by (patch embedding and every block's). */
function projectionWeightNames(config: ViTConfig): string[] {
  const layers = Array.from({ length: config.depth }, (_, layer) => layer);
  return loraSlots(config, familyTargets(familyOf(config)), layers).map((slot) =>
    slotWeightName(config, slot),
  );
}

/**
 * The backbone in int8: every 2-D projection weight quantised once, now, and its float copy dropped from
 * `weights`. Dropping is what halves a server's memory: the float projections are 97% of a ViT-B's bytes,
 * and once the graphs are built from the int8 copies nothing reads them. With `keepFloat` (export merges
 * LoRA into the float weights before quantising; full fine-tuning trains them) nothing is quantised now:
 * the graphs quantise the float weights they bind ({@link int8Projections}, {@link switchBackProjections}),
 * so an eager int8 copy would only be held beside them unread.
 */
export function quantizeBackbone(
  backbone: Backbone,
  options: { keepFloat?: boolean; grid?: Int8Grid } = {},
): Backbone {
  const int8Grid = options.grid ?? INT8_GRID;
  if (options.keepFloat) return { ...backbone, precision: 'int8', int8Grid };
  const weights = new Map(backbone.weights);
  const int8Weights = new Map(backbone.int8Weights);
  for (const name of projectionWeightNames(backbone.config)) {
    const tensor = weights.get(name);
    if (tensor?.shape.length !== 2) continue;
    int8Weights.set(name, quantizedOnce(tensor, int8Grid.weightLevels));
    weights.delete(name);
  }
  return { ...backbone, precision: 'int8', int8Grid, weights, int8Weights };
}

/**
 * The int8 precision for one graph's projections (the recipe's ProjectionProduct seam): each frozen
 * projection becomes an int8 initializer `<weight>.int8` with its per-output-channel scales
 * `<weight>.scale`, multiplied by {@link int8MatMul} (whose input gradient is an int8 product too). A
 * float weight in `weights` (LoRA merged into it by export) is quantised here; otherwise the backbone's
 * own int8 copy is used. The float weight is never bound, so the model holds only the int8 copy.
 * LayerNorms, softmax, residuals, biases, the LoRA branch and the head are untouched: they stay fp32.
 */
export function int8Projections(
  weights: ViTWeights,
  int8Weights: ReadonlyMap<string, Int8Weight> = new Map(),
  grid: Int8Grid = INT8_GRID,
): ProjectionProduct {
  const bound = new Map<string, { wq: Value; scale: Value }>();
  return (x, weight, params, bias) => {
    const tensor = weights.get(weight);
    const quantized =
      tensor?.shape.length === 2 ? quantizedOnce(tensor, grid.weightLevels) : int8Weights.get(weight);
    if (!quantized) return floatProduct(x, weight, params, bias);
    let operands = bound.get(weight);
    if (!operands) {
      const graph = x.graph;
      operands = {
        wq: graph.initializerInt8(`${weight}.int8`, quantized.shape, quantized.data),
        scale: graph.initializer(`${weight}.scale`, {
          shape: [quantized.scale.length],
          data: quantized.scale,
        }),
      };
      bound.set(weight, operands);
    }
    return int8MatMul(x, operands.wq, operands.scale, bias ? params.get(bias) : undefined, grid);
  };
}

/**
 * The int8 precision for a backbone that is itself trained (full fine-tuning): each projection's float
 * weight stays a graph input, and the graph quantises it per output channel at every step for the int8
 * forward and input-gradient products, while its gradient is the float xᵀ·dy (SwitchBack,
 * ops/quantized.ts). The optimiser updates the float weights; what is saved is float.
 */
export function switchBackProjections(grid: Int8Grid = INT8_GRID): ProjectionProduct {
  return (x, weight, params, bias) => {
    const w = params.get(weight);
    if (w.rank !== 2) return floatProduct(x, weight, params, bias);
    return switchBackMatMul(x, w, bias ? params.get(bias) : undefined, grid);
  };
}
