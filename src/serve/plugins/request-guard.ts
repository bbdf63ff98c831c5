import fp from 'fastify-plugin';
import { RETRY_AFTER_SECONDS, ServeErrors } from '../errors.ts';

/** The names a loopback-bound server answers to by default. */
export const LOOPBACK_HOSTS: readonly string[] = ['localhost', '127.0.0.1', '[::1]'];

/** Whether `address` (what the server binds) is a loopback address. */
export function isLoopback(address: string): boolean {
  return address === 'localhost' || address === '::1' || /^127\.\d+\.\d+\.\d+$/.test(address);
}

/** Probes answer whatever name they are reached by (they carry no data). */
const UNGUARDED_ROUTES = new Set(['/healthz', '/readyz']);

const UNSAFE_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

export interface RequestGuardOptions {
  /**
   * Host names (without port) requests must be addressed to; a defence against DNS rebinding, where a
   * hostile page's own name is pointed at the server's address. Undefined: any host.
   */
  readonly allowedHosts?: readonly string[];
}

/** The host part of a Host header or URL host, lower-cased, without the port. */
export function hostName(host: string): string {
  const lower = host.trim().toLowerCase();
  if (lower.startsWith('[')) return lower.slice(0, lower.indexOf(']') + 1);
  const colon = lower.lastIndexOf(':');
  return colon === -1 ? lower : lower.slice(0, colon);
}

/**
 * Two checks before anything else runs, so that a hostile web page open in the user's browser cannot
 * drive the server: the Host allow-list (DNS rebinding), and for requests that change or compute
 * something (POST, …), a browser's Origin (or Sec-Fetch-Site) must be the server's own. A cross-origin
 * multipart POST is a "simple" request a browser sends without a CORS preflight, so without this check
 * any page could make a loopback server run predictions. Clients that are not browsers send no Origin
 * and pass.
 */
export default fp<RequestGuardOptions>(
  async (app, options) => {
    const allowed = options.allowedHosts?.map(hostName);
    // While the server drains, requests get our 503 with Retry-After (fastify's own closing 503, turned
    // off in app.ts, has no Retry-After).
    let closing = false;
    app.addHook('preClose', async () => {
      closing = true;
    });
    // Every 503 tells the client when to come back, whichever route or plugin answered it.
    app.addHook('onSend', async (_request, reply, payload) => {
      if (reply.statusCode === 503 && !reply.hasHeader('Retry-After'))
        reply.header('Retry-After', String(RETRY_AFTER_SECONDS));
      return payload;
    });
    app.addHook('onRequest', async (request) => {
      if (closing) throw new ServeErrors.shuttingDown();
      if (UNGUARDED_ROUTES.has(request.routeOptions.url ?? '')) return;
      const host = request.headers.host ?? '';
      if (allowed !== undefined && !allowed.includes(hostName(host))) {
        throw new ServeErrors.forbiddenHost();
      }
      if (!UNSAFE_METHODS.has(request.method)) return;
      const origin = request.headers.origin;
      if (origin !== undefined) {
        let originHost: string | undefined;
        try {
          originHost = new URL(origin).host.toLowerCase();
        } catch {
          originHost = undefined; // 'null' (sandboxed frames, file: pages) and anything unparsable
        }
        if (originHost !== host.toLowerCase()) throw new ServeErrors.crossOrigin();
      } else if (request.headers['sec-fetch-site'] === 'cross-site') {
        throw new ServeErrors.crossOrigin();
      }
    });
  },
  { name: 'melo-request-guard' },
);
