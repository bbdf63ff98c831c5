/** Peak resident set size of this process so far, in bytes (getrusage's ru_maxrss, which Node reports in KiB). */
export function peakRssBytes(): number {
  return process.resourceUsage().maxRSS * 1024;
}

export function formatBytes(bytes: number): string {
  return bytes >= 1024 ** 3
    ? `${(bytes / 1024 ** 3).toFixed(2)} GiB`
    : `${(bytes / 1024 ** 2).toFixed(0)} MiB`;
}

/** A full garbage collection of this thread (src/util/gc.ts). */
export { collectGarbage as fullGc } from '../../src/util/gc.ts';
