import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { readSafetensors } from '../src/checkpoints/safetensors.ts';
import {
  backboneParameterCount,
  canonicalTensors,
  fromLayout,
  loraSlots,
  parseSlotKey,
  peftModulePath,
  projectionShape,
  slotKey,
  slotWeightName,
  toLayout,
  VIT_FAMILY,
} from '../src/model/anatomy.ts';
import { vitConfig } from '../src/model/vit-config.ts';

// The declared anatomy of the plain ViT, checked against the checkpoints the PyTorch fixture script wrote
// (scripts/fixtures/make_vit_fixture.py: the same weights in the Hugging Face and timm layouts).
const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;

test('Hugging Face layout: reading then writing gives the file’s tensors back, byte for byte', async () => {
  const backbone = await loadBackbone(join(FIXTURES, 'hf'));
  const file = await readSafetensors(join(FIXTURES, 'hf', 'model.safetensors'));
  const written = toLayout(backbone.config, 'hf', backbone.weights);
  assert.deepEqual([...written.keys()].sort(), [...file.tensors.keys()].sort());
  for (const [name, tensor] of file.tensors) {
    const back = written.get(name)!;
    assert.deepEqual(back.shape, tensor.shape, `${name} shape`);
    assert.deepEqual(back.data, tensor.data, `${name} values`);
  }
});

test('timm layout: the fused qkv slices and the conv patch give the Hugging Face file’s canonical weights', async () => {
  const hf = await loadBackbone(join(FIXTURES, 'hf'));
  const timmFile = await readSafetensors(join(FIXTURES, 'timm', 'model.safetensors'));
  const converted = fromLayout(hf.config, 'timm', timmFile.tensors);
  assert.deepEqual(converted.unexpected, []);
  assert.equal(converted.sourceNames.get('blocks.1.attn.value.weight'), 'blocks.1.attn.qkv.weight[value]');
  assert.deepEqual([...converted.weights.keys()].sort(), [...hf.weights.keys()].sort());
  for (const [name, tensor] of hf.weights) {
    assert.deepEqual(converted.weights.get(name)!.shape, tensor.shape, `${name} shape`);
    assert.deepEqual(converted.weights.get(name)!.data, tensor.data, `${name} values`);
  }
  // A qkv whose rows do not split in three is left unused: reported as unexpected, its parts as missing.
  const odd = new Map(timmFile.tensors);
  odd.set('blocks.0.attn.qkv.bias', { shape: [95], data: new Float32Array(95) });
  const bad = fromLayout(hf.config, 'timm', odd);
  assert.deepEqual(bad.unexpected, ['blocks.0.attn.qkv.bias']);
  assert.ok(!bad.weights.has('blocks.0.attn.query.bias'));
});

test('canonical tensors: ViT-B/16 counts as timm’s model (85,798,656 without head), heads are [classes, D]', () => {
  const config = vitConfig('base', { numClasses: 10 });
  assert.equal(backboneParameterCount(config), 85_798_656);
  const head = canonicalTensors(config).find((tensor) => tensor.name === 'head.weight')!;
  assert.deepEqual(head.shape, [10, 768]);
  const patch = canonicalTensors(config).find((tensor) => tensor.name === 'patch_embed.weight')!;
  assert.deepEqual(patch.shape, [3 * 16 * 16, 768]);
  assert.equal(
    canonicalTensors(vitConfig('base', { qkvBias: false })).filter((t) =>
      /attn\.(query|key|value)\.bias/.test(t.name),
    ).length,
    0,
  );
});

test('LoRA slots: one key format, written and parsed in one place', () => {
  const config = vitConfig('tiny');
  assert.deepEqual(parseSlotKey('11.value'), { layer: 11, target: 'value' });
  assert.deepEqual(parseSlotKey('patch_embed'), { layer: undefined, target: 'patch_embed' });
  for (const bad of ['3.foo', 'x.query', 'query.3', '', '3.'])
    assert.throws(() => parseSlotKey(bad), /is not a LoRA slot key/, bad);
  assert.deepEqual(loraSlots(config, ['value', 'patch_embed', 'query'], [2, 5]).map(slotKey), [
    'patch_embed',
    '2.value',
    '2.query',
    '5.value',
    '5.query',
  ]);
  assert.deepEqual(projectionShape(config, 'fc1'), { in: 192, out: 768 });
  assert.deepEqual(projectionShape(config, 'patch_embed'), { in: 768, out: 192 });
  assert.equal(slotWeightName(config, { layer: 3, target: 'output' }), 'blocks.3.attn.proj.weight');
  assert.equal(slotWeightName(config, { layer: undefined, target: 'patch_embed' }), 'patch_embed.weight');
  assert.equal(peftModulePath(VIT_FAMILY, { layer: 7, target: 'fc2' }), 'vit.encoder.layer.7.output.dense');
  assert.equal(
    peftModulePath(VIT_FAMILY, { layer: undefined, target: 'patch_embed' }),
    'vit.embeddings.patch_embeddings.projection',
  );
  assert.equal(
    peftModulePath(VIT_FAMILY, { layer: 0, target: 'query' }, true),
    'vit\\.encoder\\.layer\\.\\d+\\.attention\\.attention\\.query',
  );
});
