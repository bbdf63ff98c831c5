/**
 * Errors that reach users. Every message is one line that names the file (when there is one)
 * and the problem, so that the CLI can print it as is without a stack trace.
 */
export type MeloErrorCode =
  | 'BAD_INPUT'
  | 'BAD_IMAGE'
  | 'BAD_CHECKPOINT'
  | 'BAD_SAFETENSORS'
  | 'BAD_ADAPTER'
  | 'BAD_DATA'
  | 'BAD_DICOM'
  | 'UNSUPPORTED'
  | 'SHAPE'
  | 'USAGE'
  | 'NOT_FOUND'
  | 'PACS';

export class MeloError extends Error {
  readonly code: MeloErrorCode;
  readonly file: string | undefined;

  constructor(code: MeloErrorCode, message: string, options: { file?: string; cause?: unknown } = {}) {
    super(options.file !== undefined ? `${options.file}: ${message}` : message, { cause: options.cause });
    this.name = 'MeloError';
    this.code = code;
    this.file = options.file;
  }
}

/** Raised while a graph is being built, so that a mistake names the node instead of failing inside ORT. */
export class ShapeError extends MeloError {
  constructor(op: string, node: string, rule: string) {
    super('SHAPE', `${op} '${node}': ${rule}`);
    this.name = 'ShapeError';
  }
}

export function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message.split('\n')[0] ?? String(error);
  return String(error);
}
