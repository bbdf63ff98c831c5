import Type from 'typebox';
import { errorRef } from './common.ts';

/** Content types the predict route reads as a raw image body; the format is judged by content. */
export const IMAGE_CONTENT_TYPES = [
  'image/png',
  'image/jpeg',
  'image/tiff',
  'image/webp',
  'application/dicom',
  'application/octet-stream',
] as const;

export const PredictQuery = Type.Object({
  tasks: Type.Optional(
    Type.String({
      default: 'auto',
      maxLength: 4096,
      description:
        "comma-separated task names; 'all' for every loaded task; 'auto' (default): for a DICOM image the tasks whose routing matches its Modality and Body Part Examined, for other images all",
    }),
  ),
});

export const TaskResult = Type.Object({
  task: Type.String(),
  labels: Type.Array(Type.String()),
  probabilities: Type.Array(Type.Number(), {
    description: 'softmax over the labels; independent sigmoids for multi-label tasks',
  }),
  prediction: Type.String({
    description: "the most probable label; for multi-label tasks every label ≥ 0.5 joined by '|', or 'none'",
  }),
});

export const PredictResponse = Type.Object({ results: Type.Array(TaskResult) });

export const predictSchema = {
  summary: 'Classify one image for one or more tasks',
  description:
    'The image is the raw request body (PNG, JPEG, TIFF, WebP or DICOM; the format is read from the content) ' +
    "or the multipart field 'image'. Each task is one row of a batch shared with other requests. " +
    'Images above --max-pixels (width × height from the header) get 413; a cross-origin browser POST, ' +
    'or a Host the server does not answer to, gets 403.',
  tags: ['predict'],
  consumes: [...IMAGE_CONTENT_TYPES, 'multipart/form-data'],
  querystring: PredictQuery,
  // Documentation only: an empty schema, so the raw Buffer (or no body, for multipart) always validates.
  body: Type.Unsafe<unknown>({ description: 'the image file (binary)' }),
  response: {
    200: PredictResponse,
    400: errorRef,
    401: errorRef,
    403: errorRef,
    404: errorRef,
    413: errorRef,
    415: errorRef,
    503: errorRef,
  },
  security: [{ bearer: [] }],
};
