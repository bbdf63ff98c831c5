/**
 * The backbone a training run multiplies by, at its precision. In int8 it trains on the grid this CPU
 * multiplies fastest exactly (runtime/int8-kernels.ts's int8TrainingGrid, which asks ONNX Runtime once per
 * process). LoRA and linear probing quantise the frozen weights now. Full fine-tuning keeps the float
 * weights (it trains them; the graph quantises them at every step, SwitchBack) and a grid of its own where
 * u8·s8 saturates: on the frozen backbones' 16-bit-pair grid, with its weights on ±90 per tensor, its
 * lowest gradient cosine to fp32 on the fixture batch (the patch-embedding bias's) was 0.98290, below the
 * 0.99 gate; with the weights on ±127 and activations and gradients on ±64 it is 0.99302 (the full grid:
 * 0.99640; `npx tsx bench/int8-grid-accuracy.ts --method full --grids full,16bit,127/64/rows`,
 * bench/results/int8-grid-accuracy-full.json).
 */
import { type Backbone, type BackbonePrecision, withPrecision } from '../model/backbone.ts';
import type { TrainingMethod } from '../model/task-graph.ts';
import type { Int8Grid } from '../ops/quantized.ts';
import { int8TrainingGrid } from '../runtime/int8-kernels.ts';

export async function trainingBackbone(
  backbone: Backbone,
  precision: BackbonePrecision | undefined,
  method: TrainingMethod,
  options: {
    /** The grid in place of this CPU's (bench:train's `--int8-grid full`). */
    grid?: Int8Grid;
  } = {},
): Promise<Backbone> {
  if (precision !== 'int8') return withPrecision(backbone, precision);
  const trained = method === 'full';
  const grid = options.grid ?? (await int8TrainingGrid(trained ? 'trained' : 'frozen'));
  return withPrecision(backbone, precision, { keepFloat: trained, grid });
}
