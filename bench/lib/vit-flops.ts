import { patchGrid, type ViTConfig } from '../../src/model/vit-config.ts';

/**
 * Matrix-product FLOPs of one ViT forward per image, counting 2·M·N·K for every product (a multiply and an
 * add per term) and nothing else: LayerNorm, softmax, GELU and the residual adds are left out, as in the
 * usual "FLOPs = 2 × MACs" convention. With T = 1 + patches tokens, D hidden, F MLP width, P = C·p² pixels
 * per patch:
 *   patch embedding        2 · patches · P · D
 *   per block   q, k, v, proj   4 · 2·T·D·D
 *               scores QKᵀ      2·T·T·D   (heads · 2·T·T·(D/heads))
 *               context A·V     2·T·T·D
 *               MLP fc1, fc2    2 · 2·T·D·F
 *   head                   2 · D · classes (on the pooled CLS token only)
 * ViT-B/16 at 224 px: ≈ 35.1 GFLOP per image (`lastBlock: 'all'`, what PyTorch/timm computes).
 * With `lastBlock: 'cls'` (melo's ViTGraph.forwardPooled) the last block's queries, output projection and
 * MLP run on the CLS row only (keys and values still on all T tokens): ≈ 32.7 GFLOP per image.
 */
export interface ViTFlops {
  readonly patchEmbed: number;
  readonly attentionProjections: number;
  readonly attentionScores: number;
  readonly attentionContext: number;
  readonly mlp: number;
  readonly head: number;
  readonly total: number;
}

export function vitFlopsPerImage(
  config: ViTConfig,
  imageSize: readonly [number, number] = config.imageSize,
  lastBlock: 'all' | 'cls' = 'all',
): ViTFlops {
  const [gh, gw] = patchGrid(config, imageSize);
  const patches = gh * gw;
  const tokens = 1 + patches;
  const d = config.hiddenSize;
  const pixelsPerPatch = config.channels * config.patchSize * config.patchSize;
  const depth = config.depth;
  const patchEmbed = 2 * patches * pixelsPerPatch * d;
  // Rows that get queries, the output projection and the MLP in the last block; keys and values always
  // cover every token.
  const lastRows = lastBlock === 'cls' ? 1 : tokens;
  const fullBlocks = depth - 1;
  const attentionProjections =
    fullBlocks * 4 * 2 * tokens * d * d + 2 * 2 * tokens * d * d + 2 * 2 * lastRows * d * d;
  const attentionScores = fullBlocks * 2 * tokens * tokens * d + 2 * lastRows * tokens * d;
  const attentionContext = attentionScores;
  const mlp = (fullBlocks * tokens + lastRows) * 2 * 2 * d * config.mlpSize;
  const head = 2 * d * config.numClasses;
  return {
    patchEmbed,
    attentionProjections,
    attentionScores,
    attentionContext,
    mlp,
    head,
    total: patchEmbed + attentionProjections + attentionScores + attentionContext + mlp + head,
  };
}

/** Tokens per image (CLS + patches): the row count of a ViT's token-wise matmuls. */
export function vitTokens(
  config: ViTConfig,
  imageSize: readonly [number, number] = config.imageSize,
): number {
  const [gh, gw] = patchGrid(config, imageSize);
  return 1 + gh * gw;
}
