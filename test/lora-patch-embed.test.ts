import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { readSafetensors, writeSafetensors } from '../src/checkpoints/safetensors.ts';
import { buildOnnxExport } from '../src/io/onnx-export.ts';
import { loadAdapter, saveAdapter } from '../src/io/peft.ts';
import { type Adapter, initAdapter } from '../src/model/adapter.ts';
import type { LoraConfig } from '../src/model/lora-config.ts';
import { adapterFeeds } from '../src/model/task-graph.ts';
import { TaskModel } from '../src/model/task-model.ts';
import { Session } from '../src/runtime/session.ts';
import { AdapterStack, stackedWeightsOf } from '../src/serve/engine/adapter-stack.ts';
import { MultiTaskModel } from '../src/serve/engine/multi-task-model.ts';
import { TrainStep } from '../src/train/train-step.ts';
import { Random } from '../src/util/random.ts';
import { assertClose } from './helpers/graph.ts';

// LoRA on the patch embedding (`--targets patch_embed`), the worked example of adding a LoRA target: the
// anatomy declares the target on the patch Conv2d and the ViT routes its patchify product through the
// same projection hook as every other target; everything below (training graph, gradients, merge for
// export, PEFT keys, serving stack) follows from those declarations.
const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;
const backbone = await loadBackbone(join(FIXTURES, 'hf'));
const config = backbone.config;
const reference = await readSafetensors(join(FIXTURES, 'reference.safetensors'));
const pixels = reference.tensors.get('input')!.data;
const LORA: LoraConfig = { rank: 2, alpha: 4, dropout: 0, targets: ['query', 'patch_embed'] };

/** A fresh adapter whose B factors are non-zero too, so every low-rank path changes the logits. */
function randomAdapter(seed: number): Adapter {
  const random = new Random(seed);
  const fresh = initAdapter(
    config,
    LORA,
    { task: `patch-${seed}`, taskType: 'multiclass', labels: ['a', 'b', 'c'] },
    random,
  );
  const pairs = new Map(
    [...fresh.pairs].map(([key, pair]) => [
      key,
      {
        A: pair.A,
        B: { shape: pair.B.shape, data: Float32Array.from(pair.B.data, () => random.normal() * 0.2) },
      },
    ]),
  );
  return { ...fresh, pairs };
}

test('patch_embed: a global slot with the Conv2d projection’s shape, and one LoRA input pair per slot', async () => {
  const adapter = randomAdapter(1);
  const patchPair = adapter.pairs.get('patch_embed')!;
  const patchIn = config.channels * config.patchSize ** 2;
  assert.deepEqual(patchPair.A.shape, [2, patchIn]);
  assert.deepEqual(patchPair.B.shape, [config.hiddenSize, 2]);
  assert.deepEqual(
    [...adapter.pairs.keys()],
    ['patch_embed', ...Array.from({ length: config.depth }, (_, layer) => `${layer}.query`)],
  );
  const step = await TrainStep.create({
    backbone,
    method: 'lora',
    lora: LORA,
    numClasses: 3,
    batchSize: 2,
    loss: 'softmax',
    threads: 1,
  });
  assert.ok(step.trainable.includes('lora.patch_embed.A') && step.trainable.includes('lora.patch_embed.B'));
  await step.release();
});

test('patch_embed: gradients of a LoRA step match central differences of the loss', async () => {
  const adapter = randomAdapter(2);
  const base = adapterFeeds(adapter);
  const step = await TrainStep.create({
    backbone,
    method: 'lora',
    lora: LORA,
    numClasses: 3,
    batchSize: 2,
    loss: 'softmax',
    threads: 1,
  });
  const batch = {
    pixels,
    targets: Float32Array.from([0, 0, 1, 1, 0, 0]),
    sampleWeights: Float32Array.from([0.5, 0.5]),
  };
  const analytic = await step.run(batch, base);
  // One random direction per factor of the patch embedding (JAX's check_vjp): ⟨∇L, d⟩ against
  // (L(θ + εd) − L(θ − εd)) / 2ε, separately for A and B.
  const random = new Random(5);
  for (const name of ['lora.patch_embed.A', 'lora.patch_embed.B']) {
    const tensor = base.get(name)!;
    const direction = Float32Array.from(tensor.data, () => random.normal());
    const gradient = analytic.gradients.get(name)!.data;
    let derivative = 0;
    for (let i = 0; i < direction.length; i++) derivative += gradient[i]! * direction[i]!;
    const epsilon = 1e-2;
    const shifted = (sign: number) =>
      new Map(base).set(name, {
        shape: tensor.shape,
        data: Float32Array.from(tensor.data, (v, i) => v + sign * epsilon * direction[i]!),
      });
    const plus = await step.run(batch, shifted(1));
    const minus = await step.run(batch, shifted(-1));
    const finiteDifference = (plus.loss - minus.loss) / (2 * epsilon);
    assert.ok(
      Math.abs(derivative) > 1e-2,
      `${name}: directional derivative too small to check: ${derivative}`,
    );
    assert.ok(
      Math.abs(finiteDifference - derivative) < 2e-2 * Math.abs(derivative) + 1e-4,
      `${name}: finite difference ${finiteDifference} vs analytic ${derivative}`,
    );
  }
  await step.release();
});

