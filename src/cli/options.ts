import { InvalidArgumentError } from 'commander';

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
