/**
 * The backbone a training run multiplies by, at its precision. In int8 it trains on the grid this CPU
 * multiplies fastest exactly (runtime/int8-kernels.ts's int8TrainingGrid, which asks ONNX Runtime once per
 * process). LoRA and linear probing quantise the frozen weights now. Full fine-tuning keeps the float
 * weights (it trains them; the graph quantises them at every step, SwitchBack) and, where u8·s8 saturates,
 * a grid of its own that keeps the weights on ±127 (ops/quantized.ts, INT8_GRID_16BIT_PAIRS_TRAINED, says
 * what the frozen backbones' ±90 weights cost its gradients).
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
