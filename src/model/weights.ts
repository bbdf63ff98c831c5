import { listSome, MeloError } from '../errors.ts';
import type { GraphBuilder, Value } from '../graph/builder.ts';
import type { HostTensor } from '../tensor.ts';
import { canonicalTensors, transposeMatrix } from './anatomy.ts';
import type { ViTConfig } from './vit-config.ts';

/**
 * melo's canonical weight names (declared in anatomy.ts). Linear weights are stored [in, out] so that the
 * forward is a plain MatMul and the backward reuses the same tensor through Gemm's transB (docs/engine.md).
 * Checkpoint converters map Hugging Face and timm layouts onto these names.
 */
export type ViTWeights = Map<string, HostTensor>;

/** Every canonical weight name of `config`'s backbone (and head, when it has one) with its shape. */
export function expectedWeightShapes(config: ViTConfig): Map<string, readonly number[]> {
  return new Map(canonicalTensors(config).map((tensor) => [tensor.name, tensor.shape]));
}

/** Checks names and shapes; the error lists every missing and unexpected name and each shape mismatch. */
export function validateWeights(
  config: ViTConfig,
  weights: ViTWeights,
  file: string,
  describe = (name: string) => name,
): void {
  const expected = expectedWeightShapes(config);
  const missing = [...expected.keys()].filter((name) => !weights.has(name));
  const unexpected = [...weights.keys()].filter((name) => !expected.has(name));
  const mismatched: string[] = [];
  for (const [name, shape] of expected) {
    const found = weights.get(name);
    if (found && found.shape.join(',') !== shape.join(',')) {
      mismatched.push(`${describe(name)} expected [${shape.join(', ')}] found [${found.shape.join(', ')}]`);
    }
  }
  const problems: string[] = [];
  if (missing.length > 0) problems.push(`missing tensors: ${listSome(missing.map(describe))}`);
  if (unexpected.length > 0) problems.push(`unexpected tensors: ${listSome(unexpected.map(describe))}`);
  if (mismatched.length > 0)
    problems.push(
      `shape mismatch: ${mismatched.slice(0, 5).join('; ')}${mismatched.length > 5 ? `; and ${mismatched.length - 5} more` : ''}`,
    );
  if (problems.length > 0) throw new MeloError('BAD_CHECKPOINT', problems.join('; '), { file });
}

/** Where the graph gets each named weight: frozen initializer, or graph input when it is trained. */
export interface ParameterSource {
  get(name: string): Value;
}

export class WeightBinder implements ParameterSource {
  private readonly bound = new Map<string, Value>();

  constructor(
    private readonly graph: GraphBuilder,
    private readonly weights: ViTWeights,
    /** Names fed at run time (trainable, or swapped per task) instead of stored in the model. */
    private readonly asInputs: ReadonlySet<string> = new Set(),
  ) {}

  get(name: string): Value {
    const existing = this.bound.get(name);
    if (existing) return existing;
    const tensor = this.weights.get(name);
    if (!tensor) throw new MeloError('BAD_CHECKPOINT', `weight '${name}' is missing`);
    const value = this.asInputs.has(name)
      ? this.graph.input(name, tensor.shape)
      : this.graph.initializer(name, tensor);
    this.bound.set(name, value);
    return value;
  }

  /** The bound graph inputs, in binding order, for callers that must feed them. */
  inputNames(): string[] {
    return [...this.bound.keys()].filter((name) => this.asInputs.has(name));
  }
}

/** Transposes a 2-D [rows, cols] row-major matrix (e.g. PyTorch's [out, in] to melo's [in, out]). */
export const transpose2d = transposeMatrix;
