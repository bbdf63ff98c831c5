/**
 * Fault injection for crash-safety tests. Every writer that must survive a kill (atomic files, adapters,
 * training checkpoints) calls `writeBoundary` between two file-system operations. A test either observes
 * each boundary in-process (and copies the output directory as a kill at that instant would leave it), or
 * sets `MELO_FAULT_KILL_AT_WRITE=k` to have the process SIGKILL itself at the k-th boundary. Neither is
 * active in normal use: the cost is one counter increment per file operation.
 */

export const KILL_AT_WRITE_ENV = 'MELO_FAULT_KILL_AT_WRITE';

type BoundaryObserver = (label: string, index: number) => void;

let observer: BoundaryObserver | undefined;
let count = 0;

export function writeBoundary(label: string): void {
  count++;
  observer?.(label, count);
  const killAt = process.env[KILL_AT_WRITE_ENV];
  if (killAt !== undefined && Number(killAt) === count) process.kill(process.pid, 'SIGKILL');
}

/** Calls `next` at every later boundary (numbered from 1 again); `undefined` stops observing. */
export function observeWriteBoundaries(next: BoundaryObserver | undefined): void {
  observer = next;
  count = 0;
}
