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

// One SGD step of LoRA (rank 4, alpha 8, query + value of both blocks) and a new head, against the
// PyTorch reference in scripts/fixtures/make_family_fixtures.py: on HF DINOv2 with registers (adapter
// read from the PEFT files PEFT would write for Dinov2WithRegistersForImageClassification) and on an
// MAE-style timm ViT whose fused attn.qkv gets LoRA on its query and value slices.
const FAMILIES = new URL('./fixtures/families/', import.meta.url).pathname;

function fixtureName(graphName: string): string {
  if (graphName === TASK_HEAD.weight) return 'classifier.weight';
  if (graphName === TASK_HEAD.bias) return 'classifier.bias';
  const [, layer, target, factor] = /^lora\.(\d+)\.(\w+)\.(A|B)$/.exec(graphName)!;
  return `layer${layer}.${target}.lora_${factor}`;
}

for (const name of ['dinov2-reg-hf-classifier', 'mae-timm'] as const) {
  test(`${name}: one SGD step of LoRA + head matches PyTorch within 1e-4`, async () => {
    const reference = await readSafetensors(join(FAMILIES, 'references', `${name}.safetensors`));
    const ref = (key: string) => reference.tensors.get(key)!;
    const backbone = await loadBackbone(join(FAMILIES, name));
    const lora = { rank: 4, alpha: 8, dropout: 0, targets: ['query', 'value'] as const };
    const trainStep = await TrainStep.create({
      backbone,
      method: 'lora',
      lora: { ...lora, targets: [...lora.targets] },
      numClasses: 3,
      batchSize: 2,
      loss: 'softmax',
      threads: 1,
    });
    let parameters: Map<string, HostTensor>;
    if (name === 'dinov2-reg-hf-classifier') {
      const adapter = await loadAdapter(join(FAMILIES, name, 'lora_adapter'));
      assert.deepEqual([adapter.lora.rank, adapter.lora.alpha], [4, 8]);
      assert.deepEqual([...adapter.pairs.keys()].sort(), ['0.query', '0.value', '1.query', '1.value']);
      parameters = adapterFeeds(adapter);
    } else {
      parameters = new Map(trainStep.trainable.map((input) => [input, ref(`init.${fixtureName(input)}`)]));
    }
    assert.deepEqual([...trainStep.trainable].sort(), [...parameters.keys()].sort());
    for (const [input, value] of parameters)
      assertClose(value.data, ref(`init.${fixtureName(input)}`).data, 0, `initial ${input}`);
    const targets = Float32Array.from([0, 0, 1, 1, 0, 0]); // labels [2, 0]
    const result = await trainStep.run(
      { pixels: ref('pixels').data, targets, sampleWeights: Float32Array.from([0.5, 0.5]) },
      parameters,
    );
    assert.ok(Math.abs(result.loss - ref('lora.loss').data[0]!) < 1e-5, `loss ${result.loss}`);
    for (const [input, value] of parameters) {
      const gradient = result.gradients.get(input)!;
      assertClose(gradient.data, ref(`grad.${fixtureName(input)}`).data, 1e-5, `grad ${input}`);
      const after = Float32Array.from(value.data, (v, i) => v - 0.1 * gradient.data[i]!);
      assertClose(after, ref(`after.${fixtureName(input)}`).data, 1e-4, `after ${input}`);
    }
    await trainStep.release();
  });
}
