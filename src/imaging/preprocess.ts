/**
 * Evaluation preprocessing: a DecodedImage to the CHW float32 tensor a checkpoint expects, and the
 * builders that read that expectation from Hugging Face and timm configs.
 *
 * The pipeline is the one HF and timm run with PIL: resize (exactly, or the shorter side as
 * torchvision's Resize(int) does), center crop (torchvision's offsets, or HF's floored ones for HF processors), then (x - mean) / std. Resizing
 * is done on float data by ./resize.ts with Pillow's filters, so 8-bit inputs match PIL closely and 16-bit
 * inputs keep their precision (sharp's resize was not used: it rounds to the storage type and its
 * kernels differ from PIL's).
 */
import { MeloError } from '../errors.ts';
import type { DecodedImage, Interpolation, PreprocessConfig } from './image.ts';
import { type FloatImage, type PixelRect, resample } from './resize.ts';

export type ModelChannels = 1 | 3;

const IMAGENET_DEFAULT_MEAN = [0.485, 0.456, 0.406] as const;
const IMAGENET_DEFAULT_STD = [0.229, 0.224, 0.225] as const;
const IMAGENET_INCEPTION_MEAN = [0.5, 0.5, 0.5] as const;
const IMAGENET_INCEPTION_STD = [0.5, 0.5, 0.5] as const;

