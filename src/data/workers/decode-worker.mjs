// Entry point piscina loads in each training decode thread (src/util/worker-entry.mjs says how).
import { importBeside } from '../../util/worker-entry.mjs';

const loaded = await importBeside(import.meta.url, 'decode-task');
export default loaded.default;
