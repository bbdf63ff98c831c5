/**
 * Hugging Face `config.json` of the DINOv2 and CLIP families (the plain `vit` is in hf-vit.ts): each
 * model type's fields mapped onto the anatomy options of one ViTConfig (model/vit-config.ts).
 */
import { MeloError } from '../../errors.ts';
import { PLAIN_VIT, type ViTConfig, validateViTConfig } from '../../model/vit-config.ts';
import { labelsFromId2Label } from './hf-vit.ts';

export type HfFamilyType = 'dinov2' | 'dinov2_with_registers' | 'clip_vision_model' | 'clip';

export function hfFamilyType(config: Record<string, unknown>): HfFamilyType | undefined {
  const type = config.model_type;
  return type === 'dinov2' ||
    type === 'dinov2_with_registers' ||
    type === 'clip_vision_model' ||
    type === 'clip'
    ? type
    : undefined;
}

/** Reads typed fields of one config object, failing with the field's name. */
function fields(json: Record<string, unknown>, file: string, where = '') {
  const number = (key: string, fallback: number): number => {
    const value = json[key] ?? fallback;
    if (typeof value !== 'number' || !Number.isFinite(value))
      throw new MeloError('BAD_CHECKPOINT', `config field '${where}${key}' must be a number`, { file });
    return value;
  };
  const imageSize = (fallback: number): [number, number] => {
    const value = json.image_size ?? fallback;
    return Array.isArray(value) ? [Number(value[0]), Number(value[1])] : [Number(value), Number(value)];
  };
  return { number, imageSize };
}

/**
 * `dinov2` / `dinov2_with_registers` (transformers' Dinov2Config defaults): layer scale on both branches,
 * exact GELU, eps 1e-6. Heads read CLS ++ mean patch, as `Dinov2ForImageClassification`'s does: a task
 * adapter trained on a `Dinov2Model` (RAD-DINO) then has the classifier shape PEFT gives that model, and
 * loads into it. `melo embed` still gives the CLS token by default (`Dinov2Model`'s `pooler_output`).
 */
export function hfDinov2Config(
  json: Record<string, unknown>,
  file: string,
): { config: ViTConfig; labels?: string[] } {
  const { number, imageSize } = fields(json, file);
  if (json.use_swiglu_ffn === true)
    throw new MeloError('UNSUPPORTED', 'use_swiglu_ffn (DINOv2-giant) is not supported', { file });
  const act = json.hidden_act ?? 'gelu';
  if (act !== 'gelu')
    throw new MeloError('UNSUPPORTED', `hidden_act '${String(act)}' is not supported`, { file });
  const registers = json.model_type === 'dinov2_with_registers';
  const hiddenSize = number('hidden_size', 768);
  const config: ViTConfig = {
    imageSize: imageSize(224),
    patchSize: number('patch_size', 14),
    channels: number('num_channels', 3),
    hiddenSize,
    depth: number('num_hidden_layers', 12),
    heads: number('num_attention_heads', 12),
    mlpSize: Math.trunc(hiddenSize * number('mlp_ratio', 4)),
    layerNormEps: number('layer_norm_eps', 1e-6),
    qkvBias: json.qkv_bias === undefined ? true : Boolean(json.qkv_bias),
    ...PLAIN_VIT,
    family: registers ? 'dinov2_with_registers' : 'dinov2',
    registerTokens: registers ? number('num_register_tokens', 4) : 0,
    layerScale: true,
    pooling: 'cls+mean',
    numClasses: 0,
  };
  validateViTConfig(config, file);
  const labels = labelsFromId2Label(json.id2label);
  return labels ? { config, labels } : { config };
}

/**
 * `clip_vision_model` (CLIPVisionModel, CLIPVisionModelWithProjection) or the `vision_config` of a full
 * `clip` (CLIPModel): pre-norm, quick GELU (or GELU), eps 1e-5, `post_layernorm` on the pooled CLS, then
 * `visual_projection` of size `projection_dim` (absent for a plain CLIPVisionModel).
 */
export function hfClipConfig(json: Record<string, unknown>, file: string): { config: ViTConfig } {
  const full = json.model_type === 'clip';
  const vision = full ? json.vision_config : json;
  if (vision === null || typeof vision !== 'object' || Array.isArray(vision))
    throw new MeloError('BAD_CHECKPOINT', "config field 'vision_config' must be an object", { file });
  const { number, imageSize } = fields(vision as Record<string, unknown>, file, full ? 'vision_config.' : '');
  const act = (vision as Record<string, unknown>).hidden_act ?? 'quick_gelu';
  if (act !== 'quick_gelu' && act !== 'gelu')
    throw new MeloError('UNSUPPORTED', `hidden_act '${String(act)}' is not supported (quick_gelu, gelu)`, {
      file,
    });
  const architectures = Array.isArray(json.architectures) ? json.architectures.map(String) : [];
  const projected = full || architectures.includes('CLIPVisionModelWithProjection');
  const projectionDim = full
    ? fields(json, file).number('projection_dim', 512)
    : number('projection_dim', 512);
  const config: ViTConfig = {
    imageSize: imageSize(224),
    patchSize: number('patch_size', 32),
    channels: number('num_channels', 3),
    hiddenSize: number('hidden_size', 768),
    depth: number('num_hidden_layers', 12),
    heads: number('num_attention_heads', 12),
    mlpSize: number('intermediate_size', 3072),
    layerNormEps: number('layer_norm_eps', 1e-5),
    qkvBias: true,
    ...PLAIN_VIT,
    family: 'clip',
    preNorm: true,
    activation: act,
    finalNorm: 'pooled',
    projectionSize: projected ? projectionDim : 0,
    numClasses: 0,
  };
  validateViTConfig(config, file);
  return { config };
}
