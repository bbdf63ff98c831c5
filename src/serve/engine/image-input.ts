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
    const format = sniffEncodedFormat(bytes);
    // A known format that fails to parse is a broken file (400); anything else is not an image melo reads (415).
    if (format)
      throw new ServeErrors.badImage(
        `${UPLOAD}: corrupt ${format} (${errorMessage(error).replace(/:$/, '')})`,
      );
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

/** The format an upload claims by its magic bytes, whether or not the rest of it is intact. */
export function sniffEncodedFormat(bytes: Uint8Array): 'PNG' | 'JPEG' | 'TIFF' | 'WebP' | undefined {
  const starts = (...values: number[]) => values.every((value, i) => bytes[i] === value);
  if (starts(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a)) return 'PNG';
  if (starts(0xff, 0xd8, 0xff)) return 'JPEG';
  if (starts(0x49, 0x49, 0x2a, 0x00) || starts(0x4d, 0x4d, 0x00, 0x2a)) return 'TIFF';
  const ascii = (from: number, to: number) => String.fromCharCode(...bytes.subarray(from, to));
  if (bytes.length >= 12 && ascii(0, 4) === 'RIFF' && ascii(8, 12) === 'WEBP') return 'WebP';
  return undefined;
}

function asHttpError(error: unknown): Error {
  if (error instanceof MeloError && error.code === 'UNSUPPORTED')
    return new ServeErrors.unsupportedImage(errorMessage(error));
  if (error instanceof MeloError) return new ServeErrors.badImage(errorMessage(error));
  return error instanceof Error ? error : new Error(String(error));
}
