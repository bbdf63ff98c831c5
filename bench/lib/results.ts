import { writeJsonAtomic } from '../../src/io/atomic.ts';

/** One measured configuration: the shape every benchmark's JSON shares (extra fields allowed). */
export interface BenchResult {
  readonly name: string;
  readonly model: string;
  readonly batch: number;
  readonly threads: number;
  readonly imagesPerSecond: number;
  /** Effective GFLOP/s: counted matmul FLOPs per second (see the benchmark for how FLOPs are counted). */
  readonly gflops: number;
  readonly [extra: string]: unknown;
}

export interface BenchReport {
  readonly results: readonly BenchResult[];
  readonly [extra: string]: unknown;
}

/** Writes the report atomically, so a reader never sees half of it and a failed run leaves the old file. */
export async function writeBenchReport(path: string, report: BenchReport): Promise<void> {
  await writeJsonAtomic(path, report);
}
