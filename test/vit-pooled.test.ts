import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { buildBackward } from '../src/graph/backward.ts';
import { GraphBuilder, type Value } from '../src/graph/builder.ts';
import { loraBranch } from '../src/model/lora.ts';
import { LINEAR_TARGETS, type LoraConfig } from '../src/model/lora-config.ts';
import { pixelInput, ViTGraph } from '../src/model/vit.ts';
import { WeightBinder } from '../src/model/weights.ts';
import { mul } from '../src/ops/elementwise.ts';
import { reduceSum } from '../src/ops/reduce.ts';
import { Session } from '../src/runtime/session.ts';
import type { HostTensor } from '../src/tensor.ts';
import { Random } from '../src/util/random.ts';
import { assertClose } from './helpers/graph.ts';

// forwardPooled runs the last block for the CLS token only. It must give the pooled features of the full
// forward and, through autodiff, the same gradients for LoRA on every target (fc1/fc2/output/query then
// see one row per image in the last block, key/value all rows).
const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;
const backbone = await loadBackbone(join(FIXTURES, 'hf'));
const config = backbone.config;
const LORA: LoraConfig = { rank: 2, alpha: 4, dropout: 0, targets: LINEAR_TARGETS };
const BATCH = 3;

function randomTensor(shape: number[], random: Random, scale: number): HostTensor {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < data.length; i++) data[i] = random.uniform(-scale, scale);
  return { shape, data };
}

/** Builds and runs one graph; LoRA factors missing from `feeds` are drawn from `random` (both non-zero, so
 * every low-rank path changes the output) and kept there for the next graph. */
async function pooledAndGradients(
  mode: 'full forward' | 'pooled',
  feeds: Map<string, HostTensor>,
  random: Random,
): Promise<{ features: HostTensor; gradients: Map<string, HostTensor>; graph: GraphBuilder }> {
  const graph = new GraphBuilder(mode);
  const parameters = new Map<string, Value>();
  const declare = (name: string, shape: readonly number[]) => {
    if (!feeds.has(name)) feeds.set(name, randomTensor([...shape], random, 0.3));
    const value = parameters.get(name) ?? graph.input(name, shape);
    parameters.set(name, value);
    return value;
  };
  const branch = loraBranch(config, LORA, declare);
  const vit = new ViTGraph({
    config,
    params: new WeightBinder(graph, backbone.weights),
    delta: branch.delta,
  });
  const pixels = pixelInput(graph, config, BATCH, config.imageSize);
  const features = mode === 'pooled' ? vit.forwardPooled(pixels) : vit.pool(vit.forwardFeatures(pixels));
  // A loss that weighs every feature differently, so no gradient entry can cancel out.
  const loss = reduceSum(mul(features, graph.input('probe', [BATCH, config.hiddenSize])), [0, 1]);
  const gradients = buildBackward(graph, loss, [...parameters.values()]);
  graph.output(features, 'features');
  for (const [name, value] of parameters) graph.output(gradients.get(value)!, `${name}_grad`);
  const session = await Session.fromGraph(graph, { threads: 1 });
  const out = await session.run(Object.fromEntries(feeds));
  await session.release();
  return {
    features: out.features!,
    gradients: new Map([...parameters.keys()].map((name) => [name, out[`${name}_grad`]!])),
    graph,
  };
}

test('forwardPooled gives the full forward’s pooled features and LoRA gradients on every target', async () => {
  const random = new Random(11);
  const feeds = new Map<string, HostTensor>();
  feeds.set('pixels', randomTensor([BATCH, config.channels, ...config.imageSize], random, 1));
  feeds.set('probe', randomTensor([BATCH, config.hiddenSize], random, 1));
  const full = await pooledAndGradients('full forward', feeds, random);
  const pooled = await pooledAndGradients('pooled', feeds, random);
  assertClose(pooled.features.data, full.features.data, 2e-6, 'pooled features');
  // Six targets in every block, plus the patch embedding once.
  assert.equal(full.gradients.size, (config.depth * (LINEAR_TARGETS.length - 1) + 1) * 2);
  for (const [name, expected] of full.gradients) {
    const actual = pooled.gradients.get(name)!;
    const largest = expected.data.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    assert.ok(largest > 1e-4, `${name}: the reference gradient is not trivially zero (${largest})`);
    assertClose(actual.data, expected.data, 1e-5 * Math.max(1, largest), `${name} gradient`);
  }

  // The saving is real: no tensor of the last block has a row per token in its MLP.
  const last = `blocks.${config.depth - 1}/`;
  const tokens = 1 + (config.imageSize[0] / config.patchSize) * (config.imageSize[1] / config.patchSize);
  const mlpValues = (graph: GraphBuilder) =>
    graph.nodes
      .filter((node) => node.name.startsWith(last))
      .flatMap((node) => node.outputs)
      .filter((value) => value.shape.at(-1) === config.mlpSize);
  const perToken = (graph: GraphBuilder) =>
    mlpValues(graph).filter((value) => value.shape.includes(tokens) || value.shape[0] === BATCH * tokens);
  assert.ok(perToken(full.graph).length > 0, 'the full forward has per-token MLP tensors in the last block');
  assert.ok(mlpValues(pooled.graph).length > 0);
  assert.deepEqual(
    perToken(pooled.graph).map((value) => value.name),
    [],
  );
});
