// One worker thread of the optimiser's update kernel (src/train/update-kernel.ts). It instantiates
// update.wasm on the shared memory it was given and runs each request's jobs on it. Plain JavaScript: the
// thread needs no TypeScript loader, so it starts in milliseconds.
import { parentPort, workerData } from 'node:worker_threads';

const { module, memory } = workerData;
const kernel = new WebAssembly.Instance(module, { env: { memory } }).exports;

parentPort.on('message', (request) => {
  try {
    if (request.op === 'adamw') {
      const { b1, b2, k1, k2, stepSize, ic2, eps } = request.scalars;
      for (const [p, g, m, v, count, decay] of request.jobs)
        kernel.adamw(p, g, m, v, count, b1, b2, k1, k2, stepSize, ic2, eps, decay);
    } else if (request.op === 'sgd_momentum') {
      for (const [p, g, b, count, decay] of request.jobs)
        kernel.sgd_momentum(p, g, b, count, request.momentum, request.lr, decay);
    } else {
      for (const [p, g, count, decay] of request.jobs) kernel.sgd(p, g, count, request.lr, decay);
    }
    parentPort.postMessage({ id: request.id });
  } catch (error) {
    parentPort.postMessage({ id: request.id, error: String(error?.message ?? error) });
  }
});
