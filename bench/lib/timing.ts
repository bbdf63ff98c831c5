/** Wall-clock timing of repeated runs: warm-up first (allocations, lazy init), then timed samples. */
export interface TimingOptions {
  /** Untimed runs before measuring. */
  readonly warmup: number;
  /** Timed runs; the median of these is what a benchmark reports. */
  readonly iterations: number;
}

export interface Timing {
  readonly samplesMs: number[];
  readonly medianMs: number;
  readonly minMs: number;
  readonly maxMs: number;
}

export async function timeRuns(
  run: () => Promise<unknown> | unknown,
  options: TimingOptions,
): Promise<Timing> {
  if (!Number.isInteger(options.iterations) || options.iterations < 1) {
    throw new RangeError(`iterations must be a positive integer, got ${options.iterations}`);
  }
  for (let i = 0; i < options.warmup; i++) await run();
  const samplesMs: number[] = [];
  for (let i = 0; i < options.iterations; i++) {
    const start = process.hrtime.bigint();
    await run();
    samplesMs.push(Number(process.hrtime.bigint() - start) / 1e6);
  }
  return summarizeSamples(samplesMs);
}

export function summarizeSamples(samplesMs: readonly number[]): Timing {
  if (samplesMs.length === 0) throw new RangeError('no timing samples');
  return {
    samplesMs: [...samplesMs],
    medianMs: median(samplesMs),
    minMs: Math.min(...samplesMs),
    maxMs: Math.max(...samplesMs),
  };
}

/** Median (mean of the middle two for an even count): robust to the odd run slowed by other load. */
export function median(values: readonly number[]): number {
  if (values.length === 0) throw new RangeError('median of no values');
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}