test('patch_embed: LoRA as inputs, merged into the weights (ONNX export) and stacked for serving agree', async () => {
  const adapter = randomAdapter(3);
  const model = await TaskModel.create({
    backbone,
    method: 'lora',
    lora: LORA,
    numClasses: 3,
    threads: 1,
  });
  const inputs = await model.run(pixels, 2, adapterFeeds(adapter));
  await model.release();
  const without = await TaskModel.create({
    backbone,
    method: 'lora',
    lora: { ...LORA, targets: ['query'] },
    numClasses: 3,
    threads: 1,
  });
  const noPatch = await without.run(
    pixels,
    2,
    adapterFeeds({ ...adapter, pairs: new Map([...adapter.pairs].filter(([key]) => key !== 'patch_embed')) }),
  );
  await without.release();
  const change = inputs.data.reduce((m, v, i) => Math.max(m, Math.abs(v - noPatch.data[i]!)), 0);
  assert.ok(change > 1e-3, `the patch-embedding plug-in changes the logits (by ${change})`);

  // Export folds W + scale·Aᵀ·Bᵀ in JavaScript (an independent computation of the same product).
  const exported = buildOnnxExport(backbone, { task: { adapter } });
  const session = await Session.fromBytes(exported.bytes, { threads: 1 });
  const merged = await session.run({
    pixel_values: { shape: [2, config.channels, ...config.imageSize], data: pixels },
  });
  await session.release();
  assertClose(merged.logits!.data, inputs.data, 2e-5, 'merged (export) vs LoRA inputs');

  const stack = AdapterStack.build(config, [{ name: 'patch', weights: stackedWeightsOf(adapter) }]);
  assert.ok(stack.slots.some((slot) => slot.layer === undefined && slot.target === 'patch_embed'));
  const serving = await MultiTaskModel.create(backbone, stack.slots, { threads: 1 });
  const served = await serving.run(pixels, [2, config.channels, ...config.imageSize], [0, 0], stack);
  await serving.release();
  assertClose(served, inputs.data, 1e-5, 'served (stacked) vs LoRA inputs');
});

test('patch_embed: PEFT keys and Conv2d factor shapes, and an exact round trip', async () => {
  const adapter = randomAdapter(4);
  const dir = await mkdtemp(join(tmpdir(), 'melo-patch-'));
  try {
    await assert.rejects(
      saveAdapter(dir, adapter),
      /saving a patch_embed plug-in in PEFT's layout needs the backbone/,
    );
    await saveAdapter(dir, adapter, { backbone: config });
    const file = await readSafetensors(join(dir, 'adapter_model.safetensors'));
    const key = 'base_model.model.vit.embeddings.patch_embeddings.projection';
    const p = config.patchSize;
    // PEFT's Conv2d LoRA: lora_A is Conv2d(C, r, kernel p, stride p), lora_B a 1×1 Conv2d(r, D).
    assert.deepEqual(file.tensors.get(`${key}.lora_A.weight`)!.shape, [2, config.channels, p, p]);
    assert.deepEqual(file.tensors.get(`${key}.lora_B.weight`)!.shape, [config.hiddenSize, 2, 1, 1]);
    const json = JSON.parse(await readFile(join(dir, 'adapter_config.json'), 'utf8'));
    assert.deepEqual(json.target_modules, ['query', 'projection']);
    const loaded = await loadAdapter(dir);
    assert.deepEqual(loaded.lora.targets, ['query', 'patch_embed']);
    assert.deepEqual([...loaded.pairs.keys()].sort(), [...adapter.pairs.keys()].sort());
    for (const [slot, pair] of adapter.pairs) {
      const back = loaded.pairs.get(slot)!;
      assert.deepEqual(back.A.shape, pair.A.shape, `${slot} A shape`);
      assert.deepEqual(back.B.shape, pair.B.shape, `${slot} B shape`);
      assert.deepEqual(back.A.data, pair.A.data, `${slot} A`);
      assert.deepEqual(back.B.data, pair.B.data, `${slot} B`);
    }
    // Re-saved without the backbone (melo adapter convert): the Conv2d shapes come from the file read.
    const again = join(dir, 'again');
    await saveAdapter(again, loaded);
    const rewritten = await readSafetensors(join(again, 'adapter_model.safetensors'));
    assert.deepEqual([...rewritten.tensors.keys()].sort(), [...file.tensors.keys()].sort());
    for (const [name, tensor] of file.tensors) {
      assert.deepEqual(rewritten.tensors.get(name)!.shape, tensor.shape, `${name} shape`);
      assert.deepEqual(rewritten.tensors.get(name)!.data, tensor.data, `${name} values`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('patch_embed: a PEFT file whose factors do not have the Conv2d shapes is refused naming the tensor', async () => {
  const adapter = randomAdapter(6);
  const dir = await mkdtemp(join(tmpdir(), 'melo-patch-bad-'));
  try {
    await saveAdapter(dir, adapter, { backbone: config });
    const path = join(dir, 'adapter_model.safetensors');
    const file = await readSafetensors(path);
    const key = 'base_model.model.vit.embeddings.patch_embeddings.projection.lora_B.weight';
    const B = file.tensors.get(key)!;
    // [out, r, 1, 1] written as [out, 1, r, 1]: the same numbers, not a 1×1 convolution.
    file.tensors.set(key, { shape: [B.shape[0]!, 1, B.shape[1]!, 1], data: B.data });
    await writeSafetensors(path, file.tensors);
    await assert.rejects(loadAdapter(dir), (error: Error) => {
      assert.match(
        error.message,
        /lora_B\.weight has shape \[32,1,2,1\]; PEFT stores a Conv2d target's lora_B as \[out, r, 1, 1\]/,
      );
      return true;
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
