import type { FastifyInstance } from 'fastify';
import { MeloError } from '../errors.ts';
import { buildApp } from './app.ts';
import type { ServeOptions } from './options.ts';
import { isLoopback, LOOPBACK_HOSTS } from './plugins/request-guard.ts';

export interface ListenOptions {
  /** Loopback unless told otherwise: exposing a model server is a decision, not a default. */
  readonly host?: string;
  readonly port?: number;
}

export const DEFAULT_HOST = '127.0.0.1';
export const DEFAULT_PORT = 8080;

/**
 * Builds the app and listens; the caller closes it (SIGINT/SIGTERM in `melo serve`). Bound to loopback
 * without an explicit allow-list, the server answers only to loopback names (localhost, 127.0.0.1,
 * [::1]), so a hostile page cannot reach it through a rebound DNS name.
 */
export async function startServer(options: ServeOptions & ListenOptions): Promise<FastifyInstance> {
  const { host = DEFAULT_HOST, port = DEFAULT_PORT, ...serve } = options;
  const allowedHosts =
    serve.allowedHosts && serve.allowedHosts.length > 0
      ? serve.allowedHosts
      : isLoopback(host)
        ? LOOPBACK_HOSTS
        : undefined;
  const app = await buildApp({ ...serve, ...(allowedHosts ? { allowedHosts } : {}) });
  if (!allowedHosts)
    app.log.warn(
      { host },
      'bound beyond loopback without --allowed-host: requests are answered whatever Host they name',
    );
  try {
    await app.listen({ host, port });
  } catch (error) {
    // The inference thread and the adapter watchers would keep the process alive: stop them first.
    await app.close();
    throw listenError(error, host, port);
  }
  return app;
}

/** The usual reasons a server cannot listen, as one line that says what to change. */
function listenError(error: unknown, host: string, port: number): unknown {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  const where = `${host}:${port}`;
  if (code === 'EADDRINUSE')
    return new MeloError(
      'USAGE',
      `cannot listen on ${where}: the port is in use (choose another --port, or 0 for any free port)`,
    );
  if (code === 'EACCES')
    return new MeloError(
      'USAGE',
      `cannot listen on ${where}: permission denied (ports below 1024 need privileges)`,
    );
  if (code === 'EADDRNOTAVAIL')
    return new MeloError(
      'USAGE',
      `cannot listen on ${where}: no such address on this machine (check --host)`,
    );
  return error;
}
