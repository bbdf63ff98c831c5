// Worker entry of the serving inference thread. The thread's code is TypeScript: imported directly when
// a TypeScript loader is active in this thread, otherwise after registering tsx (the parent's loader
// hooks are not inherited by worker threads in Node 20; bin/melo.js registers tsx the same way).
import { existsSync } from 'node:fs';

let thread;
if (existsSync(new URL('./inference-thread.js', import.meta.url))) {
  // Compiled (dist/): the JavaScript beside this file.
  thread = await import('./inference-thread.js');
} else {
  try {
    thread = await import('./inference-thread.ts');
  } catch (error) {
    if (error?.code !== 'ERR_UNKNOWN_FILE_EXTENSION') throw error;
    const { register } = await import('tsx/esm/api');
    register();
    thread = await import('./inference-thread.ts?with-tsx');
  }
}
thread.startInferenceThread();
