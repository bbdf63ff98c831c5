import type { DecodedImage } from '../imaging/image.ts';
import { type DataItem, type Dataset, withItems } from './dataset.ts';

/**
 * Keeps each item's decoded pixels after the first load, as 8-bit values (exact for 8-bit sources such
 * as JPEG crops), so that datasets whose items are expensive to decode (a crop that needs its whole
 * JPEG) cost one decode per item, not one per epoch. Memory: width·height·channels bytes per item.
 */
export function memoizeEightBit(dataset: Dataset): Dataset {
  const items = dataset.items.map((item): DataItem => {
    let cached: { width: number; height: number; channels: 1 | 3; bytes: Uint8Array } | undefined;
    const { load: _load, ...rest } = item;
    return {
      ...rest,
      async load(): Promise<DecodedImage> {
        if (!cached) {
          const image = await item.load();
          cached = {
            width: image.width,
            height: image.height,
            channels: image.channels,
            bytes: Uint8Array.from(image.data, (v) => Math.round(v * 255)),
          };
        }
        return {
          width: cached.width,
          height: cached.height,
          channels: cached.channels,
          data: Float32Array.from(cached.bytes, (v) => v / 255),
        };
      },
    };
  });
  return withItems(dataset, items);
}
