import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { listSome, MeloError } from '../errors.ts';
import type { PreprocessConfig } from '../imaging/image.ts';
import { preprocessConfigFromHF, preprocessConfigFromTimm } from '../imaging/preprocess.ts';
import { fromLayout, type Layout } from '../model/anatomy.ts';
import type { Backbone } from '../model/backbone.ts';
import { PLAIN_VIT, type ViTConfig } from '../model/vit-config.ts';
import { type ViTWeights, validateWeights } from '../model/weights.ts';
import type { HostTensor } from '../tensor.ts';
import { assertFiniteTensors } from '../util/finite.ts';
import { isFile } from '../util/fs.ts';
import type { PositionInterpolation } from './resample.ts';
import { readCheckpointTensors, readSafetensorsDir } from './safetensors.ts';
import { hfClipConfig, hfDinov2Config, hfFamilyType } from './sources/hf-families.ts';
import { hfViTConfig, isHfViTConfig } from './sources/hf-vit.ts';
import { OPEN_CLIP_CONFIG_FILE, OPEN_CLIP_WEIGHTS_FILE, openClipVision } from './sources/open-clip.ts';
import { isTimmConfig, timmViTConfig } from './sources/timm.ts';

export type { Backbone } from '../model/backbone.ts';
/** The on-disk layouts a backbone is read from (model/anatomy.ts's `Layout`). */
export type CheckpointLayout = Layout;

/** What a directory's config files say, before its weights are read. */
interface ParsedSource {
  readonly layout: Layout;
  readonly config: ViTConfig;
  readonly labels?: string[];
  readonly preprocess: PreprocessConfig;
  readonly positionInterpolation: PositionInterpolation;
  /** The weights: a safetensors file, or the directory (model.safetensors or a sharded index). */
  readonly weights: string;
}

const CONFIG_HINT =
  'expected config.json (Hugging Face vit, dinov2, dinov2_with_registers, clip_vision_model or clip; or timm with "architecture") plus model.safetensors, or open_clip_config.json plus open_clip_model.safetensors';

/**
 * Loads a checkpoint directory, detecting family and layout from its config: Hugging Face transformers
 * (`config.json` with model_type vit, dinov2, dinov2_with_registers, clip_vision_model or clip), timm
 * (`config.json` with `architecture`) or open_clip with a timm trunk (`open_clip_config.json`). Weights
 * come from `model.safetensors`, a sharded index, or `open_clip_model.safetensors`; pickle files are
 * never read. The position embeddings' grid is the checkpoint's; the preprocessing (which may ask for a
 * larger input) decides the graph's, and weightsForResolution resamples as the source library does.
 */
export async function loadBackbone(dir: string): Promise<Backbone> {
  const info = await stat(dir).catch(() => undefined);
  if (!info) throw new MeloError('NOT_FOUND', 'backbone directory does not exist', { file: dir });
  if (!info.isDirectory())
    throw new MeloError('BAD_CHECKPOINT', 'a backbone is a directory (config.json + model.safetensors)', {
      file: dir,
    });
  const source = await parseSource(dir);
  if (source.weights !== dir && !(await isFile(source.weights)))
    throw new MeloError(
      'BAD_CHECKPOINT',
      'file is missing (melo reads safetensors weights only, never pickle)',
      {
        file: source.weights,
      },
    );
  const checkpoint =
    source.weights === dir ? await readSafetensorsDir(dir) : await readCheckpointTensors(source.weights);
  const parsed = { ...source, config: withCheckpointGrid(source, checkpoint.tensors) };
  const converted = fromLayout(parsed.config, parsed.layout, checkpoint.tensors);
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
    layout: parsed.layout,
    config,
    weights: converted.weights,
    preprocess: parsed.preprocess,
    positionInterpolation: parsed.positionInterpolation,
    labels,
    fingerprint: fingerprintBackbone(config, converted.weights),
  };
}

/** The family, layout, anatomy and preprocessing a directory's config files declare. */
async function parseSource(dir: string): Promise<ParsedSource> {
  const configPath = join(dir, 'config.json');
  const openClipPath = join(dir, OPEN_CLIP_CONFIG_FILE);
  if (!(await isFile(configPath)) && (await isFile(openClipPath))) {
    const { config, preprocess } = openClipVision(await readJsonObject(openClipPath), openClipPath);
    return {
      layout: 'open_clip',
      config,
      preprocess,
      positionInterpolation: 'bicubic-antialias',
      weights: join(dir, OPEN_CLIP_WEIGHTS_FILE),
    };
  }
  const json = await readJsonObject(configPath, CONFIG_HINT);
  const hfType = hfFamilyType(json);
  if (isHfViTConfig(json) || hfType) {
    const parsed =
      hfType === undefined
        ? hfViTConfig(json, configPath)
        : hfType === 'clip' || hfType === 'clip_vision_model'
          ? hfClipConfig(json, configPath)
          : hfDinov2Config(json, configPath);
    const preprocessorPath = join(dir, 'preprocessor_config.json');
    const preprocessor = (await isFile(preprocessorPath)) ? await readJsonObject(preprocessorPath) : {};
    const [height, width] = parsed.config.imageSize;
    return {
      layout: 'hf',
      ...parsed,
      preprocess: preprocessConfigFromHF({ size: { height, width }, ...preprocessor }, preprocessorPath),
      // transformers' interpolate_pos_encoding: plain bicubic, except dinov2_with_registers (antialias).
      positionInterpolation: hfType === 'dinov2_with_registers' ? 'bicubic-antialias' : 'bicubic',
      weights: dir,
    };
  }
  if (isTimmConfig(json)) {
    const parsed = timmViTConfig(json, configPath);
    const pretrained = (json.pretrained_cfg ?? {}) as Record<string, unknown>;
    return {
      layout: 'timm',
      ...parsed,
      preprocess: preprocessConfigFromTimm(
        {
          architecture: json.architecture,
          input_size: [parsed.config.channels, ...parsed.config.imageSize],
          ...pretrained,
        },
        configPath,
      ),
      // resample_abs_pos_embed's default, used by checkpoint_filter_fn and dynamic_img_size.
      positionInterpolation: 'bicubic-antialias',
      weights: dir,
    };
  }
  throw new MeloError('BAD_CHECKPOINT', `config.json is not a supported backbone; ${CONFIG_HINT}`, {
    file: configPath,
  });
}

/**
 * timm and open_clip build the model at `img_size` and resample the checkpoint's position embeddings
 * into it at load (checkpoint_filter_fn) or per call (`dynamic_img_size`): the checkpoint's own grid is
 * its square position table, which may differ from `img_size`. Hugging Face configs state the grid.
 */
function withCheckpointGrid(source: ParsedSource, tensors: ReadonlyMap<string, HostTensor>): ViTConfig {
  const { config, layout } = source;
  if (layout === 'hf') return config;
  const pos = tensors.get(layout === 'open_clip' ? 'visual.trunk.pos_embed' : 'pos_embed');
  const rows = pos?.shape.length === 3 ? pos.shape[1]! : undefined;
  if (rows === undefined) return config; // the shape check names it
  const cells = rows - (config.positionEmbedding === 'patches' ? 0 : 1);
  const [gh, gw] = config.imageSize.map((side) => side / config.patchSize) as [number, number];
  if (cells === gh * gw) return config;
  const side = Math.round(Math.sqrt(cells));
  if (side * side !== cells) return config;
  return { ...config, imageSize: [side * config.patchSize, side * config.patchSize] };
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
