/**
 * A decoded image in melo's one internal form: float32 values in [0, 1], interleaved (HWC), 1 or 3
 * channels. Every decoder (sharp for PNG/JPEG/TIFF/WebP, the DICOM reader) produces this, so 8- and
 * 16-bit sources keep their precision until normalisation.
 */
export interface DecodedImage {
  readonly width: number;
  readonly height: number;
  readonly channels: 1 | 3;
  /** length = width * height * channels, row-major, channels interleaved, values in [0, 1]. */
  readonly data: Float32Array;
}

export type Interpolation = 'nearest' | 'bilinear' | 'bicubic';

/**
 * How a checkpoint expects its input: resize, center crop, then (x - mean) / std per channel.
 * Built from Hugging Face `preprocessor_config.json` or timm `pretrained_cfg`.
 */
export interface PreprocessConfig {
  /** Final input size [height, width] fed to the model. */
  readonly inputSize: readonly [number, number];
  /**
   * How to resize before cropping. 'exact': resize straight to `resizeSize` (HF ViTImageProcessor);
   * 'shortest': scale so the shorter side equals `resizeSize[0]`, keeping the aspect (timm eval).
   */
  readonly resizeMode: 'exact' | 'shortest';
  readonly resizeSize: readonly [number, number];
  readonly interpolation: Interpolation;
  /**
   * The center crop's offset when the margin is odd: torchvision's CenterCrop (timm, open_clip) rounds
   * half to even ('round', the default); Hugging Face's `image_transforms.center_crop` floors ('floor').
   */
  readonly cropOffset?: 'round' | 'floor';
  readonly mean: readonly [number, number, number];
  readonly std: readonly [number, number, number];
}
