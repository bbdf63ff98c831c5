import { MeloError } from '../errors.ts';
import type { Adapter } from './adapter.ts';
import {
  familyOf,
  familyTargets,
  isBlockTarget,
  loraSlots,
  parseSlotKey,
  projectionShape,
  slotKey,
} from './anatomy.ts';
import type { Backbone } from './backbone.ts';
import { loraLayers } from './lora-config.ts';
import { pooledFeatureSize } from './vit-config.ts';

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
  const available = familyTargets(familyOf(config));
  for (const target of adapter.lora.targets) {
    if (!available.includes(target))
      fail(
        `targets ${target}, which a ${config.family} backbone does not have (it has ${available.join(', ')})`,
      );
  }
  const layers = loraLayers(adapter.lora, config.depth);
  const inLayers = new Set(layers);
  for (const [key, pair] of adapter.pairs) {
    const { layer, target } = parseSlotKey(key);
    if ((layer === undefined) !== !isBlockTarget(config, target))
      fail(
        `has a plug-in '${key}' but the backbone's ${target} is ${layer === undefined ? 'in every block' : 'global'}`,
      );
    const where = layer === undefined ? target : `${target} of block ${layer}`;
    if (layer !== undefined && layer >= config.depth)
      fail(`has a plug-in for block ${layer} but the backbone has ${config.depth} blocks`);
    if (layer !== undefined && !inLayers.has(layer))
      fail(`has a plug-in for block ${layer}, outside its layers_to_transform`);
    const shape = projectionShape(config, target);
    if (pair.A.shape[1] !== shape.in || pair.B.shape[0] !== shape.out) {
      fail(
        `${where} is [${pair.A.shape}]·[${pair.B.shape}] but the backbone's ${target} is ${shape.in}→${shape.out}`,
      );
    }
  }
  if (adapter.pairs.size > 0) {
    for (const slot of loraSlots(config, adapter.lora.targets, layers)) {
      if (!adapter.pairs.has(slotKey(slot)))
        fail(`lacks the ${slot.target} plug-in${slot.layer === undefined ? '' : ` of block ${slot.layer}`}`);
    }
  }
  const features = pooledFeatureSize(config);
  if (adapter.head.weight.shape[1] !== features) {
    fail(`head expects ${adapter.head.weight.shape[1]} features but the backbone gives ${features}`);
  }
}
