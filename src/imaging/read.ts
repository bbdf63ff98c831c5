import { readFile } from 'node:fs/promises';
import { MeloError } from '../errors.ts';
import { decodeImage } from './decode.ts';
import { decodeDicom, isDicom } from './dicom/index.ts';
import type { DecodedImage } from './image.ts';

export interface ReadImageOptions {
  /** VOI window for DICOM files, overriding the file's own. */
  readonly window?: { readonly center: number; readonly width: number };
}

/**
 * Reads any supported image file: DICOM (recognised by content, not extension) or anything sharp decodes
 * (PNG, JPEG, TIFF, WebP; 8- or 16-bit). The one-line error names the file.
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
    throw new MeloError('BAD_IMAGE', reason, { file: path });
  }
  return decodeAnyImage(bytes, path, options);
}

export async function decodeAnyImage(
  bytes: Uint8Array,
  file: string,
  options: ReadImageOptions = {},
): Promise<DecodedImage> {
  if (isDicom(bytes)) return decodeDicom(bytes, options.window ? { file, window: options.window } : { file });
  return decodeImage(bytes, file);
}
