/** Wall-clock timing of repeated runs: warm-up first (allocations, lazy init), then timed samples. */
export interface TimingOptions {
  /** Untimed runs before measuring. */
  readonly warmup: number;
  /** Timed runs; the median of these is what a benchmark reports. */
  readonly iterations: number;
}

export interface Timing {
  readonly samplesMs: number[];
  /**
   * CPU time this process used during each sample (all threads). CPU ÷ wall near the thread count means
   * the run had its cores; much less means other work on the machine took them.
   */
  readonly cpuMs: number[];
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
  const cpuMs: number[] = [];
  for (let i = 0; i < options.iterations; i++) {
    const cpuStart = process.cpuUsage();
    const start = process.hrtime.bigint();
    await run();
    samplesMs.push(Number(process.hrtime.bigint() - start) / 1e6);
    const cpu = process.cpuUsage(cpuStart);
    cpuMs.push((cpu.user + cpu.system) / 1e3);
  }
  return summarizeSamples(samplesMs, cpuMs);
}

export function summarizeSamples(samplesMs: readonly number[], cpuMs: readonly number[] = []): Timing {
  if (samplesMs.length === 0) throw new RangeError('no timing samples');
  return {
    samplesMs: [...samplesMs],
    cpuMs: [...cpuMs],
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

/** Median cores busy per sample (CPU time ÷ wall time), or null without CPU samples. */
export function medianCoresBusy(timing: Pick<Timing, 'samplesMs' | 'cpuMs'>): number | null {
  if (timing.cpuMs.length !== timing.samplesMs.length || timing.cpuMs.length === 0) return null;
  return median(timing.cpuMs.map((cpu, i) => cpu / timing.samplesMs[i]!));
}
