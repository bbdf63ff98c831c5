import fp from 'fastify-plugin';
import type { BatcherOptions } from '../engine/batcher.ts';
import { DynamicBatcher } from '../engine/batcher.ts';
import { ServingEngine } from '../engine/engine.ts';

declare module 'fastify' {
  interface FastifyInstance {
    engine: ServingEngine;
    batcher: DynamicBatcher;
  }
}

export interface BatcherPluginOptions extends BatcherOptions {
  readonly threads?: number;
  readonly maxResidentAdapters?: number;
}

/** The serving graph over the registry's tasks, and the dynamic batcher in front of it. */
export default fp<BatcherPluginOptions>(
  async (app, options) => {
    const engine = await ServingEngine.create(app.backbone, app.registry, {
      ...(options.threads ? { threads: options.threads } : {}),
      ...(options.maxResidentAdapters ? { maxResidentAdapters: options.maxResidentAdapters } : {}),
      logger: app.log,
      observer: app.metrics,
    });
    const batcher = new DynamicBatcher((rows) => engine.run(rows), options, app.metrics);
    app.decorate('engine', engine);
    app.decorate('batcher', batcher);
    app.addHook('onClose', async () => {
      await batcher.close();
      await engine.close();
    });
  },
  { name: 'melo-batcher', dependencies: ['melo-registry', 'melo-metrics'] },
);
