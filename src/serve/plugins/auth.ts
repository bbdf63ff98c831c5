import { createHash, timingSafeEqual } from 'node:crypto';
import fp from 'fastify-plugin';
import { ServeErrors } from '../errors.ts';

/** Routes that answer without a token (liveness probes cannot carry secrets). */
const OPEN_ROUTES = new Set(['/healthz', '/readyz']);

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/**
 * Optional bearer token: when set, every route but /healthz and /readyz (unknown routes too) needs
 * `Authorization: Bearer <token>`. Compared in constant time over fixed-length digests.
 */
export default fp<{ token?: string }>(
  async (app, options) => {
    if (!options.token) return;
    const expected = digest(options.token);
    app.addHook('onRequest', async (request, reply) => {
      if (OPEN_ROUTES.has(request.routeOptions.url ?? '')) return;
      const match = /^Bearer\s+(.+)$/i.exec(request.headers.authorization ?? '');
      if (match && timingSafeEqual(digest(match[1]!.trim()), expected)) return;
      reply.header('WWW-Authenticate', 'Bearer');
      throw new ServeErrors.unauthorized();
    });
  },
  { name: 'melo-auth' },
);