/** Python's round(): halves go to the even neighbour, which decides torchvision's crop offsets. */
export function roundHalfEven(value: number): number {
  const floor = Math.floor(value);
  const fraction = value - floor;
  if (fraction < 0.5) return floor;
  if (fraction > 0.5) return floor + 1;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** Size [width, height] after the resize step of `config`, for a width × height source. */
export function resizedSize(width: number, height: number, config: PreprocessConfig): [number, number] {
  if (config.resizeMode === 'exact') return [config.resizeSize[1], config.resizeSize[0]];
  // torchvision Resize(int): the shorter side becomes `size`, the longer int(size * long / short).
  const size = config.resizeSize[0];
  if (width <= height) return [size, Math.trunc((size * height) / width)];
  return [Math.trunc((size * width) / height), size];
}

function centerOffset(size: number, crop: number, rounding: 'round' | 'floor'): number {
  // torchvision pads (crop - size) // 2 on the leading side when the crop is larger, then crops at 0.
  if (crop > size) return -Math.floor((crop - size) / 2);
  return rounding === 'floor' ? Math.floor((size - crop) / 2) : roundHalfEven((size - crop) / 2);
}

/** torchvision center_crop's window (may overhang the image; the overhang is zero padding). */
export function centerCropRect(
  width: number,
  height: number,
  cropHeight: number,
  cropWidth: number,
  rounding: 'round' | 'floor' = 'round',
): PixelRect {
  return {
    x: centerOffset(width, cropWidth, rounding),
    y: centerOffset(height, cropHeight, rounding),
    width: cropWidth,
    height: cropHeight,
  };
}

/**
 * The image in the channel count the model reads: RGB becomes grey with PIL's convert('L') weights
 * when the model wants one channel; grey stays one channel either way (normalisation repeats it).
 */
export function toModelChannels(image: DecodedImage, channels: ModelChannels): FloatImage {
  if (channels === 3 || image.channels === 1) return image;
  const pixels = image.width * image.height;
  const grey = new Float32Array(pixels);
  const rgb = image.data;
  for (let i = 0; i < pixels; i++) {
    grey[i] = (rgb[3 * i] * 299) / 1000 + (rgb[3 * i + 1] * 587) / 1000 + (rgb[3 * i + 2] * 114) / 1000;
  }
  return { width: image.width, height: image.height, channels: 1, data: grey };
}

/** Resize then center crop to `config.inputSize`, in one resampling pass over the needed pixels only. */
export function resizeAndCenterCrop(image: FloatImage, config: PreprocessConfig): FloatImage {
  const [resizedWidth, resizedHeight] = resizedSize(image.width, image.height, config);
  const [cropHeight, cropWidth] = config.inputSize;
  const window = centerCropRect(resizedWidth, resizedHeight, cropHeight, cropWidth, config.cropOffset);
  return resample(image, resizedWidth, resizedHeight, config.interpolation, { outputWindow: window });
}

/**
 * (x - mean) / std into a CHW tensor of `channels` planes; a one-channel image is repeated into three
 * planes (each normalised with its own mean/std), and a one-channel model uses mean[0]/std[0].
 */
export function normalizeToCHW(
  image: FloatImage,
  config: PreprocessConfig,
  channels: ModelChannels,
): Float32Array {
  const plane = image.width * image.height;
  const source = image.data;
  const sourceChannels = image.channels;
  if (sourceChannels !== 1 && sourceChannels !== channels) {
    throw new RangeError(`cannot normalise a ${sourceChannels}-channel image into ${channels} channels`);
  }
  const out = new Float32Array(channels * plane);
  for (let c = 0; c < channels; c++) {
    const mean = config.mean[c];
    const std = config.std[c];
    const from = sourceChannels === 1 ? 0 : c;
    const base = c * plane;
    for (let i = 0, s = from; i < plane; i++, s += sourceChannels) out[base + i] = (source[s] - mean) / std;
  }
  return out;
}

/** Decoded image → CHW float32 of size channels × inputSize[0] × inputSize[1], as the checkpoint expects. */
export function preprocess(
  image: DecodedImage,
  config: PreprocessConfig,
  channels: ModelChannels = 3,
): Float32Array {
  const cropped = resizeAndCenterCrop(toModelChannels(image, channels), config);
  return normalizeToCHW(cropped, config, channels);
}

// ---------------------------------------------------------------------------------------------------
// Config builders

type JsonObject = Record<string, unknown>;

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

class ConfigReader {
  constructor(
    private readonly source: string,
    private readonly file: string | undefined,
  ) {}

  fail(message: string, code: 'BAD_CHECKPOINT' | 'UNSUPPORTED' = 'BAD_CHECKPOINT'): never {
    throw new MeloError(code, `${this.source}: ${message}`, { file: this.file });
  }

  positiveInt(value: unknown, what: string): number {
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
      this.fail(`${what} must be a positive integer, got ${JSON.stringify(value)}`);
    }
    return value;
  }

  positiveNumber(value: unknown, what: string): number {
    if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
      this.fail(`${what} must be a positive number, got ${JSON.stringify(value)}`);
    }
    return value;
  }

  boolean(value: unknown, what: string, fallback: boolean): boolean {
    if (value === undefined || value === null) return fallback;
    if (typeof value !== 'boolean') this.fail(`${what} must be true or false, got ${JSON.stringify(value)}`);
    return value;
  }

  /** A per-channel triple from a number, a 1-element list (grey models) or a 3-element list. */
  triple(
    value: unknown,
    what: string,
    fallback: readonly [number, number, number],
  ): [number, number, number] {
    if (value === undefined || value === null) return [...fallback];
    const list = typeof value === 'number' ? [value] : value;
    if (
      !Array.isArray(list) ||
      (list.length !== 1 && list.length !== 3) ||
      !list.every((x) => typeof x === 'number' && Number.isFinite(x))
    ) {
      this.fail(`${what} must be a number or a list of 1 or 3 numbers, got ${JSON.stringify(value)}`);
    }
    const numbers = list as number[];
    return numbers.length === 1 ? [numbers[0], numbers[0], numbers[0]] : [numbers[0], numbers[1], numbers[2]];
  }

  /** [height, width] from an int or {height, width}. */
  heightWidth(value: unknown, what: string): [number, number] {
    if (typeof value === 'number') {
      const side = this.positiveInt(value, what);
      return [side, side];
    }
    if (isObject(value) && value.height !== undefined && value.width !== undefined) {
      return [
        this.positiveInt(value.height, `${what}.height`),
        this.positiveInt(value.width, `${what}.width`),
      ];
    }
    this.fail(`${what} must be an integer or {height, width}, got ${JSON.stringify(value)}`);
  }
}

const PIL_RESAMPLE: Record<number, Interpolation | string> = {
  0: 'nearest',
  1: 'lanczos',
  2: 'bilinear',
  3: 'bicubic',
  4: 'box',
  5: 'hamming',
};

