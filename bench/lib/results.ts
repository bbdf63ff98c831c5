import { writeJsonAtomic } from '../../src/io/atomic.ts';
import { cpuStealSinceStart } from './machine.ts';

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

/** Above this share of stolen CPU time a bench says so: its absolute numbers are low and its ratios noisier. */
export const STEAL_WARNING_SHARE = 0.03;

/**
 * Writes the report atomically, so a reader never sees half of it and a failed run leaves the old file.
 * Every report gets `cpuStealShare`: the share of the machine's CPU time the hypervisor gave to other
 * guests while the bench ran (null where unknown), with a WARNING above {@link STEAL_WARNING_SHARE}.
 */
export async function writeBenchReport(path: string, report: BenchReport): Promise<void> {
  const cpuStealShare = cpuStealSinceStart();
  const warning = stealWarning(cpuStealShare);
  if (warning) console.warn(`WARNING: ${warning}`);
  await writeJsonAtomic(path, { ...report, cpuStealShare });
}

export function stealWarning(share: number | null): string | undefined {
  if (share === null || share <= STEAL_WARNING_SHARE) return undefined;
  return `the hypervisor took ${(share * 100).toFixed(1)}% of this machine's CPU time during the run (steal): absolute numbers are low, and ratios noisier even in interleaved rounds`;
}
