/**
 * The backbone a training run multiplies by, at its precision. In int8, LoRA and linear probing quantise the
 * frozen weights now, on the grid this CPU trains on fastest exactly (runtime/int8-kernels.ts's
 * frozenBackboneTrainingGrid, which asks ONNX Runtime once per process). Full fine-tuning keeps the float
 * weights (it trains them; the graph quantises them at every step, SwitchBack) and the full grid: on the
 * 16-bit-pair grid, with its weights per tensor, its lowest gradient cosine to fp32 on the fixture batch
 * (the patch-embedding bias's) was 0.98290, below the 0.99 gate, where the full grid gives 0.99640
 * (`npx tsx bench/int8-grid-accuracy.ts --method full --grids full,16bit`,
 * bench/results/int8-grid-accuracy-full.json).
 */
import { type Backbone, type BackbonePrecision, withPrecision } from '../model/backbone.ts';
import type { TrainingMethod } from '../model/task-graph.ts';
import { INT8_GRID, type Int8Grid } from '../ops/quantized.ts';
import { frozenBackboneTrainingGrid } from '../runtime/int8-kernels.ts';

export async function trainingBackbone(
  backbone: Backbone,
  precision: BackbonePrecision | undefined,
  method: TrainingMethod,
  options: {
    /** The grid of a frozen backbone in place of this CPU's (bench:train's `--int8-grid full`). */
    frozenGrid?: Int8Grid;
  } = {},
): Promise<Backbone> {
  if (precision !== 'int8') return withPrecision(backbone, precision);
  if (method === 'full') return withPrecision(backbone, precision, { keepFloat: true, grid: INT8_GRID });
  const grid = options.frozenGrid ?? (await frozenBackboneTrainingGrid());
  return withPrecision(backbone, precision, { grid });
}
