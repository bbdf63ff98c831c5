import assert from 'node:assert/strict';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadAdapter, saveAdapter } from '../src/io/peft.ts';
import { headParameterCount, initAdapter, loraParameterCount } from '../src/model/adapter.ts';
import { backboneParameterCount } from '../src/model/anatomy.ts';
import { MELO_LORA_DEFAULTS, validateLoraConfig } from '../src/model/lora-config.ts';
import { vitConfig } from '../src/model/vit-config.ts';
import { Random } from '../src/util/random.ts';

test('MeLo on ViT-B/16: 147,456 LoRA parameters, ≈0.17% of the model, ≈0.6 MB fp32 adapter', async () => {
  const config = vitConfig('base');
  // ViT-B/16 at 224 px without head: 85,798,656 parameters (timm's vit_base_patch16_224 minus its 769,000-parameter head).
  assert.equal(backboneParameterCount(config), 85_798_656);
  const adapter = initAdapter(
    config,
    MELO_LORA_DEFAULTS,
    { task: 'chest', taskType: 'binary', labels: ['normal', 'pneumonia'] },
    new Random(0),
  );
  // 12 blocks × 2 targets (query, value) × (4·768 + 768·4)
  assert.equal(loraParameterCount(adapter), 147_456);
  assert.equal(headParameterCount(adapter), 2 * 768 + 2);
  const share = loraParameterCount(adapter) / backboneParameterCount(config);
  assert.ok(Math.abs(share - 0.0017) < 0.0001, `share ${share}`);
  const dir = await mkdtemp(join(tmpdir(), 'melo-vitb-'));
  try {
    await saveAdapter(join(dir, 'f32'), adapter);
    await saveAdapter(join(dir, 'f16'), adapter, { dtype: 'F16' });
    const bytes32 = (await stat(join(dir, 'f32', 'adapter_model.safetensors'))).size;
    const bytes16 = (await stat(join(dir, 'f16', 'adapter_model.safetensors'))).size;
    // 149,010 float32 values = 596,040 bytes plus the JSON header (~7 KB of key names and metadata).
    assert.ok(bytes32 > 596_040 && bytes32 < 610_000, `fp32 adapter is ${bytes32} bytes`);
    assert.ok(bytes16 > 298_020 && bytes16 < 310_000, `fp16 adapter is ${bytes16} bytes`);
    const reloaded = await loadAdapter(join(dir, 'f16'));
    const a = adapter.pairs.get('0.query')!.A.data;
    const b = reloaded.pairs.get('0.query')!.A.data;
    for (let i = 0; i < a.length; i++)
      assert.ok(Math.abs(a[i]! - b[i]!) <= Math.abs(a[i]!) * 2 ** -11 + 1e-7);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('LoRA initialisation: A Kaiming-uniform within ±1/√in, B zeros (step 0 equals the base model)', () => {
  const config = vitConfig('small');
  const adapter = initAdapter(
    config,
    { ...MELO_LORA_DEFAULTS, targets: ['query', 'fc1', 'fc2'] },
    { task: 't', taskType: 'multiclass', labels: ['a', 'b', 'c'] },
    new Random(3),
  );
  const fc2 = adapter.pairs.get('5.fc2')!;
  assert.deepEqual(fc2.A.shape, [4, 1536]);
  assert.deepEqual(fc2.B.shape, [384, 4]);
  const bound = 1 / Math.sqrt(1536);
  const max = fc2.A.data.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  assert.ok(max <= bound && max > 0.95 * bound, `max |A| ${max} vs bound ${bound}`);
  assert.ok(fc2.B.data.every((v) => v === 0));
});

test('LoRA config errors name the field', () => {
  assert.throws(
    () => validateLoraConfig({ ...MELO_LORA_DEFAULTS, rank: 0 }),
    /LoRA rank: must be a positive integer/,
  );
  assert.throws(
    () => validateLoraConfig({ ...MELO_LORA_DEFAULTS, targets: ['query', 'qkv' as never] }),
    /unknown target 'qkv'/,
  );
  assert.throws(
    () => validateLoraConfig({ ...MELO_LORA_DEFAULTS, layers: [12] }, 12),
    /layer 12 is outside 0\.\.11/,
  );
});
