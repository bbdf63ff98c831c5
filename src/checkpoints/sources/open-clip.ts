/**
 * open_clip checkpoints whose vision tower is a timm model (BiomedCLIP): `open_clip_config.json` +
 * `open_clip_model.safetensors`. Only the image tower is read: `visual.trunk.*` (a timm ViT built from
 * `timm_model_name` and `timm_model_kwargs`, as open_clip's TimmModel does) and `visual.head.proj`.
 */
import { MeloError } from '../../errors.ts';
import type { PreprocessConfig } from '../../imaging/image.ts';
import type { ViTConfig } from '../../model/vit-config.ts';
import { timmArchitectureConfig } from './timm.ts';

export const OPEN_CLIP_CONFIG_FILE = 'open_clip_config.json';
export const OPEN_CLIP_WEIGHTS_FILE = 'open_clip_model.safetensors';

const OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073] as const;
const OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711] as const;

type Json = Record<string, unknown>;

function object(value: unknown, what: string, file: string): Json {
  if (value === null || typeof value !== 'object' || Array.isArray(value))
    throw new MeloError('BAD_CHECKPOINT', `${what} must be a JSON object`, { file });
  return value as Json;
}

/**
 * The vision tower's anatomy and eval preprocessing. TimmModel keeps the trunk's own global pool when
 * `timm_pool` is '' and resets it otherwise (its norms stay as built); `timm_proj: 'linear'` adds the
 * bias-free projection to `embed_dim`.
 */
export function openClipVision(
  json: Json,
  file: string,
): { config: ViTConfig; preprocess: PreprocessConfig } {
  const model = object(json.model_cfg, 'model_cfg', file);
  const vision = object(model.vision_cfg, 'model_cfg.vision_cfg', file);
  const name = vision.timm_model_name;
  if (typeof name !== 'string' || name === '') {
    throw new MeloError(
      'UNSUPPORTED',
      'open_clip vision towers other than timm models (model_cfg.vision_cfg.timm_model_name) are not supported',
      { file },
    );
  }
  const kwargs =
    vision.timm_model_kwargs === undefined ? {} : object(vision.timm_model_kwargs, 'timm_model_kwargs', file);
  let config = timmArchitectureConfig(name, kwargs, file);
  const pool = vision.timm_pool ?? 'avg';
  if (pool === 'avg' || pool === 'token') config = { ...config, pooling: pool === 'avg' ? 'mean' : 'cls' };
  else if (pool !== '')
    throw new MeloError('UNSUPPORTED', `timm_pool ${JSON.stringify(pool)} is not supported`, { file });
  const proj = vision.timm_proj ?? 'linear';
  if (proj !== 'linear' && proj !== 'none')
    throw new MeloError('UNSUPPORTED', `timm_proj ${JSON.stringify(proj)} is not supported (linear, none)`, {
      file,
    });
  if (vision.timm_proj_bias === true)
    throw new MeloError('UNSUPPORTED', 'timm_proj_bias is not supported', { file });
  const embedDim = Number(model.embed_dim);
  if (proj === 'linear' && (!Number.isInteger(embedDim) || embedDim <= 0))
    throw new MeloError('BAD_CHECKPOINT', 'model_cfg.embed_dim must be a positive integer', { file });
  config = { ...config, projectionSize: proj === 'linear' ? embedDim : 0 };
  return { config, preprocess: openClipPreprocess(vision, json.preprocess_cfg, file) };
}

/**
 * open_clip's eval transform (transform.py, PreprocessCfg): resize the shortest side to `image_size`
 * ('shortest', the default) or squash to it, center crop, normalise with OpenAI's CLIP mean/std unless
 * `preprocess_cfg` overrides them.
 */
function openClipPreprocess(vision: Json, overlay: unknown, file: string): PreprocessConfig {
  const pp = overlay === undefined ? {} : object(overlay, 'preprocess_cfg', file);
  const sizeValue = pp.size ?? vision.image_size ?? 224;
  const [height, width] = Array.isArray(sizeValue)
    ? sizeValue.map(Number)
    : [Number(sizeValue), Number(sizeValue)];
  if (!Number.isInteger(height) || !Number.isInteger(width) || height! <= 0 || width! <= 0)
    throw new MeloError('BAD_CHECKPOINT', `image_size ${JSON.stringify(sizeValue)} is not a positive size`, {
      file,
    });
  const mode = pp.resize_mode ?? 'shortest';
  if (mode !== 'shortest' && mode !== 'squash')
    throw new MeloError(
      'UNSUPPORTED',
      `preprocess_cfg.resize_mode ${JSON.stringify(mode)} is not supported`,
      { file },
    );
  if (mode === 'shortest' && height !== width)
    throw new MeloError('UNSUPPORTED', 'a non-square image_size with resize_mode shortest is not supported', {
      file,
    });
  const interpolation = pp.interpolation ?? 'bicubic';
  if (interpolation !== 'bicubic' && interpolation !== 'bilinear')
    throw new MeloError('UNSUPPORTED', `interpolation ${JSON.stringify(interpolation)} is not supported`, {
      file,
    });
  const triple = (value: unknown, fallback: readonly number[], what: string): [number, number, number] => {
    const list = value ?? fallback;
    if (
      !Array.isArray(list) ||
      list.length !== 3 ||
      !list.every((x) => typeof x === 'number' && Number.isFinite(x))
    )
      throw new MeloError('BAD_CHECKPOINT', `preprocess_cfg.${what} must be 3 numbers`, { file });
    return [list[0], list[1], list[2]];
  };
  const std = triple(pp.std, OPENAI_CLIP_STD, 'std');
  if (std.some((s) => s === 0))
    throw new MeloError('BAD_CHECKPOINT', 'preprocess_cfg.std must not contain 0', { file });
  return {
    inputSize: [height!, width!],
    resizeMode: mode === 'squash' ? 'exact' : 'shortest',
    resizeSize: [height!, width!],
    interpolation,
    cropOffset: 'round',
    mean: triple(pp.mean, OPENAI_CLIP_MEAN, 'mean'),
    std,
  };
}
