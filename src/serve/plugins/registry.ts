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
    // One line whenever the set of served tasks changes (an adapter added or removed, or the whole
    // adapters directory gone), so an operator sees from the log alone what the server can answer.
    let served = new Set(registry.tasks().map((task) => task.name));
    registry.onChange(() => {
      const now = new Set(registry.tasks().map((task) => task.name));
      const added = [...now].filter((name) => !served.has(name)).sort();
      const removed = [...served].filter((name) => !now.has(name)).sort();
      served = now;
      if (added.length === 0 && removed.length === 0) return;
      const fields = { added, removed, tasks: now.size };
      if (now.size === 0) app.log.warn(fields, 'no tasks are served');
      else app.log.info(fields, 'served tasks changed');
    });
    app.decorate('registry', registry);
    app.addHook('onClose', async () => {
      await registry.close();
    });
  },
  { name: 'melo-registry', dependencies: ['melo-backbone', 'melo-metrics'] },
);
