import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyRequest } from 'fastify';
import Type from 'typebox';
import { isValidTaskName } from '../../io/peft.ts';
import { toTaskPrediction } from '../engine/engine.ts';
import { ServeErrors } from '../errors.ts';
import { errorRef } from '../schemas/common.ts';
import { IMAGE_CONTENT_TYPES } from '../schemas/predict.ts';
import { AttentionExplainer, EXPLAIN_MAX_QUEUE } from '../web/explainer.ts';
import { modelRegion } from '../web/model-region.ts';

export interface ExplainRouteOptions {
  readonly bodyLimitBytes: number;
  readonly threads?: number;
}

const ExplainQuery = Type.Object({
  task: Type.String({ minLength: 1, maxLength: 256, description: 'the task whose prediction is explained' }),
});

const ExplainResponse = Type.Object({
  task: Type.String(),
  labels: Type.Array(Type.String()),
  probabilities: Type.Array(Type.Number()),
  prediction: Type.String(),
  grid: Type.Array(Type.Integer(), { minItems: 2, maxItems: 2, description: '[patch rows, patch columns]' }),
  heatmap: Type.Array(Type.Number(), {
    description: 'attention rollout of the CLS token over the patches, rows × columns, scaled to [0, 1]',
  }),
  image: Type.Object({ width: Type.Integer(), height: Type.Integer() }),
  region: Type.Object(
    { x: Type.Number(), y: Type.Number(), width: Type.Number(), height: Type.Number() },
    { description: 'the part of the image the model saw (after resize and center crop), as fractions of it' },
  ),
});

const uploadBody = Type.Unsafe<unknown>({ description: 'the image file (binary)' });
const errors = {
  400: errorRef,
  401: errorRef,
  403: errorRef,
  404: errorRef,
  413: errorRef,
  415: errorRef,
  503: errorRef,
};

const explainSchema = {
  summary: "Explain one task's prediction with an attention-rollout heatmap",
  description:
    'The image is the raw request body (PNG, JPEG, TIFF, WebP or DICOM). Attention rollout (Abnar & ' +
    'Zuidema 2020) of the serving graph with this task’s adapter: head-averaged attention plus identity, ' +
    'rows renormalised, multiplied through the blocks; the CLS row over the patch grid.',
  tags: ['explain'],
  consumes: [...IMAGE_CONTENT_TYPES],
  querystring: ExplainQuery,
  body: uploadBody,
  response: { 200: ExplainResponse, ...errors },
  security: [{ bearer: [] }],
};

const previewSchema = {
  summary: 'The image as the model reads it, as a PNG a browser can show (for DICOM and 16-bit images)',
  tags: ['explain'],
  consumes: [...IMAGE_CONTENT_TYPES],
  body: uploadBody,
  response: { 200: Type.Unsafe<Buffer>({ description: 'image/png' }), ...errors },
  security: [{ bearer: [] }],
};

function rawBody(request: FastifyRequest): Uint8Array {
  if (!(request.body instanceof Uint8Array))
    throw new ServeErrors.noImage(`send the image as the raw body (${IMAGE_CONTENT_TYPES.join(', ')})`);
  return request.body;
}

/** POST /v1/explain (heatmap JSON) and POST /v1/preview (PNG), for the web page and API clients alike. */
const explainRoute: FastifyPluginAsyncTypebox<ExplainRouteOptions> = async (app, options) => {
  app.removeAllContentTypeParsers();
  const raw = { parseAs: 'buffer', bodyLimit: options.bodyLimitBytes } as const;
  const keep = (
    _request: unknown,
    body: Buffer | string,
    done: (error: null, body: Buffer | string) => void,
  ) => done(null, body);
  app.addContentTypeParser([...IMAGE_CONTENT_TYPES], raw, keep);
  app.addContentTypeParser(/^image\/[\w.+-]+$/, raw, keep);

  const explainer = new AttentionExplainer(app.backbone, options.threads ? { threads: options.threads } : {});
  app.addHook('onClose', async () => {
    await explainer.close();
  });

  app.post('/v1/explain', { schema: explainSchema, bodyLimit: options.bodyLimitBytes }, async (request) => {
    const name = request.query.task.trim();
    if (!isValidTaskName(name)) throw new ServeErrors.badTaskName(name);
    request.meloTasks = [name];
    const info = app.engine.task(name);
    if (!info) throw new ServeErrors.unknownTask(name);
    const bytes = rawBody(request);
    // Admission before decoding: with the explanation queue full, 503 at once.
    if (!explainer.hasRoom()) throw new ServeErrors.queueFull(EXPLAIN_MAX_QUEUE);
    // One decode gives both the model input and the picture's own size (which the region is measured
    // against), on an upload thread within the image limits.
    const image = await app.uploads.decode(bytes, { pixels: true, preview: false });
    const pixels = image.pixels!;
    // The weights the batches use (scale folded in), copied from the inference thread.
    const weights = await app.engine.weightsOf(name);
    if (!weights) throw new ServeErrors.unknownTask(name);
    const result = await explainer.explain(name, weights, pixels);
    const prediction = toTaskPrediction(info, result.logits);
    return {
      task: prediction.task,
      labels: [...prediction.labels],
      probabilities: prediction.probabilities,
      prediction: prediction.prediction,
      grid: result.grid,
      heatmap: result.heatmap,
      image: { width: image.width, height: image.height },
      region: modelRegion(image.width, image.height, app.backbone.preprocess),
    };
  });

  app.post(
    '/v1/preview',
    { schema: previewSchema, bodyLimit: options.bodyLimitBytes },
    async (request, reply) => {
      const bytes = rawBody(request);
      const { preview } = await app.uploads.decode(bytes, { pixels: false, preview: true });
      reply.type('image/png').header('Cache-Control', 'no-store');
      return Buffer.from(preview!.buffer, preview!.byteOffset, preview!.byteLength);
    },
  );
};

export default explainRoute;
