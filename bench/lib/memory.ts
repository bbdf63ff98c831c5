import { readFileSync } from 'node:fs';

/** Peak resident set size of this process so far, in bytes (getrusage's ru_maxrss, which Node reports in KiB). */
export function peakRssBytes(): number {
  return process.resourceUsage().maxRSS * 1024;
}

/**
 * A `Vm…` line of /proc/<pid>/status in bytes (VmHWM: peak resident since start or the last reset, VmRSS:
 * resident now); null where /proc cannot tell (not Linux, process gone).
 */
export function procStatusBytes(field: 'VmHWM' | 'VmRSS', pid: number | 'self' = 'self'): number | null {
  try {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(
      readFileSync(`/proc/${pid}/status`, 'utf8'),
    );
    return match ? Number(match[1]) * 1024 : null;
  } catch {
    return null;
  }
}

export function formatBytes(bytes: number): string {
  return bytes >= 1024 ** 3
    ? `${(bytes / 1024 ** 3).toFixed(2)} GiB`
    : `${(bytes / 1024 ** 2).toFixed(0)} MiB`;
}

/** A full garbage collection of this thread (src/util/gc.ts). */
export { collectGarbage as fullGc } from '../../src/util/gc.ts';
