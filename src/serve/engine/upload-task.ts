/**
 * What an upload decode thread does with one upload (loaded by upload-worker.mjs; also callable
 * in-process): the one image reader within the server's limits, then the model's preprocessing and,
 * for the web page, a browser-viewable preview, all from one decode. Failures come back as data (errors
 * lose their class when cloned between threads); the HTTP thread turns them into 400/413/415.
 */
import { errorMessage, MeloError } from '../../errors.ts';
import { isDicom } from '../../imaging/dicom/index.ts';
import type { PreprocessConfig } from '../../imaging/image.ts';
import type { ImageLimits } from '../../imaging/limits.ts';
import { preprocess } from '../../imaging/preprocess.ts';
import { decodeAnyImage } from '../../imaging/read.ts';
import { routingKeysOf } from '../../pacs/instance.ts';
import type { RoutingKeys } from '../../pacs/routing.ts';
import { previewPng } from '../web/preview.ts';

/** What errors call the upload: never a client-chosen file name, never anything from its contents. */
export const UPLOAD = 'upload';

export interface UploadJob {
  readonly bytes: Uint8Array;
  readonly limits: ImageLimits;
  readonly preprocess: PreprocessConfig;
  readonly channels: 1 | 3;
  /** The model input (CHW float32). */
  readonly pixels: boolean;
  /** A PNG of the decoded image for the browser (/v1/preview). */
  readonly preview: boolean;
  /** The DICOM routing keys (modality, body part) for `tasks=auto`. */
  readonly routing?: boolean;
}

export type UploadFailureKind = 'empty' | 'bad' | 'unsupported' | 'tooLarge';

export type UploadReply =
  | {
      readonly ok: true;
      /** The decoded image's size (before preprocessing). */
      readonly width: number;
      readonly height: number;
      readonly pixels?: Float32Array;
      readonly preview?: Uint8Array;
      /** Routing keys of a DICOM upload (absent for other formats). */
      readonly routing?: RoutingKeys;
    }
  | { readonly ok: false; readonly kind: UploadFailureKind; readonly message: string };

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

export async function decodeUpload(job: UploadJob): Promise<UploadReply> {
  const { bytes } = job;
  if (bytes.length === 0) return { ok: false, kind: 'empty', message: 'the request body is empty' };
  // Only formats melo reads reach a decoder (sharp would also parse GIF, SVG, HEIF…).
  if (!isDicom(bytes) && sniffEncodedFormat(bytes) === undefined) {
    return {
      ok: false,
      kind: 'unsupported',
      message: `${UPLOAD}: not an image melo reads (PNG, JPEG, TIFF, WebP or DICOM)`,
    };
  }
  try {
    const image = await decodeAnyImage(bytes, UPLOAD, { limits: job.limits });
    const pixels = job.pixels ? preprocess(image, job.preprocess, job.channels) : undefined;
    const preview = job.preview ? new Uint8Array(await previewPng(image)) : undefined;
    // The header is parsed again (within the same limits) rather than on the HTTP thread.
    const routing = job.routing ? routingKeysOrNone(bytes, job.limits) : undefined;
    return {
      ok: true,
      width: image.width,
      height: image.height,
      ...(pixels ? { pixels } : {}),
      ...(preview ? { preview } : {}),
      ...(routing ? { routing } : {}),
    };
  } catch (error) {
    if (!(error instanceof MeloError)) throw error;
    const kind: UploadFailureKind =
      error.code === 'TOO_LARGE' ? 'tooLarge' : error.code === 'UNSUPPORTED' ? 'unsupported' : 'bad';
    return { ok: false, kind, message: errorMessage(error) };
  }
}

/** Routing keys, or none when the header cannot give them (the image decoded: it is served to every task). */
function routingKeysOrNone(bytes: Uint8Array, limits: ImageLimits): RoutingKeys | undefined {
  try {
    return routingKeysOf(bytes, UPLOAD, limits);
  } catch {
    return undefined;
  }
}

/** The worker entry (the reply is cloned back: a 224 px tensor is 600 kB, a preview less). */
export default function uploadTask(job: UploadJob): Promise<UploadReply> {
  return decodeUpload(job);
}
