/**
 * PNG, JPEG, TIFF and WebP decoding through sharp (libvips) into melo's DecodedImage.
 *
 * - 8-bit sources are divided by 255, 16-bit sources by 65535, so 16-bit medical images keep their
 *   full precision (sharp is asked for `ushort` output in the grey16/rgb16 colourspaces; without that it
 *   would reduce to 8 bits).
 * - Alpha is dropped, not composited, like PIL's convert('RGB') that HF/timm pipelines apply.
 * - Grey (and grey+alpha) stays one channel; model adapters expand it to three when they need to.
 * - The EXIF orientation is applied, so pixels are in display orientation.
 * - sharp converts CMYK and images with an embedded ICC profile to sRGB; PIL ignores ICC profiles, so
 *   such (rare) files can differ slightly from what a PIL-based pipeline sees.
 */
import { readFile } from 'node:fs/promises';
import sharp, { type Metadata, type OutputInfo } from 'sharp';
import { MeloError } from '../errors.ts';
import type { DecodedImage } from './image.ts';
import { checkPixels, DEFAULT_IMAGE_LIMITS, type ImageLimits } from './limits.ts';

const SUPPORTED_FORMATS = new Set(['png', 'jpeg', 'tiff', 'webp']);

const UINT8_TO_UNIT = Float32Array.from({ length: 256 }, (_, value) => value / 255);

function firstLine(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return (message.split('\n')[0] ?? '').trim().replace(/:$/, '') || 'unknown error';
}

function badImage(file: string, reason: string, cause?: unknown): MeloError {
  return new MeloError('BAD_IMAGE', `not a decodable image (${reason})`, { file, cause });
}

/**
 * Decode an encoded image. `file` names the source in error messages. Width × height is checked against
 * `limits.maxPixels` from the header (sharp's metadata reads no pixels) before decoding; sharp's own
 * `limitInputPixels` is set to the same bound in case a decoder disagrees with the header.
 */
export async function decodeImage(
  bytes: Uint8Array,
  file: string,
  limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
): Promise<DecodedImage> {
  const sharpOptions = { failOn: 'warning', limitInputPixels: limits.maxPixels } as const;
  let metadata: Metadata;
  try {
    // The header alone (no limit here, so that an image too large gets the message with its size).
    metadata = await sharp(bytes, { failOn: 'warning' }).metadata();
  } catch (error) {
    throw badImage(file, firstLine(error), error);
  }
  const format = metadata.format;
  if (!SUPPORTED_FORMATS.has(format)) {
    throw badImage(file, `format '${format}' is not one of PNG, JPEG, TIFF, WebP`);
  }
  const depth = metadata.depth;
  if (depth !== 'uchar' && depth !== 'ushort') {
    throw badImage(file, `pixel format '${depth}' is not 8- or 16-bit unsigned`);
  }
  checkPixels(metadata.width ?? 0, metadata.height ?? 0, limits, file);
  const sixteenBit = depth === 'ushort';
  const channelsWithoutAlpha = (metadata.channels ?? 3) - (metadata.hasAlpha ? 1 : 0);
  const grey = channelsWithoutAlpha === 1;

  let pipeline = sharp(bytes, sharpOptions).autoOrient();
  if (metadata.hasAlpha) pipeline = pipeline.removeAlpha();
  pipeline = pipeline
    .toColourspace(grey ? (sixteenBit ? 'grey16' : 'b-w') : sixteenBit ? 'rgb16' : 'srgb')
    .raw({ depth: sixteenBit ? 'ushort' : 'uchar' });

  let raw: { data: Buffer; info: OutputInfo };
  try {
    raw = await pipeline.toBuffer({ resolveWithObject: true });
  } catch (error) {
    throw badImage(file, firstLine(error), error);
  }
  const { width, height, channels } = raw.info;
  const expectedChannels = grey ? 1 : 3;
  if (channels !== expectedChannels) {
    throw badImage(file, `decoder produced ${channels} channels, expected ${expectedChannels}`);
  }

  const count = width * height * channels;
  const data = new Float32Array(count);
  if (sixteenBit) {
    const bytesOut = raw.data;
    // sharp's raw output is in host byte order; a Uint16Array view needs 2-byte alignment.
    const words =
      bytesOut.byteOffset % 2 === 0
        ? new Uint16Array(bytesOut.buffer, bytesOut.byteOffset, count)
        : new Uint16Array(Uint8Array.from(bytesOut).buffer, 0, count);
    for (let i = 0; i < count; i++) data[i] = words[i] / 65535;
  } else {
    const bytesOut = raw.data;
    for (let i = 0; i < count; i++) data[i] = UINT8_TO_UNIT[bytesOut[i]];
  }
  return { width, height, channels: grey ? 1 : 3, data };
}

/** Read and decode an image file. */
export async function readImageFile(path: string, limits?: ImageLimits): Promise<DecodedImage> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT')
      throw new MeloError('NOT_FOUND', 'no such image file', { file: path, cause: error });
    throw new MeloError('BAD_INPUT', `cannot read image file (${code ?? firstLine(error)})`, {
      file: path,
      cause: error,
    });
  }
  return decodeImage(bytes, path, limits);
}
