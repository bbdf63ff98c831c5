import sharp from 'sharp';
import type { DecodedImage } from '../../imaging/image.ts';

/** Longest side of a preview: enough for a browser view, small enough to send quickly. */
export const PREVIEW_MAX_SIDE = 1024;

/**
 * A decoded image as the PNG a browser shows, for formats browsers cannot display (DICOM, 16-bit TIFF).
 * It shows exactly the pixels the model reads (after the DICOM VOI window, before model preprocessing),
 * rounded to 8 bits and scaled down to fit PREVIEW_MAX_SIDE, keeping the aspect ratio.
 */
export async function previewPng(image: DecodedImage, maxSide = PREVIEW_MAX_SIDE): Promise<Buffer> {
  const bytes = new Uint8Array(image.data.length);
  for (let i = 0; i < bytes.length; i++)
    bytes[i] = Math.round(Math.min(1, Math.max(0, image.data[i]!)) * 255);
  let pipeline = sharp(bytes, {
    raw: { width: image.width, height: image.height, channels: image.channels },
  });
  if (Math.max(image.width, image.height) > maxSide)
    pipeline = pipeline.resize({ width: maxSide, height: maxSide, fit: 'inside' });
  if (image.channels === 1) pipeline = pipeline.toColourspace('b-w');
  return pipeline.png().toBuffer();
}
