import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { readSafetensors } from '../src/checkpoints/safetensors.ts';
import { loadAdapter } from '../src/io/peft.ts';
import { adapterFeeds, TASK_HEAD } from '../src/model/task-graph.ts';
import type { HostTensor } from '../src/tensor.ts';
import { TrainStep } from '../src/train/train-step.ts';
import { assertClose } from './helpers/graph.ts';

// One SGD step from the PEFT adapter in test/fixtures/vit/lora_adapter on the reference batch, against
// the plain-PyTorch reference (scripts/fixtures/make_vit_fixture.py): rank 2, alpha 4, q and v, lr 0.1.
const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;
const step = await readSafetensors(join(FIXTURES, 'lora_step.safetensors'));
const reference = await readSafetensors(join(FIXTURES, 'reference.safetensors'));
const ref = (name: string) => step.tensors.get(name)!;

function fixtureName(graphName: string): string {
  if (graphName === TASK_HEAD.weight) return 'classifier.weight';
  if (graphName === TASK_HEAD.bias) return 'classifier.bias';
  const [, layer, target, factor] = /^lora\.(\d+)\.(\w+)\.(A|B)$/.exec(graphName)!;
  return `layer${layer}.${target}.lora_${factor}`;
}

for (const [layout, dir, suffix] of [
  ['hf', 'hf', ''],
  ['timm', 'timm', '_timm'],
] as const) {
  test(`${layout}: one SGD step of LoRA + head matches PyTorch within 1e-4`, async () => {
    const backbone = await loadBackbone(join(FIXTURES, dir));
    const adapter = await loadAdapter(join(FIXTURES, 'lora_adapter'));
    assert.equal(adapter.lora.rank, 2);
    assert.equal(adapter.lora.alpha, 4);
    const trainStep = await TrainStep.create({
      backbone,
      method: 'lora',
      lora: adapter.lora,
      numClasses: 3,
      batchSize: 2,
      loss: 'softmax',
      threads: 1,
    });
    const parameters = adapterFeeds(adapter);
    assert.deepEqual([...trainStep.trainable].sort(), [...parameters.keys()].sort());
    const targets = Float32Array.from([0, 0, 1, 1, 0, 0]); // labels [2, 0]
    const result = await trainStep.run(
      { pixels: reference.tensors.get('input')!.data, targets, sampleWeights: Float32Array.from([0.5, 0.5]) },
      parameters,
    );
    assert.ok(Math.abs(result.loss - ref(`lora.loss${suffix}`).data[0]!) < 1e-5, `loss ${result.loss}`);
    for (const [name, value] of parameters) {
      const gradient = result.gradients.get(name)!;
      assertClose(gradient.data, ref(`grad${suffix}.${fixtureName(name)}`).data, 1e-5, `grad ${name}`);
      const after = Float32Array.from(value.data, (v, i) => v - 0.1 * gradient.data[i]!);
      assertClose(after, ref(`after${suffix}.${fixtureName(name)}`).data, 1e-4, `after ${name}`);
    }
    await trainStep.release();
  });
}

test('full fine-tuning: gradients of every backbone weight match PyTorch', async () => {
  const backbone = await loadBackbone(join(FIXTURES, 'hf'));
  const trainStep = await TrainStep.create({
    backbone,
    method: 'full',
    numClasses: 3,
    batchSize: 2,
    loss: 'softmax',
    threads: 1,
  });
  const parameters = new Map<string, HostTensor>();
  for (const [name, tensor] of backbone.weights) if (!name.startsWith('head.')) parameters.set(name, tensor);
  // The base classifier: every head in melo is [classes, D], the task head included.
  parameters.set(TASK_HEAD.weight, backbone.weights.get('head.weight')!);
  parameters.set(TASK_HEAD.bias, backbone.weights.get('head.bias')!);
  assert.equal(trainStep.trainable.length, parameters.size);
  const result = await trainStep.run(
    {
      pixels: reference.tensors.get('input')!.data,
      targets: Float32Array.from([0, 0, 1, 1, 0, 0]),
      sampleWeights: Float32Array.from([0.5, 0.5]),
    },
    parameters,
  );
  assert.ok(Math.abs(result.loss - ref('full.loss').data[0]!) < 1e-5);
  // Reference gradient names are HF keys with [out, in] weights; compare through the same conversion.
  const { convertHfViT } = await import('../src/checkpoints/sources/hf-vit.ts');
  const referenceGrads = new Map<string, HostTensor>();
  for (const [key, tensor] of step.tensors)
    if (key.startsWith('grad_full.')) referenceGrads.set(key.slice('grad_full.'.length), tensor);
  const converted = convertHfViT(referenceGrads, backbone.config).weights;
  let checked = 0;
  for (const [name] of parameters) {
    const expected =
      name === TASK_HEAD.weight
        ? referenceGrads.get('classifier.weight')!
        : name === TASK_HEAD.bias
          ? referenceGrads.get('classifier.bias')!
          : converted.get(name)!;
    assertClose(result.gradients.get(name)!.data, expected.data, 1e-5, `grad ${name}`);
    checked++;
  }
  assert.equal(checked, 40);
  await trainStep.release();
});
