/**
 * Training augmentation, applied in float so 16-bit images keep their precision until normalisation.
 *
 * Order (torchvision's usual train transform): random resized crop to the model size (or, when it is
 * off, the evaluation resize + center crop), horizontal flip, rotation, brightness, contrast, then
 * (x - mean) / std. Unlike torchvision's ColorJitter, brightness always precedes contrast, so that a
 * seed fixes one order and the arithmetic is easy to check. Every draw comes from the `Random` passed
 * in, so the same seed and image give the same tensor.
 */
import type { Random } from '../util/random.ts';
import type { DecodedImage, PreprocessConfig } from './image.ts';
import { type ModelChannels, normalizeToCHW, resizeAndCenterCrop, toModelChannels } from './preprocess.ts';
import { type FloatImage, type PixelRect, resample } from './resize.ts';

export interface RandomResizedCropConfig {
  /** Range of the crop's area as a fraction of the image area. */
  readonly scale: readonly [number, number];
  /** Range of the crop's aspect ratio (width / height), sampled log-uniformly. */
  readonly ratio: readonly [number, number];
}

/** Each field: `false` turns the step off, undefined takes the default in DEFAULT_AUGMENT. */
export interface AugmentConfig {
  readonly randomResizedCrop?: RandomResizedCropConfig | false;
  /** Probability of a horizontal flip. */
  readonly horizontalFlip?: number | false;
  /** Rotation angle drawn uniformly from [-degrees, degrees]; positive is counter-clockwise. */
  readonly rotationDegrees?: number | false;
  /** Brightness factor drawn from [max(0, 1 - b), 1 + b]. */
  readonly brightness?: number | false;
  /** Contrast factor drawn from [max(0, 1 - c), 1 + c]. */
  readonly contrast?: number | false;
}

/**
 * Mild defaults for medical images: crops keep most of the field of view (lesions near the border stay
 * in), rotation is small (anatomy has an orientation), and intensity jitter is ±10%.
 */
export const DEFAULT_AUGMENT = {
  randomResizedCrop: { scale: [0.8, 1], ratio: [3 / 4, 4 / 3] },
  horizontalFlip: 0.5,
  rotationDegrees: 10,
  brightness: 0.1,
  contrast: 0.1,
} as const satisfies Required<AugmentConfig>;

/** Every step off (`--no-augment`): augmentAndPreprocess then equals preprocess. */
export const NO_AUGMENT: Required<AugmentConfig> = {
  randomResizedCrop: false,
  horizontalFlip: false,
  rotationDegrees: false,
  brightness: false,
  contrast: false,
};

/** Fill undefined fields with DEFAULT_AUGMENT and check the ranges. */
export function resolveAugmentConfig(config: AugmentConfig = {}): Required<AugmentConfig> {
  const resolved: Required<AugmentConfig> = {
    randomResizedCrop: config.randomResizedCrop ?? DEFAULT_AUGMENT.randomResizedCrop,
    horizontalFlip: config.horizontalFlip ?? DEFAULT_AUGMENT.horizontalFlip,
    rotationDegrees: config.rotationDegrees ?? DEFAULT_AUGMENT.rotationDegrees,
    brightness: config.brightness ?? DEFAULT_AUGMENT.brightness,
    contrast: config.contrast ?? DEFAULT_AUGMENT.contrast,
  };
  const crop = resolved.randomResizedCrop;
  if (crop !== false) {
    const [s0, s1] = crop.scale;
    const [r0, r1] = crop.ratio;
    if (!(s0 > 0 && s0 <= s1 && s1 <= 1))
      throw new RangeError(`randomResizedCrop.scale [${s0}, ${s1}] is not in (0, 1]`);
    if (!(r0 > 0 && r0 <= r1))
      throw new RangeError(`randomResizedCrop.ratio [${r0}, ${r1}] is not increasing and positive`);
  }
  const flip = resolved.horizontalFlip;
  if (flip !== false && !(flip >= 0 && flip <= 1))
    throw new RangeError(`horizontalFlip ${flip} is not a probability`);
  for (const key of ['rotationDegrees', 'brightness', 'contrast'] as const) {
    const value = resolved[key];
    if (value !== false && !(value >= 0 && Number.isFinite(value)))
      throw new RangeError(`${key} ${value} must be ≥ 0`);
  }
  return resolved;
}

/**
 * torchvision RandomResizedCrop.get_params: up to 10 tries at a crop with a random area fraction and
 * log-uniform aspect ratio that fits, else the largest centered crop whose ratio is within range.
 */
export function randomResizedCropRect(
  width: number,
  height: number,
  config: RandomResizedCropConfig,
  random: Random,
): PixelRect {
  const area = width * height;
  const logRatioLow = Math.log(config.ratio[0]);
  const logRatioHigh = Math.log(config.ratio[1]);
  for (let attempt = 0; attempt < 10; attempt++) {
    const targetArea = area * random.uniform(config.scale[0], config.scale[1]);
    const aspect = Math.exp(random.uniform(logRatioLow, logRatioHigh));
    const w = Math.round(Math.sqrt(targetArea * aspect));
    const h = Math.round(Math.sqrt(targetArea / aspect));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const y = random.int(height - h + 1);
      const x = random.int(width - w + 1);
      return { x, y, width: w, height: h };
    }
  }
  const inputRatio = width / height;
  let w = width;
  let h = height;
  if (inputRatio < config.ratio[0]) {
    h = Math.round(w / config.ratio[0]);
  } else if (inputRatio > config.ratio[1]) {
    w = Math.round(h * config.ratio[1]);
  }
  return { x: Math.floor((width - w) / 2), y: Math.floor((height - h) / 2), width: w, height: h };
}

