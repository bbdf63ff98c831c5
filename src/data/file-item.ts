/**
 * Items backed by one image file on disk. Extensions decide which files a folder lists (files without a
 * known extension are listed when their content is DICOM, since DICOM archives often store files with no
 * extension at all); the content decides how a file is decoded, through the one reader `readAnyImage`
 * that `melo predict` and the server use too, so a DICOM named `.png` reads the same everywhere.
 */
import { open } from 'node:fs/promises';
import { extname } from 'node:path';
import { isDicom } from '../imaging/dicom/index.ts';
import type { DecodedImage } from '../imaging/image.ts';
import { readAnyImage } from '../imaging/read.ts';
import type { DataItem } from './dataset.ts';

export const IMAGE_EXTENSIONS: ReadonlySet<string> = new Set([
  '.png',
  '.jpg',
  '.jpeg',
  '.tif',
  '.tiff',
  '.webp',
  '.bmp',
]);

export type FileKind = 'image' | 'dicom';

/** The kind a file name implies: 'image', 'dicom', or undefined when only the content can tell. */
export function fileKindFromName(path: string): FileKind | undefined {
  const extension = extname(path).toLowerCase();
  if (IMAGE_EXTENSIONS.has(extension)) return 'image';
  if (extension === '.dcm' || extension === '.dicom') return 'dicom';
  return undefined;
}

/** Bytes read from the start of a file to recognise DICOM (128-byte preamble + 'DICM' and some slack). */
const SNIFF_BYTES = 4096;

/** Whether the file's content is DICOM; unreadable files count as not DICOM. */
export async function sniffDicom(path: string): Promise<boolean> {
  let handle: Awaited<ReturnType<typeof open>> | undefined;
  try {
    handle = await open(path, 'r');
    const buffer = new Uint8Array(SNIFF_BYTES);
    const { bytesRead } = await handle.read(buffer, 0, SNIFF_BYTES, 0);
    return isDicom(buffer.subarray(0, bytesRead));
  } catch {
    return false;
  } finally {
    await handle?.close();
  }
}

/**
 * Reads and decodes one image file by its content (`_kind`, what the listing saw, is kept in item
 * sources for compatibility but no longer picks the decoder).
 */
export async function loadImageFile(path: string, _kind?: FileKind): Promise<DecodedImage> {
  return readAnyImage(path);
}

export function fileItem(path: string, labels: readonly number[], kind?: FileKind): DataItem {
  return {
    id: path,
    file: path,
    labels,
    source: kind === undefined ? { kind: 'file', path } : { kind: 'file', path, fileKind: kind },
    load: () => loadImageFile(path, kind),
  };
}
