import fp from 'fastify-plugin';
import { Gauge } from 'prom-client';
import { DicomwebPacs, type PacsAuth } from '../../pacs/dicomweb.ts';
import type { InstanceHeader } from '../../pacs/instance.ts';
import { Outbox } from '../../pacs/outbox.ts';
import { routingMatches } from '../../pacs/routing.ts';
import { type SrTaskResult, writeSr } from '../../pacs/sr.ts';

declare module 'fastify' {
  interface FastifyInstance {
    outbox: Outbox;
  }
}

export interface OutboxPluginOptions {
  /** Outbox directory (durable queue between STOW-RS acknowledgement and SR delivery). */
  readonly dir: string;
  /** DICOMweb base URL SRs are stored to by STOW-RS. */
  readonly resultsUrl: string;
  readonly auth?: PacsAuth;
  readonly maxPixels: number;
  readonly retryBaseMs?: number;
  readonly retryMaxMs?: number;
}

/**
 * Push mode's back half: instances received by STOW-RS wait in the outbox; a worker classifies each with
 * the tasks whose routing matches it (rows of the same dynamic batches as /v1/predict), writes its SR
 * and stores it in the results PACS, retrying while that PACS is down. Started once the server is
 * ready; on close it finishes the job at hand and leaves the rest on disk for the next start.
 */
export default fp<OutboxPluginOptions>(
  async (app, options) => {
    const pacs = new DicomwebPacs(options.resultsUrl, options.auth ?? {});
    const classify = async (bytes: Uint8Array, header: InstanceHeader): Promise<Uint8Array | undefined> => {
      // Adapters found at start load in the background: an SR names every task routed to the image.
      if (app.engine.loading) await app.engine.untilLoaded();
      const tasks = app.engine.tasks().filter((task) => routingMatches(task.routing, header));
      if (tasks.length === 0) return undefined;
      // On an upload decode thread within the image limits, like /v1/predict (a 503 there retries later).
      const { pixels } = await app.uploads.decode(bytes, { pixels: true, preview: false });
      const job = await app.batcher.submit(
        pixels!,
        tasks.map((task) => task.name),
      );
      const results: SrTaskResult[] = job.outcomes.map((outcome, i) => {
        if (!outcome.ok) throw outcome.error;
        const info = tasks[i]!;
        const { task, labels, probabilities, prediction } = outcome.prediction;
        return {
          task,
          labels,
          probabilities,
          prediction,
          taskType: info.taskType,
          adapterFingerprint: info.fingerprint,
        };
      });
      return writeSr({ source: header, backboneFingerprint: app.backbone.fingerprint, results }).bytes;
    };
    const outbox = await Outbox.open(
      options.dir,
      { classify, deliver: (sr) => pacs.store([sr]) },
      {
        logger: app.log,
        ...(options.retryBaseMs !== undefined ? { retryBaseMs: options.retryBaseMs } : {}),
        ...(options.retryMaxMs !== undefined ? { retryMaxMs: options.retryMaxMs } : {}),
      },
    );
    new Gauge({
      name: 'melo_outbox_instances',
      help: 'instances received by STOW-RS and not yet delivered as SRs (on disk), and counts since start',
      labelNames: ['state'] as const,
      registers: [app.metrics.registry],
      async collect() {
        this.set({ state: 'pending' }, await outbox.pending());
        this.set({ state: 'delivered' }, outbox.counts.delivered);
        this.set({ state: 'failed' }, outbox.counts.failed);
        this.set({ state: 'no_task' }, outbox.counts.noTask);
        this.set({ state: 'retries' }, outbox.counts.retries);
      },
    });
    app.decorate('outbox', outbox);
    app.addHook('onReady', async () => outbox.start());
    app.addHook('onClose', async () => outbox.close());
  },
  { name: 'melo-outbox', dependencies: ['melo-backbone', 'melo-batcher', 'melo-metrics', 'melo-uploads'] },
);
