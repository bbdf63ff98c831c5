import fp from 'fastify-plugin';
import { ServeMetrics } from '../metrics.ts';

declare module 'fastify' {
  interface FastifyInstance {
    metrics: ServeMetrics;
  }
}

/** Prometheus metrics, and the per-request counters and latency histogram. */
export default fp(
  async (app) => {
    const metrics = new ServeMetrics();
    app.decorate('metrics', metrics);
    app.addHook('onResponse', async (request, reply) => {
      const route = request.routeOptions.url ?? 'unmatched';
      metrics.requests.inc({ route, method: request.method, status: String(reply.statusCode) });
      metrics.latency.observe({ route }, reply.elapsedTime / 1000);
    });
  },
  { name: 'melo-metrics' },
);
