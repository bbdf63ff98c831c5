import fp from 'fastify-plugin';
import { AdapterRegistry } from '../engine/registry.ts';

declare module 'fastify' {
  interface FastifyInstance {
    registry: AdapterRegistry;
  }
}

export interface RegistryPluginOptions {
  readonly adapters: string;
  readonly watch: boolean;
  readonly rescanMs: number;
  readonly debounceMs: number;
  readonly background: boolean;
}

/** Every adapter under the adapters root, kept current while the server runs. */
export default fp<RegistryPluginOptions>(
  async (app, options) => {
    const registry = await AdapterRegistry.open({
      backbone: app.backbone,
      dir: options.adapters,
      watch: options.watch,
      rescanMs: options.rescanMs,
      debounceMs: options.debounceMs,
      background: options.background,
      logger: app.log,
    });
    const updateGauges = () => {
      app.metrics.adaptersLoaded.set(registry.tasks().length);
      app.metrics.adapterErrors.set(registry.problems().length);
    };
    updateGauges();
    registry.onChange(updateGauges);
    app.decorate('registry', registry);
    app.addHook('onClose', async () => {
      await registry.close();
    });
  },
  { name: 'melo-registry', dependencies: ['melo-backbone', 'melo-metrics'] },
);
