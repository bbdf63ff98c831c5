import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { healthSchema } from '../schemas/health.ts';

/** GET /healthz: the process is up and answering (no token needed). */
const healthRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/healthz', { schema: healthSchema }, async () => ({
    status: 'ok' as const,
    tasks: app.engine.tasks().length,
  }));
};

export default healthRoute;
