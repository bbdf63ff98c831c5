import assert from 'node:assert/strict';
import { cp, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { readSafetensors } from '../src/checkpoints/safetensors.ts';
import { embedImages } from '../src/embed.ts';
import { predict, preparePixels } from '../src/predict.ts';
import { assertClose } from './helpers/graph.ts';

// Tiny checkpoints of every family and layout, and their outputs from independent PyTorch
// re-implementations of transformers / timm / open_clip (scripts/fixtures/make_family_fixtures.py,
// test/fixtures/families/README.md). `large/` overlays configs whose preprocessing asks for 28 px on a
// 16-px checkpoint, so the position embeddings are interpolated as the source library does.
const FAMILIES = new URL('./fixtures/families/', import.meta.url).pathname;
const images = (size: number) => ['a', 'b'].map((tag) => join(FAMILIES, 'images', `s${size}-${tag}.png`));
const scratch = await mkdtemp(join(tmpdir(), 'melo-families-'));
after(() => rm(scratch, { recursive: true, force: true }));

/** The fixture directory, or a copy with `large/`'s config files laid over it. */
async function checkpoint(name: string, large: boolean): Promise<string> {
  const source = join(FAMILIES, name);
  if (!large) return source;
  const target = join(scratch, name);
  await cp(source, target, { recursive: true, filter: (path) => !path.includes('/lora_adapter') });
  for (const file of await readdir(join(source, 'large')))
    await cp(join(source, 'large', file), join(target, file));
  return target;
}

const CASES = [
  ['dinov2-hf-classifier', 'hf', 'dinov2', 'logits'],
  ['dinov2-hf-model', 'hf', 'dinov2', 'embedding'],
  ['dinov2-reg-hf-classifier', 'hf', 'dinov2_with_registers', 'logits'],
  ['dinov2-timm', 'timm', 'dinov2', 'embedding'],
  ['dinov2-reg4-timm', 'timm', 'dinov2_with_registers', 'embedding'],
  ['mae-timm', 'timm', 'vit', 'logits'],
  ['clip-vision-hf', 'hf', 'clip', 'embedding'],
  ['clip-hf', 'hf', 'clip', 'embedding'],
  ['openclip-timm', 'open_clip', 'vit', 'embedding'],
] as const;

for (const [name, layout, family, output] of CASES) {
  const reference = await readSafetensors(join(FAMILIES, 'references', `${name}.safetensors`));
  const ref = (key: string) => reference.tensors.get(key)!;
  for (const large of [false, true]) {
    const size = large ? 28 : 16;
    const suffix = large ? '_large' : '';
    test(`${name} (${layout} ${family}) at ${size} px: ${output} match PyTorch within 1e-4`, async () => {
      const backbone = await loadBackbone(await checkpoint(name, large));
      assert.equal(backbone.layout, layout);
      assert.equal(backbone.config.family, family);
      assert.deepEqual(backbone.config.imageSize, [16, 16], 'the checkpoint grid is 4×4');
      assert.deepEqual(backbone.preprocess.inputSize, [size, size]);
      const pixels = await preparePixels(backbone, images(size));
      assertClose(pixels, ref(`pixels${suffix}`).data, 1e-5, 'preprocessed pixels');
      if (output === 'logits') {
        const predictions = await predict(backbone, images(size), { threads: 1 });
        assert.deepEqual(predictions[0]!.labels, ['normal', 'benign', 'malignant']);
        const logits = Float32Array.from(predictions.flatMap((p) => p.logits));
        assertClose(logits, ref(`logits${suffix}`).data, 1e-4, 'logits');
      } else {
        const result = await embedImages(backbone, images(size), { threads: 1 });
        assert.equal(result.dims, ref(`embedding${suffix}`).shape[1]);
        assertClose(result.values, ref(`embedding${suffix}`).data, 1e-4, 'embedding');
      }
    });
  }
}

test('Dinov2Model embeds CLS by default and CLS ++ mean patch with --pool cls+mean', async () => {
  const reference = await readSafetensors(join(FAMILIES, 'references', 'dinov2-hf-model.safetensors'));
  for (const large of [false, true]) {
    const backbone = await loadBackbone(await checkpoint('dinov2-hf-model', large));
    const result = await embedImages(backbone, images(large ? 28 : 16), { threads: 1, pool: 'cls+mean' });
    assert.equal(result.dims, 32);
    const key = `embedding_cls_mean${large ? '_large' : ''}`;
    assertClose(result.values, reference.tensors.get(key)!.data, 1e-4, key);
  }
});