/** Mirror left–right. */
export function flipHorizontal(image: FloatImage): FloatImage {
  const { width, height, channels, data } = image;
  const out = new Float32Array(data.length);
  for (let y = 0; y < height; y++) {
    const row = y * width * channels;
    for (let x = 0; x < width; x++) {
      const from = row + x * channels;
      const to = row + (width - 1 - x) * channels;
      for (let c = 0; c < channels; c++) out[to + c] = data[from + c];
    }
  }
  return { width, height, channels, data: out };
}

/**
 * Rotate about the image centre by `degrees` (counter-clockwise on screen), same size, bilinear;
 * neighbours outside the image count as 0 (black), which fades the corners in.
 */
export function rotate(image: FloatImage, degrees: number): FloatImage {
  const { width, height, channels, data } = image;
  const out = new Float32Array(data.length);
  const theta = (degrees * Math.PI) / 180;
  const cos = Math.cos(theta);
  const sin = Math.sin(theta);
  const cx = (width - 1) / 2;
  const cy = (height - 1) / 2;
  const stride = width * channels;
  for (let y = 0; y < height; y++) {
    const dy = y - cy;
    for (let x = 0; x < width; x++) {
      const dx = x - cx;
      // Inverse map: the source point that lands on (x, y) (y axis points down).
      const sx = dx * cos - dy * sin + cx;
      const sy = dx * sin + dy * cos + cy;
      const x0 = Math.floor(sx);
      const y0 = Math.floor(sy);
      if (x0 < -1 || y0 < -1 || x0 >= width || y0 >= height) continue;
      const fx = sx - x0;
      const fy = sy - y0;
      const w00 = (1 - fx) * (1 - fy);
      const w10 = fx * (1 - fy);
      const w01 = (1 - fx) * fy;
      const w11 = fx * fy;
      const inX0 = x0 >= 0;
      const inX1 = x0 + 1 < width;
      const inY0 = y0 >= 0;
      const inY1 = y0 + 1 < height;
      const o = (y * width + x) * channels;
      const p = y0 * stride + x0 * channels;
      for (let c = 0; c < channels; c++) {
        let value = 0;
        if (inY0 && inX0) value += w00 * data[p + c];
        if (inY0 && inX1) value += w10 * data[p + channels + c];
        if (inY1 && inX0) value += w01 * data[p + stride + c];
        if (inY1 && inX1) value += w11 * data[p + stride + channels + c];
        out[o + c] = value;
      }
    }
  }
  return { width, height, channels, data: out };
}

function clamp01(value: number): number {
  return Math.min(1, Math.max(0, value));
}

/** torchvision adjust_brightness on floats: clamp(factor · x, 0, 1). */
export function adjustBrightness(image: FloatImage, factor: number): FloatImage {
  const data = image.data;
  const out = new Float32Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = clamp01(factor * data[i]);
  return { ...image, data: out };
}

/**
 * torchvision adjust_contrast on floats: clamp(factor · x + (1 − factor) · m, 0, 1) where m is the mean
 * grey level (0.2989 R + 0.587 G + 0.114 B for colour images).
 */
export function adjustContrast(image: FloatImage, factor: number): FloatImage {
  const { channels, data } = image;
  const pixels = image.width * image.height;
  let total = 0;
  if (channels === 3) {
    for (let i = 0; i < pixels; i++)
      total += 0.2989 * data[3 * i] + 0.587 * data[3 * i + 1] + 0.114 * data[3 * i + 2];
  } else {
    for (let i = 0; i < data.length; i++) total += data[i];
  }
  const mean = total / pixels / (channels === 3 ? 1 : channels);
  const offset = (1 - factor) * mean;
  const out = new Float32Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = clamp01(factor * data[i] + offset);
  return { ...image, data: out };
}

/**
 * One training sample: augment `image` and return the CHW float32 tensor of `preprocess`'s layout
 * (channels × inputSize[0] × inputSize[1]).
 */
export function augmentAndPreprocess(
  image: DecodedImage,
  preprocess: PreprocessConfig,
  augment: AugmentConfig,
  random: Random,
  channels: ModelChannels = 3,
): Float32Array {
  const config = resolveAugmentConfig(augment);
  const source = toModelChannels(image, channels);
  const [inputHeight, inputWidth] = preprocess.inputSize;

  let current: FloatImage;
  if (config.randomResizedCrop !== false) {
    const rect = randomResizedCropRect(source.width, source.height, config.randomResizedCrop, random);
    current = resample(source, inputWidth, inputHeight, preprocess.interpolation, { sourceRect: rect });
  } else {
    current = resizeAndCenterCrop(source, preprocess);
  }
  if (config.horizontalFlip !== false && random.float() < config.horizontalFlip)
    current = flipHorizontal(current);
  if (config.rotationDegrees !== false) {
    current = rotate(current, random.uniform(-config.rotationDegrees, config.rotationDegrees));
  }
  if (config.brightness !== false) {
    current = adjustBrightness(
      current,
      random.uniform(Math.max(0, 1 - config.brightness), 1 + config.brightness),
    );
  }
  if (config.contrast !== false) {
    current = adjustContrast(current, random.uniform(Math.max(0, 1 - config.contrast), 1 + config.contrast));
  }
  return normalizeToCHW(current, preprocess, channels);
}
