import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import ort from 'onnxruntime-node';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { readSafetensorsHeader } from '../src/checkpoints/safetensors.ts';
import { buildOnnxExport } from '../src/io/onnx-export.ts';
import { loadAdapter, saveAdapter } from '../src/io/peft.ts';
import { loadTasks, predictTasks, preparePixels } from '../src/predict.ts';
import { Session } from '../src/runtime/session.ts';
import { AdapterStack, stackedWeightsOf } from '../src/serve/engine/adapter-stack.ts';
import type { BatchRow } from '../src/serve/engine/engine.ts';
import { ServingEngine } from '../src/serve/engine/engine.ts';
import { AdapterRegistry } from '../src/serve/engine/registry.ts';
import { buildExplainGraph, runExplainGraph } from '../src/serve/web/attention-model.ts';
import { assertClose } from './helpers/graph.ts';
import { makeAdapter } from './serve-fixtures.ts';

// Every family serves and exports as the plain ViT does: adapters saved with the keys PEFT gives that
// model, read back exactly, served in one mixed-task batch equal to `melo predict --adapter` (1e-5), and
// exported to ONNX with LoRA merged, equal again (1e-5); explanations run on each.
const FAMILIES = new URL('./fixtures/families/', import.meta.url).pathname;
const images = ['a', 'b'].map((tag) => join(FAMILIES, 'images', `s16-${tag}.png`));
const scratch = await mkdtemp(join(tmpdir(), 'melo-family-tasks-'));
after(() => rm(scratch, { recursive: true, force: true }));

const CASES = [
  ['dinov2-hf-classifier', 'base_model.model.dinov2.encoder.layer.0.attention.attention.query.lora_A.weight'],
  [
    'dinov2-reg4-timm',
    'base_model.model.dinov2_with_registers.encoder.layer.0.attention.attention.query.lora_A.weight',
  ],
  ['mae-timm', 'base_model.model.vit.encoder.layer.0.attention.attention.query.lora_A.weight'],
  ['clip-vision-hf', 'base_model.model.vision_model.encoder.layers.0.self_attn.q_proj.lora_A.weight'],
  ['openclip-timm', 'base_model.model.vit.encoder.layer.0.attention.attention.query.lora_A.weight'],
] as const;

for (const [name, firstKey] of CASES) {
  test(`${name}: PEFT keys, exact round trip, mixed-task serving and ONNX export agree with predict`, async () => {
    const backbone = await loadBackbone(join(FAMILIES, name));
    const root = join(scratch, name);
    const adapters = [
      makeAdapter(backbone, { task: 'first', labels: ['a', 'b', 'c'], rank: 2, alpha: 4, seed: 1 }),
      makeAdapter(backbone, {
        task: 'second',
        labels: ['x', 'y'],
        rank: 4,
        targets: ['query', 'value', 'fc1'],
        seed: 2,
      }),
    ];
    const dirs: string[] = [];
    for (const adapter of adapters) {
      const dir = join(root, adapter.metadata.task);
      await saveAdapter(dir, adapter, { backbone: backbone.config, layout: backbone.layout });
      dirs.push(dir);
    }
    const header = await readSafetensorsHeader(join(dirs[0]!, 'adapter_model.safetensors'));
    assert.ok(header.tensors.has(firstKey), [...header.tensors.keys()].join(', '));
    const config = JSON.parse(await readFile(join(dirs[0]!, 'adapter_config.json'), 'utf8'));
    const fused = backbone.layout === 'timm' || backbone.layout === 'open_clip';
    assert.equal(typeof config.melo.peftNote === 'string', fused, 'fused-qkv note in the metadata');
    if (fused) assert.match(config.melo.peftNote, /PEFT cannot express slices of a fused module/);

    const tasks = await loadTasks(backbone, dirs);
    const reread = await loadAdapter(dirs[0]!);
    assert.equal(reread.family, backbone.config.family);
    assert.equal(reread.peftNote, config.melo.peftNote, 'the note reads back (and is re-saved with it)');
    tasks.forEach((task, i) => {
      for (const [key, pair] of adapters[i]!.pairs) {
        assert.deepEqual(task.adapter.pairs.get(key)!.A.data, pair.A.data, `${key} A`);
        assert.deepEqual(task.adapter.pairs.get(key)!.B.data, pair.B.data, `${key} B`);
      }
    });
    const predictions = await predictTasks(backbone, tasks, images, { threads: 1 });
    const expected = (image: number, task: string) =>
      predictions.find((p) => p.image === images[image] && p.task === task)!.logits;

    const pixels = await preparePixels(backbone, images);
    const perImage = pixels.length / images.length;
    const row = (i: number) => pixels.slice(i * perImage, (i + 1) * perImage);
    const registry = await AdapterRegistry.open({ backbone, dir: root, watch: false, rescanMs: 0 });
    const engine = await ServingEngine.create(backbone, registry, { threads: 1 });
    try {
      const order: [string, number][] = [
        ['second', 0],
        ['first', 1],
        ['first', 0],
        ['second', 1],
      ];
      const rows: BatchRow[] = order.map(([task, image]) => ({ task, pixels: row(image) }));
      const outcomes = await engine.run(rows);
      order.forEach(([task, image], i) => {
        const outcome = outcomes[i]!;
        assert.ok(outcome.ok, outcome.ok ? '' : outcome.error.message);
        assertClose(outcome.prediction.logits, expected(image, task), 1e-5, `${task} image ${image}`);
      });
    } finally {
      await engine.close();
      await registry.close();
    }

    // Explanations: the attention graph's logits are the task's; the heatmap covers the patches only
    // (registers dropped from the rollout row).
    const stack = AdapterStack.build(backbone.config, [
      { name: 'first', weights: stackedWeightsOf(tasks[0]!.adapter) },
    ]);
    const explain = await Session.fromGraph(buildExplainGraph(backbone, stack), { threads: 1 });
    try {
      const explained = await runExplainGraph(
        explain,
        { config: backbone.config, inputSize: backbone.preprocess.inputSize },
        stack,
        0,
        3,
        row(1),
      );
      assertClose(explained.logits, expected(1, 'first'), 1e-5, 'explained logits');
      assert.equal(explained.heatmap.length, 16);
      assert.ok(explained.heatmap.every((v) => v >= 0 && v <= 1));
    } finally {
      await explain.release();
    }

    const exported = buildOnnxExport(backbone, { task: { adapter: tasks[0]!.adapter } });
    const session = await ort.InferenceSession.create(exported.bytes);
    try {
      const [h, w] = backbone.preprocess.inputSize;
      const out = await session.run({ pixel_values: new ort.Tensor('float32', pixels, [2, 3, h, w]) });
      const logits = out.logits!.data as Float32Array;
      assertClose(
        logits,
        Float32Array.from([...expected(0, 'first'), ...expected(1, 'first')]),
        1e-5,
        'onnx',
      );
    } finally {
      await session.release();
    }
  });
}
