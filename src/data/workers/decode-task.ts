/** The function each decode worker runs for one item (loaded by decode-worker.mjs). */
import { move } from 'piscina';
import { loadSource, transformImage } from './item-transform.ts';
import { type DecodeReply, type DecodeTask, describeFailure } from './protocol.ts';

/** Decodes and transforms one item; failures come back as data, since errors lose their code when cloned. */
export async function runDecodeTask(task: DecodeTask): Promise<DecodeReply> {
  try {
    const image = task.input.kind === 'source' ? await loadSource(task.input.source) : task.input.image;
    return transformImage(image, task.transform, task.seed);
  } catch (error) {
    return { failure: describeFailure(error) };
  }
}

/** The worker entry: the tensor is handed over to the loader's thread, not cloned (600 kB at 224 px). */
export default async function decodeTask(task: DecodeTask): Promise<DecodeReply> {
  const reply = await runDecodeTask(task);
  return reply instanceof Float32Array ? (move(reply) as Float32Array) : reply;
}
