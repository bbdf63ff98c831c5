import { createHash } from 'node:crypto';
import type { Adapter } from '../model/adapter.ts';

/**
 * What identifies an adapter's numbers: its LoRA layout and every tensor value (float32, as computed
 * with), in a fixed order. Like the backbone's fingerprint, it does not depend on the file's dtype or
 * layout on disk, only on what the model computes with.
 */
export function fingerprintAdapter(adapter: Adapter): string {
  const hash = createHash('sha256');
  const { rank, alpha, targets, layers } = adapter.lora;
  hash.update(JSON.stringify({ rank, alpha, targets, layers: layers ?? null }));
  const tensors = [
    ...[...adapter.pairs.keys()].sort().flatMap((key) => {
      const pair = adapter.pairs.get(key)!;
      return [
        [`${key}.A`, pair.A.data],
        [`${key}.B`, pair.B.data],
      ] as const;
    }),
    ['head.weight', adapter.head.weight.data] as const,
    ['head.bias', adapter.head.bias.data] as const,
  ];
  for (const [name, data] of tensors) {
    hash.update(name);
    hash.update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  }
  return `sha256:${hash.digest('hex').slice(0, 32)}`;
}
