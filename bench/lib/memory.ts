import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/** Peak resident set size of this process so far, in bytes (getrusage's ru_maxrss, which Node reports in KiB). */
export function peakRssBytes(): number {
  return process.resourceUsage().maxRSS * 1024;
}

export function formatBytes(bytes: number): string {
  return bytes >= 1024 ** 3
    ? `${(bytes / 1024 ** 3).toFixed(2)} GiB`
    : `${(bytes / 1024 ** 2).toFixed(0)} MiB`;
}

/**
 * A full garbage collection, without starting Node with --expose-gc (which worker pools that pass
 * process.execArgv on, such as piscina's, refuse): the flag is set at run time and `gc` taken from a
 * fresh context.
 */
export function fullGc(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}
