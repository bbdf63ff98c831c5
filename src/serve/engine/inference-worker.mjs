// Worker entry of the serving inference thread (src/util/worker-entry.mjs says how it loads its code).
import { importBeside } from '../../util/worker-entry.mjs';

const thread = await importBeside(import.meta.url, 'inference-thread');
thread.startInferenceThread();
