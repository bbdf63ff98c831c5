import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { healthSchema, readySchema } from '../schemas/health.ts';

/**
 * GET /healthz: the process is up and answering. GET /readyz: it can classify, i.e. at least one task
 * is loaded (a load balancer sends no traffic before; predictions would only get 503). No token needed.
 */
const healthRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/healthz', { schema: healthSchema }, async () => ({
    status: 'ok' as const,
    tasks: app.engine.tasks().length,
  }));
  app.get('/readyz', { schema: readySchema }, async (_request, reply) => {
    const tasks = app.engine.tasks().length;
    const loading = app.engine.loading;
    // 'loading': adapters found at start are still being read (serve listens before they are loaded).
    const status = tasks > 0 ? 'ready' : loading ? 'loading' : 'not-ready';
    return reply.code(tasks > 0 ? 200 : 503).send({ status, tasks, loading });
  });
};

export default healthRoute;
