import type { FastifyInstance } from 'fastify';
import { buildApp } from './app.ts';
import type { ServeOptions } from './options.ts';

export interface ListenOptions {
  /** Loopback unless told otherwise: exposing a model server is a decision, not a default. */
  readonly host?: string;
  readonly port?: number;
}

export const DEFAULT_HOST = '127.0.0.1';
export const DEFAULT_PORT = 8080;

/** Builds the app and listens; the caller closes it (SIGINT/SIGTERM in `melo serve`). */
export async function startServer(options: ServeOptions & ListenOptions): Promise<FastifyInstance> {
  const { host = DEFAULT_HOST, port = DEFAULT_PORT, ...serve } = options;
  const app = await buildApp(serve);
  await app.listen({ host, port });
  return app;
}
