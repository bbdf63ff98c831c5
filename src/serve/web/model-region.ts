import type { PreprocessConfig } from '../../imaging/image.ts';
import { centerCropRect, resizedSize } from '../../imaging/preprocess.ts';

/** A rectangle as fractions of an image's width and height (it may overhang: crops can pad). */
export interface FractionRect {
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
}

/**
 * The part of a width × height image the model sees after preprocessing (resize, then center crop), as
 * fractions of the image, so a heatmap over the model input can be laid over the original picture.
 */
export function modelRegion(width: number, height: number, config: PreprocessConfig): FractionRect {
  const [resizedWidth, resizedHeight] = resizedSize(width, height, config);
  const [cropHeight, cropWidth] = config.inputSize;
  const crop = centerCropRect(resizedWidth, resizedHeight, cropHeight, cropWidth, config.cropOffset);
  return {
    x: crop.x / resizedWidth,
    y: crop.y / resizedHeight,
    width: crop.width / resizedWidth,
    height: crop.height / resizedHeight,
  };
}
