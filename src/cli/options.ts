import { InvalidArgumentError, Option } from 'commander';
import { BACKBONE_PRECISIONS, type BackbonePrecision } from '../model/backbone.ts';

export function parsePositiveInt(value: string): number {
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed <= 0)
    throw new InvalidArgumentError(`expected a positive integer, got '${value}'`);
  return parsed;
}

export function parseNonNegativeNumber(value: string): number {
  const parsed = Number(value);
  if (!Number.isFinite(parsed) || parsed < 0)
    throw new InvalidArgumentError(`expected a number ≥ 0, got '${value}'`);
  return parsed;
}

export function parseWindow(value: string): { center: number; width: number } {
  const [center, width] = value.split(',').map(Number);
  if (!Number.isFinite(center) || !Number.isFinite(width) || (width as number) <= 0) {
    throw new InvalidArgumentError(`expected <center>,<width> with width > 0, got '${value}'`);
  }
  return { center: center as number, width: width as number };
}

/** `--backbone-precision fp32|int8`, shared by every command that runs the backbone. */
export function backbonePrecisionOption(): Option {
  return new Option(
    '--backbone-precision <precision>',
    'backbone projections in fp32, or int8 (frozen weights quantised per output channel at load; with --method full the trained weights are quantised per tensor at every step, SwitchBack; norms, softmax, LoRA and head stay fp32; adapters work with either)',
  )
    .choices([...BACKBONE_PRECISIONS])
    .default('fp32');
}

export type { BackbonePrecision };
