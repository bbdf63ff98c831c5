import fp from 'fastify-plugin';

declare module 'fastify' {
  interface FastifyRequest {
    /** Tasks a predict request asked for, for the request log line. */
    meloTasks?: readonly string[];
    /** Size of each batch its rows ran in. */
    meloBatchRows?: readonly number[];
  }
}

/**
 * One structured line per request (fastify's own two lines are turned off): route, status, latency,
 * tasks and batch sizes. Never the query string beyond the tasks, never headers or the body, so no
 * token, image content or DICOM patient data reaches the log.
 */
export default fp(
  async (app) => {
    app.addHook('onResponse', async (request, reply) => {
      request.log.info(
        {
          method: request.method,
          route: request.routeOptions.url ?? 'unmatched',
          status: reply.statusCode,
          latencyMs: Math.round(reply.elapsedTime * 100) / 100,
          ...(request.meloTasks ? { tasks: request.meloTasks } : {}),
          ...(request.meloBatchRows ? { batchRows: request.meloBatchRows } : {}),
        },
        'request',
      );
    });
  },
  { name: 'melo-request-log' },
);
