import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { vitFlopsPerImage } from '../bench/lib/vit-flops.ts';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { GraphBuilder } from '../src/graph/builder.ts';
import { pixelInput, ViTGraph } from '../src/model/vit.ts';
import { WeightBinder } from '../src/model/weights.ts';
import { AttentionOp } from '../src/ops/attention.ts';

// The benches turn images/s into GFLOP/s with vitFlopsPerImage; here its two variants are checked against
// the products the graphs actually contain (2·M·N·K summed over every MatMul/Gemm and both products of
// each attention op of a one-image graph).
const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;
const backbone = await loadBackbone(join(FIXTURES, 'hf'));
const config = backbone.config;

function productFlops(graph: GraphBuilder): number {
  let flops = 0;
  const size = (shape: readonly (number | string)[]) => (shape as number[]).reduce((a, b) => a * b, 1);
  for (const node of graph.nodes) {
    const type = node.op.onnxType;
    if (node.op === AttentionOp) {
      // Two products: q·kᵀ into the weights (inner: the head dim), then weights·v (inner: the tokens).
      const [q, k] = node.inputs;
      const [context, weights] = node.outputs;
      flops += 2 * size(weights!.shape) * (q!.dim(-1) as number);
      flops += 2 * size(context!.shape) * (k!.dim(-2) as number);
      continue;
    }
    if (type !== 'MatMul' && type !== 'Gemm') continue;
    const output = node.outputs[0]!.shape as number[];
    const a = node.inputs[0]!.shape as number[];
    const transA = type === 'Gemm' && (node.attributes as { transA: number }).transA === 1;
    const inner = transA ? a[a.length - 2]! : a[a.length - 1]!;
    assert.ok(
      output.every((dim) => typeof dim === 'number'),
      `${node.name}: static shape`,
    );
    flops += 2 * output.reduce((product, dim) => product * dim, 1) * inner;
  }
  return flops;
}

for (const lastBlock of ['all', 'cls'] as const) {
  test(`vitFlopsPerImage(…, '${lastBlock}') counts the products of the ${lastBlock === 'cls' ? 'forwardPooled' : 'full'} graph`, () => {
    const graph = new GraphBuilder('flops');
    const vit = new ViTGraph({ config, params: new WeightBinder(graph, backbone.weights) });
    const pixels = pixelInput(graph, config, 1, config.imageSize);
    const pooled = lastBlock === 'cls' ? vit.forwardPooled(pixels) : vit.pool(vit.forwardFeatures(pixels));
    graph.output(vit.forwardHead(pooled), 'logits');
    assert.equal(vitFlopsPerImage(config, config.imageSize, lastBlock).total, productFlops(graph));
  });
}
