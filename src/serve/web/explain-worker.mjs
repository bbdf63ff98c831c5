// Entry point piscina loads in the explanation thread (src/util/worker-entry.mjs says how).
import { importBeside } from '../../util/worker-entry.mjs';

const loaded = await importBeside(import.meta.url, 'explain-task');
export default loaded.default;
