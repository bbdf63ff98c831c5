import { createHash, timingSafeEqual } from 'node:crypto';
import fp from 'fastify-plugin';
import { ServeErrors } from '../errors.ts';

/** Routes that answer without a token (liveness probes cannot carry secrets). */
const OPEN_ROUTES = new Set(['/healthz', '/readyz']);

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/**
 * Optional bearer token: when set, every route but /healthz, /readyz and the web page's static files
 * (routes marked `config.public`, see web/static.ts; unknown routes are guarded) needs
 * `Authorization: Bearer <token>`. The page holds no data: it loads, asks the user for the token and
 * sends it with its API calls. Compared in constant time over fixed-length digests.
 */
export default fp<{ token?: string }>(
  async (app, options) => {
    if (!options.token) return;
    const expected = digest(options.token);
    app.addHook('onRequest', async (request, reply) => {
      if (OPEN_ROUTES.has(request.routeOptions.url ?? '') || request.routeOptions.config?.public === true)
        return;
      const match = /^Bearer\s+(.+)$/i.exec(request.headers.authorization ?? '');
      if (match && timingSafeEqual(digest(match[1]!.trim()), expected)) return;
      reply.header('WWW-Authenticate', 'Bearer');
      throw new ServeErrors.unauthorized();
    });
  },
  { name: 'melo-auth' },
);
