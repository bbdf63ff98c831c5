import fp from 'fastify-plugin';
import { type Backbone, loadBackbone } from '../../checkpoints/load.ts';

declare module 'fastify' {
  interface FastifyInstance {
    backbone: Backbone;
  }
}

/** The frozen ViT every task shares, loaded once at start. */
export default fp<{ backbone: string | Backbone }>(
  async (app, options) => {
    const backbone =
      typeof options.backbone === 'string' ? await loadBackbone(options.backbone) : options.backbone;
    app.log.info(
      {
        layout: backbone.layout,
        depth: backbone.config.depth,
        hiddenSize: backbone.config.hiddenSize,
        inputSize: backbone.preprocess.inputSize,
      },
      'backbone loaded',
    );
    app.decorate('backbone', backbone);
  },
  { name: 'melo-backbone' },
);
