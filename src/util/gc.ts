import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/**
 * A full garbage collection of the calling thread's heap, without starting Node with --expose-gc (which
 * worker pools that pass process.execArgv on, such as piscina's, refuse): the flag is set at run time and
 * `gc` taken from a fresh context.
 *
 * For the rare moment a thread has just dropped a large buffer that it will not replace soon, such as the
 * serialized model the inference thread built a session from: V8 frees an ArrayBuffer's memory only when
 * a full collection finds it dead, and a thread that allocates little may not run one for hours.
 */
export function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}
