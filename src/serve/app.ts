import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, { type FastifyError, type FastifyInstance, LogController } from 'fastify';
import { RETRY_AFTER_SECONDS, ServeErrors } from './errors.ts';
import { resolveServeOptions, type ServeOptions } from './options.ts';
import auth from './plugins/auth.ts';
import backbone from './plugins/backbone.ts';
import batcher from './plugins/batcher.ts';
import docs from './plugins/docs.ts';
import metrics from './plugins/metrics.ts';
import outbox from './plugins/outbox.ts';
import registry from './plugins/registry.ts';
import requestGuard from './plugins/request-guard.ts';
import requestLog from './plugins/request-log.ts';
import uploads from './plugins/uploads.ts';
import healthRoute from './routes/health.ts';
import metricsRoute from './routes/metrics.ts';
import predictRoute from './routes/predict.ts';
import stowRoute from './routes/stow.ts';
import tasksRoute from './routes/tasks.ts';
import webPage from './web/plugin.ts';

/**
 * The server as a fastify app that is not listening yet (tests call `app.inject()`; server.ts listens).
 * Shared state (backbone, adapter registry, engine and batcher, metrics) are plugin decorators; routes
 * are one encapsulated plugin per resource. Resolves once every adapter has been loaded.
 */
export async function buildApp(options: ServeOptions): Promise<FastifyInstance> {
  const settings = resolveServeOptions(options);
  const app = Fastify({
    logger: settings.logger ?? false,
    // fastify's two lines per request are replaced by one of our own (plugins/request-log.ts).
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: settings.bodyLimitBytes,
    // Request ids in the log line let one request be followed; they are not derived from client input.
    requestIdHeader: false,
    // Requests during shutdown get a 503 with Retry-After from plugins/request-guard.ts instead.
    return503OnClosing: false,
    // Building the serving session (serialising a ViT, ORT's graph optimisation) takes seconds to minutes
    // for large backbones on small machines; fastify's 10 s default would abort the start.
    pluginTimeout: 300_000,
  }).withTypeProvider<TypeBoxTypeProvider>();

  app.setErrorHandler((error: FastifyError, request, reply) => {
    const status = error.statusCode ?? 500;
    const ours = typeof error.code === 'string' && error.code.startsWith('MELO_ERR_');
    if (status < 500 || (ours && status === 503)) {
      if (status === 503) reply.header('Retry-After', String(RETRY_AFTER_SECONDS));
      return reply.code(status).send(error);
    }
    // Details of a server failure stay in the log; the client learns only that it happened.
    request.log.error({ err: error }, 'request failed');
    return reply.code(500).send(new ServeErrors.internal());
  });

  await app.register(metrics);
  await app.register(requestGuard, settings.allowedHosts ? { allowedHosts: settings.allowedHosts } : {});
  await app.register(auth, settings.token ? { token: settings.token } : {});
  await app.register(requestLog);
  await app.register(docs);
  await app.register(backbone, { backbone: settings.backbone });
  await app.register(registry, {
    adapters: settings.adapters,
    watch: settings.watch,
    rescanMs: settings.rescanMs,
    debounceMs: settings.debounceMs,
    background: settings.loadAdaptersInBackground,
  });
  await app.register(batcher, {
    maxBatch: settings.maxBatch,
    maxWaitMs: settings.maxWaitMs,
    maxQueueRows: settings.maxQueueRows,
    ...(settings.threads ? { threads: settings.threads } : {}),
    ...(settings.maxResidentAdapters ? { maxResidentAdapters: settings.maxResidentAdapters } : {}),
  });
  await app.register(uploads, {
    maxPixels: settings.maxPixels,
    ...(settings.decodeThreads ? { decodeThreads: settings.decodeThreads } : {}),
  });
  await app.register(healthRoute);
  await app.register(tasksRoute);
  await app.register(metricsRoute);
  await app.register(predictRoute, {
    bodyLimitBytes: settings.bodyLimitBytes,
    requestTimeoutMs: settings.requestTimeoutMs,
  });
  // Push mode (DICOMweb STOW-RS in, DICOM SR out): only when an outbox and a results PACS are given.
  if (settings.dicomweb) {
    await app.register(outbox, {
      dir: settings.dicomweb.outbox,
      resultsUrl: settings.dicomweb.resultsUrl,
      maxPixels: settings.maxPixels,
      ...(settings.dicomweb.auth ? { auth: settings.dicomweb.auth } : {}),
      ...(settings.dicomweb.retryBaseMs !== undefined ? { retryBaseMs: settings.dicomweb.retryBaseMs } : {}),
      ...(settings.dicomweb.retryMaxMs !== undefined ? { retryMaxMs: settings.dicomweb.retryMaxMs } : {}),
    });
    await app.register(stowRoute, { bodyLimitBytes: settings.bodyLimitBytes });
  }
  // The web page at / and its extra routes (/v1/explain, /v1/preview): src/serve/web/.
  await app.register(webPage, {
    bodyLimitBytes: settings.bodyLimitBytes,
    ...(settings.threads ? { threads: settings.threads } : {}),
  });
  return app;
}
