import multipart from '@fastify/multipart';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyRequest } from 'fastify';
import { errorMessage } from '../../errors.ts';
import { isValidTaskName } from '../../io/peft.ts';
import { type RoutingKeys, routingMatches } from '../../pacs/routing.ts';
import type { TaskInfo } from '../engine/registry.ts';
import { ServeErrors } from '../errors.ts';
import { IMAGE_CONTENT_TYPES, predictSchema } from '../schemas/predict.ts';

export interface PredictRouteOptions {
  readonly bodyLimitBytes: number;
  readonly requestTimeoutMs: number;
}

/** `tasks=a,b` or `tasks=all`: checked names, each once, all loaded. */
function resolveTasks(query: string, loaded: readonly string[]): string[] {
  const asked =
    query.trim() === '' || query.trim() === 'all' ? [...loaded] : query.split(',').map((name) => name.trim());
  if (asked.length === 0) throw new ServeErrors.noTasks();
  for (const name of asked) if (!isValidTaskName(name)) throw new ServeErrors.badTaskName(name);
  const unknown = asked.find((name) => !loaded.includes(name));
  if (unknown !== undefined) throw new ServeErrors.unknownTask(unknown);
  return [...new Set(asked)];
}

/**
 * `tasks=auto`: all tasks, or for DICOM the tasks whose routing matches the image (its keys read on the
 * upload thread that decoded it).
 */
function routedTasks(loaded: readonly TaskInfo[], keys: RoutingKeys | undefined): string[] {
  if (loaded.length === 0) throw new ServeErrors.noTasks();
  return loaded.filter((task) => !keys || routingMatches(task.routing, keys)).map((task) => task.name);
}

async function uploadedBytes(request: FastifyRequest): Promise<Uint8Array> {
  if (request.isMultipart()) {
    try {
      const part = await request.file();
      if (!part) throw new ServeErrors.noImage("the multipart body has no file field 'image'");
      if (part.fieldname !== 'image')
        throw new ServeErrors.noImage(`expected the multipart file field 'image', got '${part.fieldname}'`);
      return await part.toBuffer();
    } catch (error) {
      // Errors with a status (ours, or @fastify/multipart's 413) pass; the parser's own (a body cut
      // short, a broken boundary) are the client's fault.
      if ((error as { statusCode?: number }).statusCode !== undefined) throw error;
      throw new ServeErrors.badMultipart(errorMessage(error));
    }
  }
  if (!(request.body instanceof Uint8Array))
    throw new ServeErrors.noImage(
      `send the image as the raw body (${IMAGE_CONTENT_TYPES.join(', ')}) or as multipart field 'image'`,
    );
  return request.body;
}

/** POST /v1/predict: one image, any loaded tasks, each task a row of a shared batch. */
const predictRoute: FastifyPluginAsyncTypebox<PredictRouteOptions> = async (app, options) => {
  // This route reads images only: any image/* (judged by content), DICOM and octet-stream bodies;
  // JSON, text and other types get fastify's 415.
  app.removeAllContentTypeParsers();
  const rawBody = { parseAs: 'buffer', bodyLimit: options.bodyLimitBytes } as const;
  const keep = (
    _request: unknown,
    body: Buffer | string,
    done: (error: null, body: Buffer | string) => void,
  ) => done(null, body);
  app.addContentTypeParser([...IMAGE_CONTENT_TYPES], rawBody, keep);
  app.addContentTypeParser(/^image\/[\w.+-]+$/, rawBody, keep);
  await app.register(multipart, {
    limits: { fileSize: options.bodyLimitBytes, files: 1, fields: 8, parts: 10 },
  });

  app.post(
    '/v1/predict',
    { schema: predictSchema, bodyLimit: options.bodyLimitBytes },
    async (request, reply) => {
      // While the adapters found at start still load, a task not served yet may be one of them
      // ('auto' and 'all' wait for all of them).
      const asked = request.query.tasks?.split(',') ?? [];
      if (app.engine.loading && asked.some((name) => !app.engine.task(name))) await app.engine.untilLoaded();
      const query = (request.query.tasks ?? 'auto').trim();
      const routed = query === 'auto' || query === '';
      let tasks = routed
        ? []
        : resolveTasks(
            query,
            app.engine.tasks().map((task) => task.name),
          );
      request.meloTasks = tasks;
      const controller = new AbortController();
      const timer = setTimeout(
        () => controller.abort(new ServeErrors.timeout(options.requestTimeoutMs)),
        options.requestTimeoutMs,
      );
      // A client that hangs up no longer needs its rows: withdraw those still queued.
      const hungUp = () => {
        if (!reply.raw.writableFinished) controller.abort(new ServeErrors.clientClosed());
      };
      reply.raw.once('close', hungUp);
      const rejected = (error: unknown) => {
        const code = (error as { code?: string }).code ?? 'unknown';
        app.metrics.rejected.inc({ reason: code.replace(/^MELO_ERR_/, '').toLowerCase() });
        return error;
      };
      try {
        // Admission before any work on the image: a full queue answers 503 at once.
        // (Routed requests learn their tasks from the DICOM header: at least one row until then.)
        if (!app.batcher.hasRoomFor(Math.max(1, tasks.length)))
          throw rejected(new ServeErrors.queueFull(app.batcher.queuedRows));
        const bytes = await uploadedBytes(request);
        // Decoded and preprocessed on an upload thread, within the image limits (413 beyond them).
        const decoded = await app.uploads.decode(
          bytes,
          { pixels: true, preview: false, routing: routed },
          controller.signal,
        );
        const pixels = decoded.pixels;
        if (routed) {
          tasks = routedTasks(app.engine.tasks(), decoded.routing);
          request.meloTasks = tasks;
          if (!app.batcher.hasRoomFor(tasks.length))
            throw rejected(new ServeErrors.queueFull(app.batcher.queuedRows));
        }
        controller.signal.throwIfAborted();
        let job: Awaited<ReturnType<typeof app.batcher.submit>>;
        try {
          job = await app.batcher.submit(pixels!, tasks, controller.signal);
        } catch (error) {
          throw rejected(error);
        }
        request.meloBatchRows = job.batchSizes;
        const failed = job.outcomes.find((outcome) => !outcome.ok);
        if (failed && !failed.ok) throw failed.error;
        return {
          results: job.outcomes.map((outcome) => {
            if (!outcome.ok) throw outcome.error;
            const { task, labels, probabilities, prediction } = outcome.prediction;
            return { task, labels: [...labels], probabilities, prediction };
          }),
        };
      } finally {
        clearTimeout(timer);
        reply.raw.off('close', hungUp);
      }
    },
  );
};

export default predictRoute;
