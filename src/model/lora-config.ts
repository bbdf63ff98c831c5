import { MeloError } from '../errors.ts';
import { LORA_TARGETS, type LoraTarget } from './anatomy.ts';

/** Every `--targets` name (model/anatomy.ts declares which projection each names). */
export const LINEAR_TARGETS: readonly LoraTarget[] = LORA_TARGETS;
const TARGET_LIST = LORA_TARGETS.join(',');

/** LoRA hyper-parameters, with PEFT's semantics (scale = alpha / rank). */
export interface LoraConfig {
  readonly rank: number;
  readonly alpha: number;
  /** Dropout on the low-rank path's input during training (PEFT's lora_dropout). */
  readonly dropout: number;
  readonly targets: readonly LoraTarget[];
  /** Blocks that get plug-ins; undefined means every block. */
  readonly layers?: readonly number[];
}

/** MeLo's setting: rank 4 on query and value of every block. */
export const MELO_LORA_DEFAULTS: LoraConfig = { rank: 4, alpha: 4, dropout: 0, targets: ['query', 'value'] };

export function loraScale(config: LoraConfig): number {
  return config.alpha / config.rank;
}

export function validateLoraConfig(config: LoraConfig, depth?: number, file?: string): LoraConfig {
  const fail = (field: string, message: string): never => {
    throw new MeloError(file ? 'BAD_ADAPTER' : 'USAGE', `LoRA ${field}: ${message}`, file ? { file } : {});
  };
  if (!Number.isInteger(config.rank) || config.rank <= 0)
    fail('rank', `must be a positive integer, got ${config.rank}`);
  if (!Number.isFinite(config.alpha) || config.alpha <= 0)
    fail('alpha', `must be a positive number, got ${config.alpha}`);
  if (!(config.dropout >= 0 && config.dropout < 1))
    fail('dropout', `must be in [0, 1), got ${config.dropout}`);
  if (config.targets.length === 0) fail('targets', `name at least one of ${TARGET_LIST}`);
  for (const target of config.targets) {
    if (!LINEAR_TARGETS.includes(target)) fail('targets', `unknown target '${target}' (use ${TARGET_LIST})`);
  }
  if (new Set(config.targets).size !== config.targets.length) fail('targets', 'a target is listed twice');
  if (config.layers !== undefined && depth !== undefined) {
    for (const layer of config.layers) {
      if (!Number.isInteger(layer) || layer < 0 || layer >= depth)
        fail('layers', `layer ${layer} is outside 0..${depth - 1}`);
    }
  }
  return config;
}

export function parseTargets(list: string): LoraTarget[] {
  return list
    .split(',')
    .map((item) => item.trim())
    .filter((item) => item.length > 0) as LoraTarget[];
}

export function loraLayers(config: LoraConfig, depth: number): number[] {
  return config.layers
    ? [...config.layers].sort((a, b) => a - b)
    : Array.from({ length: depth }, (_, i) => i);
}
