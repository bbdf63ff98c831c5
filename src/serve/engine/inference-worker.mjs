// Worker entry of the serving inference thread. The thread's code is TypeScript: imported directly when
// a TypeScript loader is active in this thread, otherwise after registering tsx (the parent's loader
// hooks are not inherited by worker threads in Node 20; bin/melo.js registers tsx the same way).
let thread;
try {
  thread = await import('./inference-thread.ts');
} catch (error) {
  if (error?.code !== 'ERR_UNKNOWN_FILE_EXTENSION') throw error;
  const { register } = await import('tsx/esm/api');
  register();
  thread = await import('./inference-thread.ts?with-tsx');
}
thread.startInferenceThread();
