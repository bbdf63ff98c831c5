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
  /** Within the format, but beyond a work limit (pixels, inflated bytes, DICOM elements): HTTP 413. */
  | 'TOO_LARGE'
  | 'SHAPE'
  | 'USAGE'
  | 'NOT_FOUND'
  | 'PACS';

export class MeloError extends Error {
  readonly code: MeloErrorCode;
  readonly file: string | undefined;

  constructor(code: MeloErrorCode, message: string, options: { file?: string; cause?: unknown } = {}) {
    super(oneLine(options.file !== undefined ? `${options.file}: ${message}` : message), {
      cause: options.cause,
    });
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

/**
 * Messages quote names and values from files (and JSON.parse quotes the text around an error, newlines
 * included): line breaks become spaces and other control characters \u escapes, so a message stays one
 * line and cannot drive a terminal.
 */
function oneLine(message: string): string {
  let out = '';
  for (const char of message) {
    const code = char.charCodeAt(0);
    if (char === '\n' || char === '\r' || char === '\u2028' || char === '\u2029') out += ' ';
    else if ((code < 0x20 && char !== '\t') || code === 0x7f)
      out += `\\u${code.toString(16).padStart(4, '0')}`;
    else out += char;
  }
  return out;
}

export function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message.split('\n')[0] ?? String(error);
  return String(error);
}

/**
 * A list from a file, for an error message: the first `max` items and a count of the rest. An adapter
 * listing a million unexpected tensors once put an 8.9 MB message in every response and log line.
 */
export function listSome(items: readonly string[], max = 5): string {
  const shown = items.slice(0, max).map((item) => shortText(item));
  return items.length > max ? `${shown.join(', ')} and ${items.length - max} more` : shown.join(', ');
}

/** A name or value from a file, cut to `max` characters for an error message. */
export function shortText(text: string, max = 80): string {
  return text.length <= max ? text : `${text.slice(0, max)}… (${text.length} characters)`;
}
