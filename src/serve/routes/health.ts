import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { healthSchema, readySchema } from '../schemas/health.ts';

/** GET /healthz: the process is up and answering (no token needed). */
const healthRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/healthz', { schema: healthSchema }, async () => ({
    status: 'ok' as const,
    tasks: app.engine.tasks().length,
  }));

  // GET /readyz: ready to answer predictions — the backbone is loaded and at least one task served.
  // Added minimally here for fast start (adapters load in the background); the first-hour issue owns it.
  app.get('/readyz', { schema: readySchema }, async (_request, reply) => {
    const tasks = app.engine.tasks().length;
    const loading = app.engine.loading;
    return reply
      .code(tasks > 0 ? 200 : 503)
      .send({ status: tasks > 0 ? 'ready' : 'loading', tasks, loading });
  });
};

export default healthRoute;
