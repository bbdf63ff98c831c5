import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
import type { FastifyPluginAsync } from 'fastify';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** A route anyone may call: the static page (see PUBLIC_ROUTE_CONFIG). */
    public?: boolean;
  }
}

/** The built page (`npm run build:web`; committed, so a clone serves it without a build step). */
export const WEB_DIST = fileURLToPath(new URL('../../../web/dist/', import.meta.url));

/**
 * The page is static and holds no data, so its routes are marked `config.public`: an auth hook that
 * honours the mark lets a browser load the page, which then asks for the token before calling the API.
 */
export const PUBLIC_ROUTE_CONFIG = { public: true } as const;

// The page loads only its own script and style; images are object URLs of the user's own file.
const CONTENT_SECURITY_POLICY =
  "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; " +
  "object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/** GET / and /assets/*: the web page, every file registered by name at start (no catch-all route). */
const staticPage: FastifyPluginAsync<{ root?: string }> = async (app, options) => {
  const root = options.root ?? WEB_DIST;
  app.addHook('onRoute', (route) => {
    route.config = { ...route.config, ...PUBLIC_ROUTE_CONFIG };
  });
  if (!existsSync(`${root}/index.html`)) {
    app.log.warn({ root }, 'web page not built: run npm run build:web');
    app.get('/', { schema: { hide: true } }, async (_request, reply) =>
      reply.code(503).type('text/plain').send('The web page is not built: run `npm run build:web`.\n'),
    );
    return;
  }
  await app.register(fastifyStatic, {
    root,
    prefix: '/',
    wildcard: false,
    index: 'index.html',
    // Our own Cache-Control below; @fastify/static 9 would otherwise overwrite it with send's default.
    cacheControl: false,
    setHeaders: (response, path) => {
      // Vite puts a content hash in every asset name: those never change; the page itself always may.
      const immutable = /[\\/]assets[\\/]/.test(path);
      response.setHeader('Cache-Control', immutable ? 'public, max-age=31536000, immutable' : 'no-cache');
      response.setHeader('Content-Security-Policy', CONTENT_SECURITY_POLICY);
      response.setHeader('X-Content-Type-Options', 'nosniff');
      response.setHeader('Referrer-Policy', 'no-referrer');
    },
  });
};

export default staticPage;
