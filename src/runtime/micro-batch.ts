import { MeloError } from '../errors.ts';
import type { HostTensor } from '../tensor.ts';

/**
 * Images per ORT run when a caller hands over a larger batch, on the CPU provider. ORT's CPU MatMul is
 * fastest at a few hundred rows; a ViT-B/16 batch of 8 is 1,576 rows per product, and running it as
 * micro-batches through the same session took less time in `npm run bench:infer -- --micro-batches`
 * (docs/benchmarks.md). On CUDA bigger batches win, so there the whole batch runs at once.
 */
export const CPU_MICRO_BATCH = 4;

export function defaultMicroBatch(): number {
  const fromEnv = process.env.MELO_MICRO_BATCH;
  if (fromEnv !== undefined && fromEnv !== '') {
    const value = Number(fromEnv);
    if (!Number.isInteger(value) || value < 1)
      throw new MeloError('USAGE', `MELO_MICRO_BATCH must be a positive integer, got '${fromEnv}'`);
    return value;
  }
  return (process.env.MELO_EXECUTION_PROVIDER ?? 'cpu').toLowerCase() === 'cuda'
    ? Number.POSITIVE_INFINITY
    : CPU_MICRO_BATCH;
}

/**
 * Runs `batch` rows as consecutive runs of at most `microBatch` rows and concatenates each output along
 * its first axis. Every output must have the batch as its first dimension.
 */
export async function runInMicroBatches(
  batch: number,
  microBatch: number,
  runChunk: (start: number, count: number) => Promise<Record<string, HostTensor>>,
): Promise<Record<string, HostTensor>> {
  if (batch <= microBatch) return runChunk(0, batch);
  const chunks: Record<string, HostTensor>[] = [];
  for (let start = 0; start < batch; start += microBatch) {
    chunks.push(await runChunk(start, Math.min(microBatch, batch - start)));
  }
  const joined: Record<string, HostTensor> = {};
  for (const name of Object.keys(chunks[0]!)) {
    const parts = chunks.map((chunk) => chunk[name]!);
    const rowShape = parts[0]!.shape.slice(1);
    const data = new Float32Array(parts.reduce((sum, part) => sum + part.data.length, 0));
    let offset = 0;
    for (const part of parts) {
      data.set(part.data, offset);
      offset += part.data.length;
    }
    joined[name] = { shape: [batch, ...rowShape], data };
  }
  return joined;
}
