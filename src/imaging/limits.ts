import { MeloError } from '../errors.ts';

/**
 * How much work one image file may buy, decided from what its header declares before any pixel is
 * decoded. Every reader of untrusted images (predict, data items, serving) takes these; the defaults
 * fit the largest images melo is meant for (a 4096 × 5625 mammogram is 23 megapixels).
 */
export interface ImageLimits {
  /** Decoded pixels (width × height) of one image or DICOM frame. */
  readonly maxPixels: number;
  /**
   * Bytes a deflated DICOM data set may inflate to, whatever it declares (the hard cap); below it, the
   * bound is what the header declares: the data set before Pixel Data plus rows × columns × frames ×
   * samples × bytes per sample.
   */
  readonly maxInflatedBytes: number;
  /** Data elements in a DICOM data set, sequence items' elements included. */
  readonly maxDicomElements: number;
  /** Sequence nesting depth of a DICOM data set. */
  readonly maxDicomDepth: number;
}

/** 40 megapixels: mammograms and radiographs fit; an 8192 × 8190 PNG bomb of 195 KB does not. */
export const DEFAULT_MAX_PIXELS = 40_000_000;

export const DEFAULT_IMAGE_LIMITS: ImageLimits = {
  maxPixels: DEFAULT_MAX_PIXELS,
  maxInflatedBytes: 256 * 2 ** 20,
  // Real files hold hundreds to a few tens of thousands (enhanced multi-frame with per-frame groups).
  maxDicomElements: 200_000,
  maxDicomDepth: 16,
};

export function imageLimits(overrides: Partial<ImageLimits> = {}): ImageLimits {
  const defined = Object.fromEntries(Object.entries(overrides).filter(([, value]) => value !== undefined));
  return { ...DEFAULT_IMAGE_LIMITS, ...defined };
}

/** An image beyond a limit: code TOO_LARGE (the server answers 413). */
export function tooLarge(file: string, message: string): MeloError {
  return new MeloError('TOO_LARGE', message, { file });
}

/** Refuses width × height above the pixel limit, before anything is decoded. */
export function checkPixels(width: number, height: number, limits: ImageLimits, file: string): void {
  if (width * height > limits.maxPixels) {
    throw tooLarge(
      file,
      `image of ${width}x${height} pixels exceeds the limit of ${limits.maxPixels} pixels (--max-pixels)`,
    );
  }
}
