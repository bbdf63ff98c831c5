import type { GraphBuilder, Value } from '../graph/builder.ts';
import type { Dim } from '../graph/types.ts';
import { attention } from '../ops/attention.ts';
import { add, gelu, mul, scale, sigmoid } from '../ops/elementwise.ts';
import { gemm, matmul } from '../ops/matmul.ts';
import { layerNorm } from '../ops/normalization.ts';
import { reduceMean } from '../ops/reduce.ts';
import { concat, expandBatch, reshape, slice, transpose } from '../ops/shape.ts';
import { type LoraSlot, type LoraTarget, targetProjection } from './anatomy.ts';
import { patchGrid, type ViTConfig } from './vit-config.ts';
import type { ParameterSource } from './weights.ts';

/**
 * Adds a low-rank delta to a projection's output, or returns null when that projection is untouched.
 * `input` is the projection's input [batch, tokens, in]; the result is added to x·W + b. The model knows
 * nothing of LoRA (PEFT's rule): the strategy (factors as graph inputs, gathered per row, none) is the
 * caller's.
 */
export type LinearDelta = (slot: LoraSlot, input: Value) => Value | null;

/**
 * x·W (+ b) for one projection whose canonical weight is `weight` ([in, out]) and bias `bias` (when it has
 * one): the seam where a projection's precision is chosen (the default binds the float weight, multiplies
 * and adds the bias; int8 adds it inside its product, model/quantize.ts).
 */
export type ProjectionProduct = (x: Value, weight: string, params: ParameterSource, bias?: string) => Value;

/** The float product: the weight bound as is, then the bias added. */
export const floatProduct: ProjectionProduct = (x, weight, params, bias) => {
  const y = matmul(x, params.get(weight));
  return bias ? add(y, params.get(bias)) : y;
};

export interface ViTGraphOptions {
  readonly config: ViTConfig;
  readonly params: ParameterSource;
  /** Input resolution of this graph; position embeddings must already be resampled to it. */
  readonly imageSize?: readonly [number, number];
  readonly delta?: LinearDelta;
  readonly project?: ProjectionProduct;
}

/** A ViT as a readable composition of small stages (timm: forward_features, pool, forward_head). */
export class ViTGraph {
  readonly config: ViTConfig;
  private readonly params: ParameterSource;
  private readonly delta: LinearDelta | undefined;
  private readonly project: ProjectionProduct;
  readonly imageSize: readonly [number, number];

  constructor(options: ViTGraphOptions) {
    this.config = options.config;
    this.params = options.params;
    this.delta = options.delta;
    this.project = options.project ?? floatProduct;
    this.imageSize = options.imageSize ?? options.config.imageSize;
  }

  /** pixels [batch, C, H, W] → token features [batch, 1 + registers + patches, D] after the last block. */
  forwardFeatures(pixels: Value): Value {
    return this.blocks(pixels, 'all');
  }

  /**
   * pixels → the feature vector a head reads (`pool(forwardFeatures(pixels))`). When pooling reads the
   * CLS token only, the last block runs for that token alone (its keys and values still come from every
   * token): exact, and it skips about 7% of a ViT-B/16's matrix products, forward and backward.
   */
  forwardPooled(pixels: Value): Value {
    return this.pool(this.blocks(pixels, this.config.pooling === 'cls' ? 'cls' : 'all'));
  }

  /**
   * tokens → features [batch, pooledFeatureSize]: the final LayerNorm on the tokens ('norm', per token, so
   * normalising only the pooled ones is equivalent) or on the pooled vector ('fc_norm', timm's MAE-style
   * heads and CLIP's `post_layernorm`); pooling (CLS, mean of the patch tokens without CLS and registers,
   * or CLS ++ mean); then the bias-free projection when there is one (CLIP `visual_projection`, open_clip
   * `head.proj`).
   */
  pool(tokens: Value): Value {
    const graph = tokens.graph;
    const { hiddenSize: d, layerNormEps: eps, pooling, finalNorm, projectionSize } = this.config;
    return graph.scope('pool', () => {
      const norm = (x: Value, name: string) =>
        layerNorm(x, this.params.get(`${name}.weight`), this.params.get(`${name}.bias`), eps);
      const tokenNorm = (x: Value) => (finalNorm === 'tokens' ? norm(x, 'norm') : x);
      const cls = () => reshape(tokenNorm(clsToken(tokens)), [0, d]);
      const mean = () => {
        const prefix = 1 + this.config.registerTokens;
        const patches = slice(tokens, [prefix], [tokens.dim(1) as number], [1]);
        return reduceMean(tokenNorm(patches), [1]);
      };
      let pooled = pooling === 'cls' ? cls() : pooling === 'mean' ? mean() : concat([cls(), mean()], 1);
      if (finalNorm === 'pooled') pooled = norm(pooled, 'fc_norm');
      if (projectionSize === 0) return pooled;
      return gemm(pooled, this.params.get('projection.weight'), { transB: true });
    });
  }

  /** features [batch, D] → logits [batch, classes] with the head named `prefix` (weight [classes, D]). */
  forwardHead(features: Value, prefix = 'head'): Value {
    return features.graph.scope(prefix, () =>
      add(
        gemm(features, this.params.get(`${prefix}.weight`), { transB: true }),
        this.params.get(`${prefix}.bias`),
      ),
    );
  }

  /** Embeddings, then every block; the last one's output covers all tokens or the CLS token only. */
  private blocks(pixels: Value, lastBlockOutputs: 'all' | 'cls'): Value {
    const graph = pixels.graph;
    const depth = this.config.depth;
    let x = graph.scope('embeddings', () => this.embed(pixels));
    for (let layer = 0; layer < depth; layer++) {
      const outputs = layer === depth - 1 ? lastBlockOutputs : 'all';
      x = graph.scope(`blocks.${layer}`, () => this.block(x, layer, outputs));
    }
    return x;
  }

