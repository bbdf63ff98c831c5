// Entry point piscina loads in each upload decode thread (src/util/worker-entry.mjs says how).
import { importBeside } from '../../util/worker-entry.mjs';

const loaded = await importBeside(import.meta.url, 'upload-task');
export default loaded.default;
