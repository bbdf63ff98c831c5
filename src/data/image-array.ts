/**
 * A stack of same-sized images held in one typed array (MedMNIST `.npz`, MNIST idx), and the decoding of
 * one of them into a `DecodedImage`. Items keep a reference to the stack and slice it on demand, so a
 * dataset of 60,000 images costs one buffer, not 60,000 float copies.
 */
import { MeloError } from '../errors.ts';
import type { DecodedImage } from '../imaging/image.ts';
import type { NpyValues } from './npy.ts';

export interface ImageStack {
  readonly count: number;
  readonly height: number;
  readonly width: number;
  readonly channels: 1 | 3;
  /** count * height * width * channels values, C order (N, H, W[, C]). */
  readonly values: NpyValues;
  /** Divides raw values into [0, 1]: 255 for 8-bit, 65535 for 16-bit, 1 for floats (clamped). */
  readonly scale: number;
}

/**
 * Interprets an array of shape (N, H, W), (N, H, W, 1) or (N, H, W, 3) as images. Integer data must be
 * unsigned 8 or 16 bit; float data is taken to be in [0, 1] already.
 */
export function imageStack(shape: readonly number[], values: NpyValues, file: string): ImageStack {
  const shapeText = `(${shape.join(', ')})`;
  let channels: 1 | 3;
  if (shape.length === 3) channels = 1;
  else if (shape.length === 4 && (shape[3] === 1 || shape[3] === 3)) channels = shape[3] as 1 | 3;
  else {
    throw new MeloError(
      'BAD_DATA',
      `image array has shape ${shapeText}; expected (N, H, W) grey or (N, H, W, 3) colour`,
      { file },
    );
  }
  let scale: number;
  if (values instanceof Uint8Array) scale = 255;
  else if (values instanceof Uint16Array) scale = 65535;
  else if (values instanceof Float32Array || values instanceof Float64Array) scale = 1;
  else {
    throw new MeloError(
      'BAD_DATA',
      `image array has element type ${values.constructor.name}; expected uint8, uint16 or float`,
      {
        file,
      },
    );
  }
  return { count: shape[0], height: shape[1], width: shape[2], channels, values, scale };
}

export function stackImage(stack: ImageStack, index: number): DecodedImage {
  const size = stack.height * stack.width * stack.channels;
  const source = stack.values.subarray(index * size, (index + 1) * size);
  const data = new Float32Array(size);
  if (stack.scale === 1) {
    for (let i = 0; i < size; i++) data[i] = Math.min(1, Math.max(0, source[i]));
  } else {
    const scale = stack.scale;
    for (let i = 0; i < size; i++) data[i] = source[i] / scale;
  }
  return { width: stack.width, height: stack.height, channels: stack.channels, data };
}
