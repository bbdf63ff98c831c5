import { MeloError } from '../errors.ts';

/**
 * Which DICOM images a task applies to: the Modality (0008,0060) codes and, optionally, the Body Part
 * Examined (0018,0015) values. Stored in the adapter's melo metadata as `routing`. A task without
 * routing (or with an empty list) applies to every image, as before routing existed.
 */
export interface TaskRouting {
  readonly modalities?: readonly string[];
  readonly bodyParts?: readonly string[];
}

/** The attributes of one image that routing looks at (absent when the image is not DICOM or lacks them). */
export interface RoutingKeys {
  readonly modality?: string | undefined;
  readonly bodyPart?: string | undefined;
}

/** DICOM CS values: upper-case letters, digits, space and underscore, at most 16 characters. */
const CODE_STRING = /^[A-Z0-9_ ]{1,16}$/;

/** `CR,DX` → ['CR', 'DX']: trimmed, upper-cased, each a valid code string, each once. */
export function parseCodeList(text: string, what: string): string[] {
  const codes = text
    .split(',')
    .map((code) => code.trim().toUpperCase())
    .filter((code) => code !== '');
  if (codes.length === 0) throw new MeloError('USAGE', `${what}: expected a comma-separated list of codes`);
  for (const code of codes) {
    if (!CODE_STRING.test(code))
      throw new MeloError(
        'USAGE',
        `${what}: '${code}' is not a DICOM code string (A-Z, 0-9, '_' or space, at most 16)`,
      );
  }
  return [...new Set(codes)];
}

/** Reads `routing` from adapter metadata; `file` names the metadata in errors. */
export function parseRouting(field: unknown, file: string): TaskRouting | undefined {
  if (field === undefined || field === null) return undefined;
  if (typeof field !== 'object' || Array.isArray(field))
    throw new MeloError('BAD_ADAPTER', 'melo.routing must be an object', { file });
  const record = field as Record<string, unknown>;
  const list = (key: 'modalities' | 'bodyParts'): string[] | undefined => {
    const value = record[key];
    if (value === undefined) return undefined;
    if (!Array.isArray(value) || !value.every((code) => typeof code === 'string' && CODE_STRING.test(code)))
      throw new MeloError('BAD_ADAPTER', `melo.routing.${key} must be a list of DICOM code strings`, {
        file,
      });
    return value as string[];
  };
  const modalities = list('modalities');
  const bodyParts = list('bodyParts');
  return { ...(modalities ? { modalities } : {}), ...(bodyParts ? { bodyParts } : {}) };
}

/**
 * Whether a task applies to an image. A listed attribute must be present in the image and equal one of
 * the codes (compared upper-case, trimmed); an attribute the task does not list is not looked at.
 */
export function routingMatches(routing: TaskRouting | undefined, keys: RoutingKeys): boolean {
  if (!routing) return true;
  const accepts = (codes: readonly string[] | undefined, value: string | undefined) =>
    codes === undefined ||
    codes.length === 0 ||
    (value !== undefined && codes.includes(value.trim().toUpperCase()));
  return accepts(routing.modalities, keys.modality) && accepts(routing.bodyParts, keys.bodyPart);
}

/** The routing as one line for humans: `CR,DX / CHEST`, or `any`. */
export function describeRouting(routing: TaskRouting | undefined): string {
  const modalities = routing?.modalities?.length ? routing.modalities.join(',') : 'any modality';
  const bodyParts = routing?.bodyParts?.length ? routing.bodyParts.join(',') : 'any body part';
  return `${modalities} / ${bodyParts}`;
}

/** `--modality CR,DX --body-part CHEST` as routing; undefined when neither flag is given. */
export function routingFromFlags(modality?: string, bodyPart?: string): TaskRouting | undefined {
  if (modality === undefined && bodyPart === undefined) return undefined;
  return {
    ...(modality !== undefined ? { modalities: parseCodeList(modality, '--modality') } : {}),
    ...(bodyPart !== undefined ? { bodyParts: parseCodeList(bodyPart, '--body-part') } : {}),
  };
}
