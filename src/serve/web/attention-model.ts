import type { Backbone } from '../../checkpoints/load.ts';
import { GraphBuilder, type Value } from '../../graph/builder.ts';
import { patchGrid, type ViTConfig } from '../../model/vit-config.ts';
import { AttentionOp } from '../../ops/attention.ts';
import type { Feed, Session } from '../../runtime/session.ts';
import type { AdapterStack } from '../engine/adapter-stack.ts';
import { buildMultiTaskGraph, MULTI_TASK_INPUTS } from '../engine/multi-task-graph.ts';
import { attentionRolloutRow, type BlockAttention, clsHeatmap } from './rollout.ts';

const ATTENTION_NODE = /^blocks\.(\d+)\/attention$/;

/**
 * The attention weights of every block, found by walking the built graph for each block's attention node
 * (ViTGraph names it `blocks.<layer>/attention`; its second output is the weights), in block order. The model code stays as it is: the same
 * graph serving uses, with these values marked as extra outputs.
 */
export function attentionValues(graph: GraphBuilder, depth: number): Value[] {
  const byLayer = new Map<number, Value>();
  for (const node of graph.nodes) {
    const match = node.op === AttentionOp ? ATTENTION_NODE.exec(node.name) : null;
    if (match) byLayer.set(Number(match[1]), node.outputs[1]!);
  }
  const layers = Array.from({ length: depth }, (_, layer) => byLayer.get(layer));
  if (byLayer.size !== depth || layers.some((value) => value === undefined))
    throw new Error(
      `explain: expected one attention node per block (0..${depth - 1}), found [${[...byLayer.keys()]}]`,
    );
  return layers as Value[];
}

export const attentionOutputName = (layer: number) => `attention.${layer}`;

/**
 * The serving graph for the stack's LoRA slots (the very model that answers /v1/predict, so the logits are
 * its logits in either backbone precision), with each block's attention as outputs: [batch, heads,
 * tokens, tokens], and [batch, heads, 1, tokens] for the last block where it runs for the CLS token only
 * (CLS pooling).
 */
export function buildExplainGraph(backbone: Backbone, stack: AdapterStack): GraphBuilder {
  const graph = new GraphBuilder('melo-explain');
  const { logits } = buildMultiTaskGraph(graph, backbone, stack.slots);
  graph.output(logits, 'logits');
  attentionValues(graph, backbone.config.depth).forEach((value, layer) => {
    graph.output(value, attentionOutputName(layer));
  });
  return graph;
}

/** A rollout row over [CLS, registers, patches] → [CLS, patches]: the heatmap covers the image only. */
function withoutRegisters(row: Float64Array, registers: number): Float64Array {
  if (registers === 0) return row;
  const out = new Float64Array(row.length - registers);
  out[0] = row[0]!;
  out.set(row.subarray(1 + registers), 1);
  return out;
}

/** What one explanation run gives: the task's logits and the CLS heatmap over the patch grid. */
export interface AttentionResult {
  readonly logits: number[];
  readonly grid: [number, number];
  /** gh × gw values in [0, 1], row-major. */
  readonly heatmap: number[];
}

/** What running an explanation graph needs to know of the backbone (not its weights). */
export interface ExplainShape {
  readonly config: ViTConfig;
  /** Model input [height, width]. */
  readonly inputSize: readonly [number, number];
}

/**
 * Runs a session of `buildExplainGraph` on one image (CHW) for row `row` of `stack`, and rolls the
 * attention out. `classes` is the task's own class count (the stack's heads may be padded wider).
 */
export async function runExplainGraph(
  session: Session,
  shape: ExplainShape,
  stack: AdapterStack,
  row: number,
  classes: number,
  pixels: Float32Array,
): Promise<AttentionResult> {
  const config = shape.config;
  const [height, width] = shape.inputSize;
  const grid = patchGrid(config, [height, width]);
  const feeds: Record<string, Feed> = {
    [MULTI_TASK_INPUTS.pixels]: { shape: [1, config.channels, height, width], data: pixels },
    [MULTI_TASK_INPUTS.taskIndex]: { shape: [1], data: BigInt64Array.of(BigInt(row)) },
  };
  for (const [name, tensor] of stack.feeds()) feeds[name] = tensor;
  const outputs = await session.run(feeds);
  // CLS, the register tokens (DINOv2 with registers), then the patches row by row.
  const registers = config.registerTokens;
  const tokens = 1 + registers + grid[0] * grid[1];
  // Under CLS pooling the last block ran for the CLS token only (as serving runs it): its attention is
  // [1, heads, 1, tokens], the CLS row, which is all the rollout needs; pooling over every token keeps it whole.
  const blocks: BlockAttention[] = Array.from({ length: config.depth }, (_, layer) => {
    const { shape, data } = outputs[attentionOutputName(layer)]!;
    return { heads: config.heads, tokens, queries: shape[2]!, data };
  });
  return {
    logits: Array.from(outputs.logits!.data.subarray(0, classes)),
    grid,
    heatmap: clsHeatmap(withoutRegisters(attentionRolloutRow(blocks, 0), registers), grid),
  };
}
