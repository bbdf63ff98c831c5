// Entry point piscina loads in each upload decode thread. The task code is TypeScript: imported directly
// when a TypeScript loader is active in this thread, otherwise after registering tsx (Node 20 does not
// carry the parent's `--import tsx` hooks into worker threads; bin/melo.js registers tsx the same way).
import { existsSync } from 'node:fs';

let loaded;
if (existsSync(new URL('./upload-task.js', import.meta.url))) {
  // Compiled (dist/): the JavaScript beside this file.
  loaded = await import('./upload-task.js');
} else {
  try {
    loaded = await import('./upload-task.ts');
  } catch (error) {
    if (error?.code !== 'ERR_UNKNOWN_FILE_EXTENSION') throw error;
    const { register } = await import('tsx/esm/api');
    register();
    // A new URL: the failed import above stays cached under the plain one.
    loaded = await import('./upload-task.ts?tsx');
  }
}
export default loaded.default;
