// Entry point piscina loads in each worker thread. The task code is TypeScript: when a TypeScript loader
// is already active in this thread it is imported directly, otherwise tsx is registered first (as
// bin/melo.js does; Node 20 does not carry the parent's `--import tsx` hooks into worker threads).
import { existsSync } from 'node:fs';

let loaded;
if (existsSync(new URL('./decode-task.js', import.meta.url))) {
  // Compiled (dist/): the JavaScript beside this file.
  loaded = await import('./decode-task.js');
} else {
  try {
    loaded = await import('./decode-task.ts');
  } catch (error) {
    if (error?.code !== 'ERR_UNKNOWN_FILE_EXTENSION') throw error;
    const { register } = await import('tsx/esm/api');
    register();
    // A new URL: the failed import above stays cached under the plain one.
    loaded = await import('./decode-task.ts?tsx');
  }
}
export default loaded.default;