  /**
   * Patch tokens, CLS, register tokens and positions, in the order the family's source library uses:
   * positions on CLS and patches, registers inserted after CLS (HF `dinov2_with_registers`), or positions
   * on the patches only, then CLS and registers prepended (timm `no_embed_class`); then the pre-norm.
   */
  private embed(pixels: Value): Value {
    const { channels, patchSize: p, hiddenSize: d, registerTokens } = this.config;
    const [gh, gw] = patchGrid(this.config, this.imageSize);
    // Patchify with Reshape/Transpose and one MatMul: the same math as a stride-p convolution, and its
    // gradient (for full fine-tuning) is an ordinary MatMul gradient.
    const grid = reshape(pixels, [0, channels, gh, p, gw, p]);
    const patches = reshape(transpose(grid, [0, 2, 4, 1, 3, 5]), [0, gh * gw, channels * p * p]);
    const tokens = this.linear(patches, undefined, 'patch_embed');
    const cls = expandBatch(this.params.get('cls_token'), pixels, [1, d]);
    const registers =
      registerTokens > 0 ? [expandBatch(this.params.get('reg_token'), pixels, [registerTokens, d])] : [];
    const position = this.params.get('pos_embed');
    let x: Value;
    if (this.config.positionEmbedding === 'patches') {
      x = concat([cls, ...registers, add(tokens, position)], 1);
    } else {
      x = add(concat([cls, tokens], 1), position);
      if (registers.length > 0) x = concat([clsToken(x), ...registers, slice(x, [1], [1 + gh * gw], [1])], 1);
    }
    if (!this.config.preNorm) return x;
    return layerNorm(
      x,
      this.params.get('norm_pre.weight'),
      this.params.get('norm_pre.bias'),
      this.config.layerNormEps,
    );
  }

  /**
   * One pre-norm transformer block. `outputs: 'cls'` computes its output for the CLS token only
   * ([batch, 1, D]): queries, residuals and the MLP on that row, keys and values on every token.
   */
  private block(x: Value, layer: number, outputs: 'all' | 'cls'): Value {
    const prefix = `blocks.${layer}`;
    const eps = this.config.layerNormEps;
    const normed1 = layerNorm(
      x,
      this.params.get(`${prefix}.norm1.weight`),
      this.params.get(`${prefix}.norm1.bias`),
      eps,
    );
    const residual = outputs === 'cls' ? clsToken(x) : x;
    const attended = add(residual, this.layerScale(this.attention(normed1, layer, outputs), `${prefix}.ls1`));
    const normed2 = layerNorm(
      attended,
      this.params.get(`${prefix}.norm2.weight`),
      this.params.get(`${prefix}.norm2.bias`),
      eps,
    );
    return add(attended, this.layerScale(this.mlp(normed2, layer), `${prefix}.ls2`));
  }

  /** DINOv2's per-channel γ on a residual branch (HF `layer_scale1/2.lambda1`, timm `ls1/ls2.gamma`). */
  private layerScale(branch: Value, name: string): Value {
    return this.config.layerScale ? mul(branch, this.params.get(name)) : branch;
  }

  private attention(x: Value, layer: number, queries: 'all' | 'cls'): Value {
    const { hiddenSize: d, heads } = this.config;
    const headDim = d / heads;
    const tokens = x.dim(1) as number;
    const queryTokens = queries === 'cls' ? 1 : tokens;
    const split = (projection: Value, rows: number) =>
      transpose(reshape(projection, [0, rows, heads, headDim]), [0, 2, 1, 3]);
    const queryInput = queries === 'cls' ? clsToken(x) : x;
    const q = split(this.linear(queryInput, layer, 'query'), queryTokens);
    const k = split(this.linear(x, layer, 'key'), tokens);
    const v = split(this.linear(x, layer, 'value'), tokens);
    const { context } = attention(q, k, v, headDim ** -0.5);
    return this.linear(reshape(transpose(context, [0, 2, 1, 3]), [0, queryTokens, d]), layer, 'output');
  }

  private mlp(x: Value, layer: number): Value {
    const h = this.linear(x, layer, 'fc1');
    // CLIP's quick GELU: x·σ(1.702·x).
    const hidden = this.config.activation === 'quick_gelu' ? mul(h, sigmoid(scale(h, 1.702))) : gelu(h);
    return this.linear(hidden, layer, 'fc2');
  }

  /**
   * x·W (+ b) of the projection `target` names in the anatomy (block `layer`, or a global one when
   * undefined), plus the LoRA delta when the caller's strategy adapts it.
   */
  private linear(x: Value, layer: number | undefined, target: LoraTarget): Value {
    const projection = targetProjection(this.config, target);
    const name = layer === undefined ? projection.name : `blocks.${layer}.${projection.name}`;
    const bias = projection.bias(this.config) ? `${name}.bias` : undefined;
    const y = this.project(x, `${name}.weight`, this.params, bias);
    const delta = this.delta?.({ layer, target }, x);
    return delta ? add(y, delta) : y;
  }
}

/** tokens [batch, T, D] → the CLS token [batch, 1, D]. */
function clsToken(tokens: Value): Value {
  return slice(tokens, [0], [1], [1]);
}

/** Declares the pixel input of a ViT graph: [batch, C, H, W]. */
export function pixelInput(
  graph: GraphBuilder,
  config: ViTConfig,
  batch: Dim,
  imageSize: readonly [number, number],
): Value {
  return graph.input('pixels', [batch, config.channels, imageSize[0], imageSize[1]]);
}
