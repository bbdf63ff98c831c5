import type { FastifyPluginAsync } from 'fastify';
import explainRoute, { type ExplainRouteOptions } from '../routes/explain.ts';
import staticPage from './static.ts';

export type WebPluginOptions = ExplainRouteOptions & {
  /** Directory of the built page (default: web/dist of this package). */
  readonly root?: string;
};

/**
 * The browser side of `melo serve`: the page at / and the routes only it needs beyond the API
 * (explanations, previews of images a browser cannot show). Registered after the API routes.
 */
const webPlugin: FastifyPluginAsync<WebPluginOptions> = async (app, options) => {
  const { root, ...routeOptions } = options;
  await app.register(staticPage, root ? { root } : {});
  await app.register(explainRoute, routeOptions);
};

export default webPlugin;