/**
 * From a Hugging Face `preprocessor_config.json` (parsed). Defaults when a key is absent follow
 * ViTImageProcessor: resize to 224×224 bilinear, rescale 1/255, mean = std = 0.5 (IMAGENET_STANDARD).
 * An integer `size` means a square, except for CLIP- and BiT-style processors where it means the
 * shortest edge (HF's default_to_square=False). HF rescales pixel values v ∈ [0, 255] by
 * `rescale_factor` before normalising; decoded images are already x = v / 255, so the rescale is folded
 * into mean and std: (255·f·x − mean) / std = (x − mean/(255·f)) / (std/(255·f)).
 * `do_resize: false` still resizes to the model size (a no-op for inputs already at that size), since
 * the model cannot take any other size.
 */
export function preprocessConfigFromHF(config: unknown, file?: string): PreprocessConfig {
  const reader: ConfigReader = new ConfigReader('preprocessor config', file);
  if (!isObject(config)) reader.fail('expected a JSON object');
  const json: JsonObject = config;
  const processorType = String(json.image_processor_type ?? json.feature_extractor_type ?? '');
  const intMeansShortestEdge = /CLIP|Bit/.test(processorType);

  const resampleCode = json.resample ?? 2;
  const interpolation = PIL_RESAMPLE[resampleCode as number];
  if (interpolation === undefined)
    reader.fail(`resample ${JSON.stringify(resampleCode)} is not a PIL filter code`);
  if (interpolation !== 'nearest' && interpolation !== 'bilinear' && interpolation !== 'bicubic') {
    reader.fail(`resample ${resampleCode} (${interpolation}) is not supported; use 0, 2 or 3`, 'UNSUPPORTED');
  }

  const size = json.size ?? { height: 224, width: 224 };
  let resizeMode: PreprocessConfig['resizeMode'];
  let resizeSize: [number, number];
  let shortestEdge: number | undefined;
  if (typeof size === 'number' && intMeansShortestEdge) {
    shortestEdge = reader.positiveInt(size, 'size');
  } else if (isObject(size) && size.shortest_edge !== undefined) {
    if (size.longest_edge !== undefined) reader.fail('size.longest_edge is not supported', 'UNSUPPORTED');
    shortestEdge = reader.positiveInt(size.shortest_edge, 'size.shortest_edge');
  }
  let cropSize: [number, number] | undefined;
  if (shortestEdge !== undefined) {
    resizeMode = 'shortest';
    resizeSize = [shortestEdge, shortestEdge];
    const cropPct = json.crop_pct;
    if (typeof cropPct === 'number') {
      // ConvNeXt/PoolFormer: resize the short side to size / crop_pct, then crop size × size; ConvNeXt
      // warps straight to the square at 384 px and above.
      reader.positiveNumber(cropPct, 'crop_pct');
      if (/ConvNext/.test(processorType) && shortestEdge >= 384) {
        resizeMode = 'exact';
      } else {
        resizeSize = [Math.trunc(shortestEdge / cropPct), Math.trunc(shortestEdge / cropPct)];
        cropSize = [shortestEdge, shortestEdge];
      }
    }
  } else {
    resizeMode = 'exact';
    resizeSize = reader.heightWidth(size, 'size');
  }

  const doCenterCrop = reader.boolean(json.do_center_crop, 'do_center_crop', json.crop_size !== undefined);
  if (doCenterCrop && json.crop_size !== undefined)
    cropSize = reader.heightWidth(json.crop_size, 'crop_size');
  if (cropSize === undefined) {
    if (resizeMode === 'shortest') {
      reader.fail('a shortest-edge resize without a center crop gives no fixed input size', 'UNSUPPORTED');
    }
    cropSize = [resizeSize[0], resizeSize[1]];
  }

  const doRescale = reader.boolean(json.do_rescale, 'do_rescale', true);
  const rescaleFactor = doRescale
    ? reader.positiveNumber(json.rescale_factor ?? 1 / 255, 'rescale_factor')
    : 1;
  const doNormalize = reader.boolean(json.do_normalize, 'do_normalize', true);
  const mean = doNormalize
    ? reader.triple(json.image_mean, 'image_mean', IMAGENET_INCEPTION_MEAN)
    : [0, 0, 0];
  const std = doNormalize ? reader.triple(json.image_std, 'image_std', IMAGENET_INCEPTION_STD) : [1, 1, 1];
  if (std.some((s) => s === 0)) reader.fail('image_std must not contain 0');
  const unitsPerPixel = 255 * rescaleFactor;
  const fold = Math.abs(unitsPerPixel - 1) < 1e-12 ? 1 : unitsPerPixel;

  return {
    inputSize: cropSize,
    resizeMode,
    resizeSize,
    interpolation,
    cropOffset: 'floor',
    mean: [mean[0] / fold, mean[1] / fold, mean[2] / fold],
    std: [std[0] / fold, std[1] / fold, std[2] / fold],
  };
}

