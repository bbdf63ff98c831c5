/**
 * Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", 2020): how much
 * each input token flows into each output token through every block, where a block's flow is its
 * head-averaged attention plus the identity of the residual connection, rows renormalised to sum to 1.
 */

/**
 * One block's attention weights: [heads, queries, tokens], row-major; each row is a softmax. `queries` is
 * `tokens` (every row) unless the block ran for its first rows only, as the last block of a serving graph
 * does for the CLS token (`queries` 1): only the last block may, and the row asked for must be among them.
 */
export interface BlockAttention {
  readonly heads: number;
  readonly tokens: number;
  readonly queries?: number;
  readonly data: Float32Array;
}

/**
 * Row `token` of the rollout R = Ã_L ⋯ Ã_1 (blocks in order, Ã = rownorm(mean_heads(A) + I)): how much
 * each input token flows into that token's output. Computed as a row vector times each Ã from the last
 * block down, O(L·T²) instead of the O(L·T³) of forming R.
 */
export function attentionRolloutRow(blocks: readonly BlockAttention[], token = 0): Float64Array {
  if (blocks.length === 0) throw new RangeError('attention rollout needs at least one block');
  const tokens = blocks[0]!.tokens;
  if (!(Number.isInteger(token) && token >= 0 && token < tokens))
    throw new RangeError(`token ${token} is outside 0..${tokens - 1}`);
  blocks.forEach((block, index) => {
    const queries = block.queries ?? tokens;
    const last = index === blocks.length - 1;
    if (
      block.tokens !== tokens ||
      block.data.length !== block.heads * queries * tokens ||
      (queries !== tokens && !(last && token < queries))
    )
      throw new RangeError(
        `attention of block ${index} is not [${block.heads}, ${last ? `≥ ${token + 1}` : tokens}, ${tokens}] (${block.data.length} values for ${queries} rows)`,
      );
  });
  let row = new Float64Array(tokens);
  row[token] = 1;
  for (let index = blocks.length - 1; index >= 0; index--) {
    const flow = residualFlow(blocks[index]!);
    const next = new Float64Array(tokens);
    for (let k = 0; k < tokens; k++) {
      const weight = row[k]!;
      if (weight === 0) continue;
      for (let j = 0; j < tokens; j++) next[j]! += weight * flow[k * tokens + j]!;
    }
    row = next;
  }
  return row;
}

/** mean over heads, plus I, each row divided by its sum: [queries, tokens] (rows past `queries` stay 0). */
function residualFlow(block: BlockAttention): Float64Array {
  const { heads, tokens, data } = block;
  const queries = block.queries ?? tokens;
  const size = queries * tokens;
  const flow = new Float64Array(tokens * tokens);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < size; i++) flow[i]! += data[h * size + i]!;
  }
  for (let i = 0; i < size; i++) flow[i]! /= heads;
  for (let row = 0; row < queries; row++) {
    flow[row * tokens + row]! += 1;
    let sum = 0;
    for (let col = 0; col < tokens; col++) sum += flow[row * tokens + col]!;
    for (let col = 0; col < tokens; col++) flow[row * tokens + col]! /= sum;
  }
  return flow;
}

/**
 * The CLS token's rollout row over the patch tokens (token 0 is CLS, then patches row by row), as a
 * [gh × gw] map scaled to [0, 1] by its minimum and maximum; a flat map is all zeros (nothing stands out).
 */
export function clsHeatmap(clsRow: Float64Array, grid: readonly [number, number]): number[] {
  const [gh, gw] = grid;
  const tokens = 1 + gh * gw;
  if (clsRow.length !== tokens)
    throw new RangeError(`rollout row of ${clsRow.length} tokens does not fit 1 + ${gh}×${gw} tokens`);
  const row = Array.from(clsRow.subarray(1, tokens));
  const min = Math.min(...row);
  const range = Math.max(...row) - min;
  return row.map((value) => (range > 0 ? (value - min) / range : 0));
}
