import assert from 'node:assert/strict';
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { resamplePositionEmbedding } from '../src/checkpoints/resample.ts';
import { readSafetensors } from '../src/checkpoints/safetensors.ts';
import { GraphBuilder } from '../src/graph/builder.ts';
import { BackboneClassifier } from '../src/model/inference.ts';
import { pixelInput, ViTGraph } from '../src/model/vit.ts';
import { WeightBinder } from '../src/model/weights.ts';
import { Session } from '../src/runtime/session.ts';
import { assertClose } from './helpers/graph.ts';

// References come from scripts/fixtures/make_vit_fixture.py: an independent plain-PyTorch ViT computed in
// float64 (test/fixtures/vit/README.md).
const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;
const reference = await readSafetensors(join(FIXTURES, 'reference.safetensors'));
const ref = (name: string) => reference.tensors.get(name)!;

for (const [layout, dir, logitsKey] of [
  ['hf', 'hf', 'logits_hf'],
  ['hf sharded', 'hf-sharded', 'logits_hf'],
  ['timm', 'timm', 'logits_timm'],
] as const) {
  test(`${layout} checkpoint: logits match the PyTorch reference within 1e-4`, async () => {
    const backbone = await loadBackbone(join(FIXTURES, dir));
    assert.equal(backbone.config.numClasses, 3);
    assert.deepEqual(backbone.labels, ['normal', 'benign', 'malignant']);
    const model = await BackboneClassifier.create(backbone, { threads: 1 });
    const input = ref('input');
    const { logits } = await model.run(input.data, 2);
    const diff = assertClose(logits!.data, ref(logitsKey).data, 1e-4, `${layout} logits`);
    assert.ok(diff < 1e-5, `expected float32-level agreement, got ${diff}`);
    await model.release();
  });
}

test('both layouts of the same weights give the same fingerprint', async () => {
  const [hf, timm, sharded, model] = await Promise.all(
    ['hf', 'timm', 'hf-sharded', 'hf-model'].map((dir) => loadBackbone(join(FIXTURES, dir))),
  );
  assert.equal(hf!.fingerprint, timm!.fingerprint);
  assert.equal(hf!.fingerprint, sharded!.fingerprint);
  assert.equal(hf!.fingerprint, model!.fingerprint, 'ViTModel (no head) has the same backbone');
  assert.equal(model!.config.numClasses, 0);
});

test('layer by layer, the HF graph matches the reference intermediates', async () => {
  const backbone = await loadBackbone(join(FIXTURES, 'hf'));
  const graph = new GraphBuilder('probe');
  const vit = new ViTGraph({ config: backbone.config, params: new WeightBinder(graph, backbone.weights) });
  const pixels = pixelInput(graph, backbone.config, 'batch', [32, 32]);
  const tokens = vit.forwardFeatures(pixels);
  // Name intermediate values as outputs: the embeddings and each block's output.
  const byName = new Map(
    graph.nodes.flatMap((node) => node.outputs.map((value) => [value.name, value] as const)),
  );
  const embeddings = [...byName.values()].filter((v) => v.name.startsWith('embeddings/add')).at(-1)!;
  const block0 = [...byName.values()].filter((v) => v.name.startsWith('blocks.0/add')).at(-1)!;
  graph.output(embeddings, 'embeddings');
  graph.output(block0, 'block0');
  graph.output(tokens, 'block1');
  const session = await Session.fromGraph(graph, { threads: 1 });
  const out = await session.run({ pixels: ref('input') });
  assertClose(out.embeddings!.data, ref('hf.embeddings').data, 1e-5, 'embeddings');
  assertClose(out.block0!.data, ref('hf.block0').data, 2e-5, 'block 0');
  assertClose(out.block1!.data, ref('hf.block1').data, 2e-5, 'block 1');
  await session.release();
});

test('position embeddings resample bicubically like PyTorch, and a 48-px input matches', async () => {
  const backbone = await loadBackbone(join(FIXTURES, 'hf'));
  const resampled = resamplePositionEmbedding(backbone.weights.get('pos_embed')!, [4, 4], [6, 6]);
  assertClose(resampled.data, ref('pos_embed_48').data, 1e-6, 'pos_embed 6×6');
  const model = await BackboneClassifier.create(backbone, { threads: 1, imageSize: [48, 48] });
  const { logits } = await model.run(ref('input_48').data, 1);
  assertClose(logits!.data, ref('logits_hf_48').data, 1e-4, 'logits at 48 px');
  await model.release();
});

test('checkpoint errors list missing and unexpected tensors and shape mismatches', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'melo-ckpt-'));
  try {
    await assert.rejects(loadBackbone(join(dir, 'nope')), /does not exist/);
    await assert.rejects(
      loadBackbone(dir),
      /config\.json: file is missing; expected config\.json \(Hugging Face vit, dinov2/,
    );
    await writeFile(join(dir, 'config.json'), '{"model_type": "bert"}');
    await assert.rejects(loadBackbone(dir), /config\.json is not a supported backbone/);
    await cp(join(FIXTURES, 'hf'), dir, { recursive: true });
    const config = JSON.parse(
      await (await import('node:fs/promises')).readFile(join(dir, 'config.json'), 'utf8'),
    );
    config.num_hidden_layers = 3;
    config.intermediate_size = 48;
    await writeFile(join(dir, 'config.json'), JSON.stringify(config));
    await assert.rejects(loadBackbone(dir), (error: Error) => {
      assert.match(error.message, /missing tensors: blocks\.2\.norm1\.weight/);
      assert.match(
        error.message,
        /shape mismatch: vit\.encoder\.layer\.0\.intermediate\.dense\.weight expected \[32, 48\] found \[32, 64\]/,
      );
      assert.equal(error.message.includes('\n'), false);
      return true;
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
