import type { Backbone } from '../checkpoints/load.ts';
import { MeloError } from '../errors.ts';
import { type Adapter, projectionShape } from './adapter.ts';
import { loraLayers } from './lora-config.ts';
import type { LinearTarget } from './vit.ts';

/**
 * Checks that an adapter fits a backbone before any graph is built: its recorded backbone fingerprint
 * (when it has one), every factor's shape against the projection it plugs into, and the head's width.
 */
export function checkAdapterFitsBackbone(adapter: Adapter, backbone: Backbone, file: string): void {
  const fail = (message: string): never => {
    throw new MeloError('BAD_ADAPTER', message, { file });
  };
  const recorded = adapter.metadata.backboneFingerprint;
  if (recorded !== undefined && recorded !== backbone.fingerprint) {
    fail(
      `was trained on another backbone (fingerprint ${recorded}; ${backbone.dir} is ${backbone.fingerprint})`,
    );
  }
  const config = backbone.config;
  const layers = new Set(loraLayers(adapter.lora, config.depth));
  for (const [key, pair] of adapter.pairs) {
    const [layerText, target] = key.split('.') as [string, LinearTarget];
    const layer = Number(layerText);
    if (layer >= config.depth)
      fail(`has a plug-in for block ${layer} but the backbone has ${config.depth} blocks`);
    if (!layers.has(layer)) fail(`has a plug-in for block ${layer}, outside its layers_to_transform`);
    const shape = projectionShape(config, target);
    if (pair.A.shape[1] !== shape.in || pair.B.shape[0] !== shape.out) {
      fail(
        `${target} of block ${layer} is [${pair.A.shape}]·[${pair.B.shape}] but the backbone's ${target} is ${shape.in}→${shape.out}`,
      );
    }
  }
  if (adapter.pairs.size > 0) {
    for (const layer of layers) {
      for (const target of adapter.lora.targets) {
        if (!adapter.pairs.has(`${layer}.${target}`)) fail(`lacks the ${target} plug-in of block ${layer}`);
      }
    }
  }
  if (adapter.head.weight.shape[1] !== config.hiddenSize) {
    fail(`head expects ${adapter.head.weight.shape[1]} features but the backbone has ${config.hiddenSize}`);
  }
}
