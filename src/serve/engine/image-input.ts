import sharp, { type Metadata } from 'sharp';
import type { Backbone } from '../../checkpoints/load.ts';
import { errorMessage, MeloError } from '../../errors.ts';
import { isDicom } from '../../imaging/dicom/index.ts';
import { parseDicomBytes } from '../../imaging/dicom/parse.ts';
import { readPixelModule } from '../../imaging/dicom/pixel-module.ts';
import type { DecodedImage } from '../../imaging/image.ts';
import { preprocess } from '../../imaging/preprocess.ts';
import { decodeAnyImage } from '../../imaging/read.ts';
import { ServeErrors } from '../errors.ts';

/** What errors call the upload: never a client-chosen file name, never anything from its contents. */
const UPLOAD = 'upload';

const ENCODED_FORMATS = new Set(['png', 'jpeg', 'tiff', 'webp']);

export interface UploadLimits {
  /** Largest width × height accepted, checked from the header before any pixel is decoded. */
  readonly maxPixels: number;
}

/**
 * An uploaded image to the model's input (CHW float32), through the same decoder and preprocessing as
 * `melo predict`, so both give the same numbers. The format is judged by content, whatever the
 * Content-Type said. Errors: 400 (empty, corrupt), 413 (too many pixels), 415 (not an image format melo
 * reads, or an unsupported DICOM encoding).
 */
export async function prepareUpload(
  bytes: Uint8Array,
  backbone: Backbone,
  limits: UploadLimits,
): Promise<Float32Array> {
  if (bytes.length === 0) throw new ServeErrors.noImage('the request body is empty');
  const [width, height] = await headerSize(bytes);
  if (width * height > limits.maxPixels) {
    throw new ServeErrors.imageTooLarge(
      `image of ${width}x${height} pixels exceeds the limit of ${limits.maxPixels} pixels`,
    );
  }
  let image: DecodedImage;
  try {
    image = await decodeAnyImage(bytes, UPLOAD);
  } catch (error) {
    throw asHttpError(error);
  }
  return preprocess(image, backbone.preprocess, backbone.config.channels as 1 | 3);
}

/** Width and height from the header alone (DICOM: the Image Pixel module; others: sharp's metadata). */
async function headerSize(bytes: Uint8Array): Promise<[number, number]> {
  if (isDicom(bytes)) {
    try {
      const { dataSet } = parseDicomBytes(bytes, UPLOAD);
      const pixels = readPixelModule(dataSet, UPLOAD);
      return [pixels.columns, pixels.rows];
    } catch (error) {
      throw asHttpError(error);
    }
  }
  let metadata: Metadata;
  try {
    metadata = await sharp(bytes).metadata();
  } catch (error) {
    throw new ServeErrors.unsupportedImage(
      `${UPLOAD}: not an image melo reads (PNG, JPEG, TIFF, WebP or DICOM): ${errorMessage(error)}`,
    );
  }
  if (!ENCODED_FORMATS.has(metadata.format)) {
    throw new ServeErrors.unsupportedImage(
      `${UPLOAD}: format '${metadata.format}' is not one of PNG, JPEG, TIFF, WebP, DICOM`,
    );
  }
  return [metadata.width ?? 0, metadata.height ?? 0];
}

function asHttpError(error: unknown): Error {
  if (error instanceof MeloError && error.code === 'UNSUPPORTED')
    return new ServeErrors.unsupportedImage(errorMessage(error));
  if (error instanceof MeloError) return new ServeErrors.badImage(errorMessage(error));
  return error instanceof Error ? error : new Error(String(error));
}
