import type { FastifyPluginAsync } from 'fastify';

/** GET /metrics: Prometheus text exposition. */
const metricsRoute: FastifyPluginAsync = async (app) => {
  app.get(
    '/metrics',
    { schema: { summary: 'Prometheus metrics', tags: ['metrics'], security: [{ bearer: [] }] } },
    async (_request, reply) => {
      reply.type(app.metrics.registry.contentType);
      return app.metrics.registry.metrics();
    },
  );
};

export default metricsRoute;