/**
 * From timm's `pretrained_cfg` (or a timm hub `config.json` holding `architecture` and
 * `pretrained_cfg`), following timm's eval transform (transforms_factory): the resize size is
 * floor(input / crop_pct) per side; crop_mode 'center' resizes the shorter side to it (only square inputs,
 * where timm uses Resize(int)) and 'squash' resizes to it exactly, then both center crop to input_size.
 * Defaults: input_size [3, 224, 224], interpolation 'bicubic', crop_pct 0.875, crop_mode 'center';
 * mean/std IMAGENET_INCEPTION (0.5) for `vit_*` architectures (their pretrained cfgs use it) and
 * IMAGENET_DEFAULT otherwise.
 */
export function preprocessConfigFromTimm(pretrainedCfg: unknown, file?: string): PreprocessConfig {
  const reader: ConfigReader = new ConfigReader('timm pretrained_cfg', file);
  if (!isObject(pretrainedCfg)) reader.fail('expected a JSON object');
  const outer: JsonObject = pretrainedCfg;
  const cfg = isObject(outer.pretrained_cfg) ? outer.pretrained_cfg : outer;
  const architecture = String(outer.architecture ?? cfg.architecture ?? '');

  const inputSize = cfg.input_size ?? [3, 224, 224];
  if (!Array.isArray(inputSize) || inputSize.length !== 3) {
    reader.fail(`input_size must be [channels, height, width], got ${JSON.stringify(inputSize)}`);
  }
  const height = reader.positiveInt(inputSize[1], 'input_size[1]');
  const width = reader.positiveInt(inputSize[2], 'input_size[2]');

  const interpolation = cfg.interpolation ?? 'bicubic';
  if (interpolation !== 'nearest' && interpolation !== 'bilinear' && interpolation !== 'bicubic') {
    reader.fail(`interpolation ${JSON.stringify(interpolation)} is not supported`, 'UNSUPPORTED');
  }
  const cropPct = reader.positiveNumber(cfg.crop_pct ?? 0.875, 'crop_pct');
  const cropMode = cfg.crop_mode ?? 'center';
  const scaleHeight = Math.floor(height / cropPct);
  const scaleWidth = Math.floor(width / cropPct);
  let resizeMode: PreprocessConfig['resizeMode'];
  if (cropMode === 'squash') {
    resizeMode = 'exact';
  } else if (cropMode === 'center') {
    if (scaleHeight !== scaleWidth) {
      reader.fail(
        `crop_mode 'center' with a non-square input_size ${height}x${width} is not supported`,
        'UNSUPPORTED',
      );
    }
    resizeMode = 'shortest';
  } else {
    reader.fail(`crop_mode ${JSON.stringify(cropMode)} is not supported (center, squash)`, 'UNSUPPORTED');
  }

  const vit = architecture.startsWith('vit_');
  const mean = reader.triple(cfg.mean, 'mean', vit ? IMAGENET_INCEPTION_MEAN : IMAGENET_DEFAULT_MEAN);
  const std = reader.triple(cfg.std, 'std', vit ? IMAGENET_INCEPTION_STD : IMAGENET_DEFAULT_STD);
  if (std.some((s) => s === 0)) reader.fail('std must not contain 0');
  return {
    inputSize: [height, width],
    resizeMode,
    resizeSize: [scaleHeight, scaleWidth],
    interpolation,
    mean,
    std,
  };
}
