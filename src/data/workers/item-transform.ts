/**
 * The per-item work of the loader: decode (for file sources) and augment + preprocess into the model's
 * CHW tensor. The in-process path and the worker threads both call these functions, so a batch is the
 * same bits whichever of them produced it.
 */
import { type AugmentConfig, augmentAndPreprocess } from '../../imaging/augment.ts';
import type { DecodedImage, PreprocessConfig } from '../../imaging/image.ts';
import { preprocess } from '../../imaging/preprocess.ts';
import { Random } from '../../util/random.ts';
import type { ItemSource } from '../dataset.ts';
import { loadImageFile } from '../file-item.ts';

/** What turns a decoded image into model input; plain data, so it can be posted to a worker. */
export interface ItemTransform {
  readonly preprocess: PreprocessConfig;
  readonly channels: 1 | 3;
  /** Training augmentation, or false for the evaluation transform (resize + center crop). */
  readonly augment: AugmentConfig | false;
}

/** Decodes what a source describes, exactly as the item's own `load()` does. */
export function loadSource(source: ItemSource): Promise<DecodedImage> {
  return loadImageFile(source.path, source.fileKind);
}

/** `seed` is the item's own augmentation seed; unused by the evaluation transform. */
export function transformImage(image: DecodedImage, transform: ItemTransform, seed: number): Float32Array {
  return transform.augment
    ? augmentAndPreprocess(
        image,
        transform.preprocess,
        transform.augment,
        new Random(seed),
        transform.channels,
      )
    : preprocess(image, transform.preprocess, transform.channels);
}
