/**
 * Messages between the loader and its decode workers. Everything here survives structured cloning;
 * errors do not (a MeloError arrives as a plain Error without its code or file), so a worker reports a
 * failure as data and the loader rebuilds the same MeloError an in-process load would have thrown.
 */
import { MeloError, type MeloErrorCode } from '../../errors.ts';
import type { DecodedImage } from '../../imaging/image.ts';
import type { ItemSource } from '../dataset.ts';
import type { ItemTransform } from './item-transform.ts';

export interface DecodeTask {
  /** A source to decode in the worker, or pixels already decoded in the loader's thread. */
  readonly input:
    | { readonly kind: 'source'; readonly source: ItemSource }
    | { readonly kind: 'image'; readonly image: DecodedImage };
  readonly transform: ItemTransform;
  /** The item's augmentation seed. */
  readonly seed: number;
}

export interface TaskFailure {
  readonly melo: boolean;
  readonly code?: MeloErrorCode;
  readonly file?: string;
  /** The error's class name, for errors other than MeloError (RangeError and TypeError are rebuilt as such). */
  readonly name?: string;
  /** For a MeloError, the message without the `file: ` prefix its constructor adds. */
  readonly message: string;
}

/** The item's CHW tensor (transferred, not copied), or why it could not be made. */
export type DecodeReply = Float32Array | { readonly failure: TaskFailure };

export function describeFailure(error: unknown): TaskFailure {
  if (error instanceof MeloError) {
    const prefix = error.file !== undefined ? `${error.file}: ` : '';
    const message = error.message.startsWith(prefix) ? error.message.slice(prefix.length) : error.message;
    return {
      melo: true,
      code: error.code,
      message,
      ...(error.file !== undefined ? { file: error.file } : {}),
    };
  }
  return error instanceof Error
    ? { melo: false, name: error.name, message: error.message }
    : { melo: false, message: String(error) };
}

export function reviveFailure(failure: TaskFailure): Error {
  if (failure.melo && failure.code !== undefined) {
    return new MeloError(
      failure.code,
      failure.message,
      failure.file !== undefined ? { file: failure.file } : {},
    );
  }
  return failure.name === 'RangeError'
    ? new RangeError(failure.message)
    : failure.name === 'TypeError'
      ? new TypeError(failure.message)
      : new Error(failure.message);
}
