// The one loader behind every worker-thread entry point (training decode, upload decode, explanations,
// the serving inference thread). A thread's code is TypeScript in the repository and JavaScript in dist/:
// the compiled file beside the entry wins; otherwise the TypeScript is imported directly when a loader is
// active in this thread, else after registering tsx (Node 20 does not carry the parent's `--import tsx`
// hooks into worker threads; bin/melo.js registers tsx the same way).
import { existsSync } from 'node:fs';

/** Imports `<name>.js` (dist/) or `<name>.ts` (sources) from the folder of `entryUrl`. */
export async function importBeside(entryUrl, name) {
  const compiled = new URL(`./${name}.js`, entryUrl);
  if (existsSync(compiled)) return import(compiled.href);
  const source = new URL(`./${name}.ts`, entryUrl);
  try {
    return await import(source.href);
  } catch (error) {
    if (error?.code !== 'ERR_UNKNOWN_FILE_EXTENSION') throw error;
    const { register } = await import('tsx/esm/api');
    register();
    // A new URL: the failed import above stays cached under the plain one.
    return import(`${source.href}?tsx`);
  }
}
