import { readFile } from 'node:fs/promises';
import { MeloError } from '../errors.ts';
import { decodeImage } from './decode.ts';
import { decodeDicom, isDicom } from './dicom/index.ts';
import type { DecodedImage } from './image.ts';
import { DEFAULT_IMAGE_LIMITS, type ImageLimits } from './limits.ts';

export interface ReadImageOptions {
  /** VOI window for DICOM files, overriding the file's own. */
  readonly window?: { readonly center: number; readonly width: number };
  /** Work bounds checked from the header before decoding (default DEFAULT_IMAGE_LIMITS). */
  readonly limits?: ImageLimits;
}

/**
 * The one reader of image files, used by `melo predict`, data items and the server: DICOM (recognised by
 * content, never by extension) or anything sharp decodes (PNG, JPEG, TIFF, WebP; 8- or 16-bit), within
 * `options.limits`. The one-line error names the file; a file beyond a limit fails with TOO_LARGE.
 */
export async function readAnyImage(path: string, options: ReadImageOptions = {}): Promise<DecodedImage> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const reason =
      code === 'ENOENT'
        ? 'no such file'
        : code === 'EISDIR'
          ? 'is a directory, not an image'
          : `cannot read (${code ?? String(error)})`;
    throw new MeloError(code === 'ENOENT' ? 'NOT_FOUND' : 'BAD_IMAGE', reason, { file: path });
  }
  return decodeAnyImage(bytes, path, options);
}

/** `readAnyImage` for bytes already in memory (uploads); `file` names them in errors. */
export async function decodeAnyImage(
  bytes: Uint8Array,
  file: string,
  options: ReadImageOptions = {},
): Promise<DecodedImage> {
  const limits = options.limits ?? DEFAULT_IMAGE_LIMITS;
  if (isDicom(bytes)) {
    return decodeDicom(bytes, options.window ? { file, window: options.window, limits } : { file, limits });
  }
  return decodeImage(bytes, file, limits);
}
