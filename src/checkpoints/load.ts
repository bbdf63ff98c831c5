import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { listSome, MeloError } from '../errors.ts';
import type { PreprocessConfig } from '../imaging/image.ts';
import { preprocessConfigFromHF, preprocessConfigFromTimm } from '../imaging/preprocess.ts';
import type { Layout } from '../model/anatomy.ts';
import type { Backbone } from '../model/backbone.ts';
import { PLAIN_VIT, type ViTConfig } from '../model/vit-config.ts';
import { type ViTWeights, validateWeights } from '../model/weights.ts';
import { assertFiniteTensors } from '../util/finite.ts';
import { readSafetensorsDir } from './safetensors.ts';
import { convertHfViT, hfViTConfig, isHfViTConfig } from './sources/hf-vit.ts';
import { convertTimmViT, isTimmConfig, timmViTConfig } from './sources/timm.ts';

export type { Backbone } from '../model/backbone.ts';
/** The on-disk layouts a backbone is read from (model/anatomy.ts's `Layout`). */
export type CheckpointLayout = Layout;

/**
 * Loads a checkpoint directory, detecting its layout from `config.json`: Hugging Face transformers
 * (`model_type: "vit"`) or timm (`architecture`). Weights come from `model.safetensors` or a sharded
 * index; pickle files are never read.
 */
export async function loadBackbone(dir: string): Promise<Backbone> {
  const info = await stat(dir).catch(() => undefined);
  if (!info) throw new MeloError('NOT_FOUND', 'backbone directory does not exist', { file: dir });
  if (!info.isDirectory())
    throw new MeloError('BAD_CHECKPOINT', 'a backbone is a directory (config.json + model.safetensors)', {
      file: dir,
    });
  const configPath = join(dir, 'config.json');
  const json = await readJsonObject(
    configPath,
    'expected a Hugging Face ViT (config.json with model_type "vit") or a timm checkpoint (config.json with "architecture") plus model.safetensors',
  );

  let layout: Layout;
  let parsed: { config: ViTConfig; labels?: string[] };
  let preprocess: PreprocessConfig;
  if (isHfViTConfig(json)) {
    layout = 'hf';
    parsed = hfViTConfig(json, configPath);
    const preprocessorPath = join(dir, 'preprocessor_config.json');
    const preprocessor = (await exists(preprocessorPath)) ? await readJsonObject(preprocessorPath) : {};
    preprocess = preprocessConfigFromHF(
      { size: { height: parsed.config.imageSize[0], width: parsed.config.imageSize[1] }, ...preprocessor },
      preprocessorPath,
    );
  } else if (isTimmConfig(json)) {
    layout = 'timm';
    parsed = timmViTConfig(json, configPath);
    const pretrained = (json.pretrained_cfg ?? {}) as Record<string, unknown>;
    preprocess = preprocessConfigFromTimm(
      {
        architecture: json.architecture,
        input_size: [parsed.config.channels, ...parsed.config.imageSize],
        ...pretrained,
      },
      configPath,
    );
  } else {
    throw new MeloError(
      'BAD_CHECKPOINT',
      'config.json is neither a Hugging Face ViT (model_type "vit") nor a timm checkpoint ("architecture")',
      { file: configPath },
    );
  }

  const checkpoint = await readSafetensorsDir(dir);
  const converted =
    layout === 'hf'
      ? convertHfViT(checkpoint.tensors, parsed.config)
      : convertTimmViT(checkpoint.tensors, parsed.config);
  const hasHead = converted.weights.has('head.weight');
  const numClasses = hasHead ? converted.weights.get('head.weight')!.shape[0]! : 0;
  const config: ViTConfig = { ...parsed.config, numClasses };
  const describe = (name: string) => converted.sourceNames.get(name) ?? name;
  if (converted.unexpected.length > 0) {
    throw new MeloError(
      'BAD_CHECKPOINT',
      `${converted.unexpected.length} unexpected tensor${converted.unexpected.length === 1 ? '' : 's'}: ${listSome(converted.unexpected)}`,
      {
        file: checkpoint.shards[0] ?? dir,
      },
    );
  }
  validateWeights(
    config,
    converted.weights,
    checkpoint.shards.length === 1 ? checkpoint.shards[0]! : dir,
    describe,
  );
  assertFiniteTensors(converted.weights, {
    code: 'BAD_CHECKPOINT',
    file: checkpoint.shards.length === 1 ? checkpoint.shards[0]! : dir,
    describe,
  });
  const labels = hasHead && parsed.labels?.length === numClasses ? parsed.labels : undefined;
  return {
    dir,
    layout,
    config,
    weights: converted.weights,
    preprocess,
    labels,
    fingerprint: fingerprintBackbone(config, converted.weights),
  };
}

/**
 * The same weights in either layout give the same fingerprint: it hashes melo's canonical names and
 * values (not the head, which adapters replace) plus the architecture fields that change the graph.
 */
export function fingerprintBackbone(config: ViTConfig, weights: ViTWeights): string {
  const hash = createHash('sha256');
  const { imageSize, patchSize, channels, hiddenSize, depth, heads, mlpSize, qkvBias } = config;
  // Anatomy options enter only where they differ from the plain ViT, so a plain ViT keeps the
  // fingerprint its adapters recorded before these options existed.
  const anatomy = Object.fromEntries(
    Object.entries(PLAIN_VIT)
      .filter(([key, plain]) => config[key as keyof typeof PLAIN_VIT] !== plain)
      .map(([key]) => [key, config[key as keyof typeof PLAIN_VIT]]),
  );
  hash.update(
    JSON.stringify({
      imageSize,
      patchSize,
      channels,
      hiddenSize,
      depth,
      heads,
      mlpSize,
      qkvBias,
      ...anatomy,
    }),
  );
  for (const name of [...weights.keys()].sort()) {
    if (name.startsWith('head.')) continue;
    const tensor = weights.get(name)!;
    hash.update(name);
    hash.update(new Uint8Array(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength));
  }
  return `sha256:${hash.digest('hex').slice(0, 32)}`;
}

async function exists(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isFile() ?? false;
}

async function readJsonObject(path: string, hintIfMissing?: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    throw new MeloError('BAD_CHECKPOINT', `file is missing${hintIfMissing ? `; ${hintIfMissing}` : ''}`, {
      file: path,
    });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new MeloError('BAD_CHECKPOINT', `invalid JSON (${(error as Error).message})`, { file: path });
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new MeloError('BAD_CHECKPOINT', 'expected a JSON object', { file: path });
  }
  return value as Record<string, unknown>;
}
