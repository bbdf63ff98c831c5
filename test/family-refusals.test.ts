import assert from 'node:assert/strict';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { loadBackbone } from '../src/checkpoints/load.ts';

// What a backbone family's config cannot hold fails at load with one line naming the file.
const FAMILIES = new URL('./fixtures/families/', import.meta.url).pathname;
const scratch = await mkdtemp(join(tmpdir(), 'melo-family-refusals-'));
after(() => rm(scratch, { recursive: true, force: true }));

// biome-ignore lint/suspicious/noExplicitAny: the edits reach into nested config fields of any shape
type Json = Record<string, any>;

let copies = 0;
async function edited(name: string, file: string, edit: (json: Json) => void): Promise<string> {
  const dir = join(scratch, `${copies++}-${name}`);
  await cp(join(FAMILIES, name), dir, { recursive: true });
  const json = JSON.parse(await readFile(join(dir, file), 'utf8'));
  edit(json);
  await writeFile(join(dir, file), JSON.stringify(json));
  return dir;
}

async function refuses(dir: string, file: string, pattern: RegExp): Promise<void> {
  await assert.rejects(loadBackbone(dir), (error: Error) => {
    assert.match(error.message, pattern);
    assert.ok(error.message.includes(join(dir, file)), `names ${file}: ${error.message}`);
    assert.equal(error.message.includes('\n'), false);
    return true;
  });
}

test('DINOv2: SwiGLU (giant) and other activations are refused', async () => {
  await refuses(
    await edited('dinov2-hf-model', 'config.json', (c) => {
      c.use_swiglu_ffn = true;
    }),
    'config.json',
    /use_swiglu_ffn \(DINOv2-giant\) is not supported/,
  );
  await refuses(
    await edited('dinov2-hf-model', 'config.json', (c) => {
      c.hidden_act = 'relu';
    }),
    'config.json',
    /hidden_act 'relu' is not supported/,
  );
});

test('CLIP: a full clip config without a vision_config object', async () => {
  await refuses(
    await edited('clip-hf', 'config.json', (c) => {
      c.vision_config = 'x';
    }),
    'config.json',
    /'vision_config' must be an object/,
  );
});

test('timm: options melo has no anatomy for are named', async () => {
  for (const [option, value, pattern] of [
    ['class_token', false, /class_token=false/],
    ['global_pool', 'map', /global_pool="map"/],
    ['qk_norm', true, /qk_norm=true/],
    ['act_layer', 'silu', /act_layer="silu"/],
    ['norm_layer', 'rmsnorm', /norm_layer="rmsnorm"/],
    ['pool_include_prefix', true, /pool_include_prefix=true/],
  ] as const) {
    await refuses(
      await edited('mae-timm', 'config.json', (c) => {
        c.model_args[option] = value;
      }),
      'config.json',
      pattern,
    );
  }
  await refuses(
    await edited('dinov2-reg4-timm', 'config.json', (c) => {
      c.model_args.no_embed_class = false;
    }),
    'config.json',
    /reg_tokens without no_embed_class/,
  );
});

test('open_clip: vision towers that are not timm models, and projections other than linear', async () => {
  await refuses(
    await edited('openclip-timm', 'open_clip_config.json', (c) => {
      delete c.model_cfg.vision_cfg.timm_model_name;
    }),
    'open_clip_config.json',
    /other than timm models .* are not supported/,
  );
  await refuses(
    await edited('openclip-timm', 'open_clip_config.json', (c) => {
      c.model_cfg.vision_cfg.timm_proj = 'mlp';
    }),
    'open_clip_config.json',
    /timm_proj "mlp" is not supported/,
  );
});

test('open_clip without its safetensors weights (pickle only) says which file is missing', async () => {
  const dir = join(scratch, 'pickle-only');
  await cp(join(FAMILIES, 'openclip-timm'), dir, { recursive: true });
  await rm(join(dir, 'open_clip_model.safetensors'));
  await writeFile(join(dir, 'open_clip_pytorch_model.bin'), 'pickle');
  await assert.rejects(
    loadBackbone(dir),
    /open_clip_model\.safetensors: file is missing \(melo reads safetensors weights only, never pickle\)/,
  );
});
