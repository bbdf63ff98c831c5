/**
 * Optimisers for melo's trainer over the trainable tensors (150k values for LoRA, up to 86M for full ViT-B
 * fine-tuning). Parameters are updated in place; moment buffers are float32 like PyTorch's, so a saved state
 * restores bitwise and a resumed run continues exactly as an uninterrupted one.
 *
 * The per-element arithmetic runs in an {@link UpdateKernel}: {@link inThreadKernel}, the reference loop
 * below, or the WebAssembly kernel on worker threads (src/train/update-kernel.ts), which computes the same
 * float64 expressions in the same order and so gives bit-identical results, several times faster.
 *
 * Differences from torch.optim worth knowing:
 * - the step counter is one per optimiser, not one per parameter: every step must carry a gradient for every
 *   parameter (torch skips parameters whose grad is None, which would shift their bias correction);
 * - SGD's weight decay is decoupled (p ← p·(1 − lr·wd) before the update, as in AdamW), not torch.optim.SGD's
 *   L2 term added to the gradient: with momentum the two differ, and decoupled decay keeps the decay
 *   strength independent of the gradient scale and of the momentum buffer.
 */
import { MeloError } from '../errors.ts';
import type { HostTensor } from '../tensor.ts';

export interface AdamWHyper {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
}

export interface SgdHyper {
  readonly momentum: number;
  readonly weightDecay: number;
}

/**
 * Everything needed to resume: the number of updates done, the hyper-parameters (checked on restore) and the
 * buffers, keyed `exp_avg.<param>` / `exp_avg_sq.<param>` (AdamW) or `momentum.<param>` (SGD with momentum).
 * Buffers appear after the first step. The no-decay rule is code, not state: a resumed run must use the same.
 */
export type OptimizerState =
  | {
      readonly kind: 'adamw';
      readonly step: number;
      readonly hyper: AdamWHyper;
      readonly tensors: Map<string, HostTensor>;
    }
  | {
      readonly kind: 'sgd';
      readonly step: number;
      readonly hyper: SgdHyper;
      readonly tensors: Map<string, HostTensor>;
    };

export interface Optimizer {
  readonly kind: OptimizerState['kind'];
  /** Updates done so far (what the learning-rate schedule calls the step of the next update). */
  readonly stepCount: number;
  /**
   * One update of every parameter in place. `grads` must hold exactly the keys of `params`, same sizes.
   * Bad arguments throw at once; the update is done when the promise resolves (await it before the next
   * step or before reading the parameters).
   */
  step(params: Map<string, HostTensor>, grads: Map<string, HostTensor>, lr: number): Promise<void>;
  /** A copy of the state (safe to write out while training goes on). */
  state(): OptimizerState;
  /**
   * Replaces the state with a copy of `state`; throws if it was saved by another optimiser or with other
   * hyper-parameters (`file`, where the state came from, is named in the error).
   */
  loadState(state: OptimizerState, file?: string): void;
  /** Stops the kernel's worker threads, if it has any. */
  close(): Promise<void>;
}

/** One parameter's update: its values, its gradient, its buffers (in kind order) and its decay factor. */
export interface UpdateJob {
  readonly name: string;
  readonly param: Float32Array;
  readonly grad: Float32Array;
  readonly buffers: readonly Float32Array[];
  /** 1 − lr·weightDecay, or 1 for parameters without decay. */
  readonly decay: number;
}

/** AdamW's per-step numbers, computed once per step in float64 as torch does. */
export interface AdamWScalars {
  readonly beta1: number;
  readonly beta2: number;
  /** 1 − β1 and 1 − β2. */
  readonly keep1: number;
  readonly keep2: number;
  /** lr / (1 − β1^t). */
  readonly stepSize: number;
  /** 1 / √(1 − β2^t). */
  readonly inverseCorrection2Sqrt: number;
  readonly eps: number;
}

/** Where the per-element update runs. Buffers come from the kernel so that it can place them. */
export interface UpdateKernel {
  /** Zeroed float32 storage for buffer `kind` of parameter `name`. */
  allocate(name: string, kind: string, length: number): Float32Array;
  adamw(jobs: readonly UpdateJob[], scalars: AdamWScalars): Promise<void>;
  /** With momentum > 0 each job has one buffer, the momentum buffer. */
  sgd(jobs: readonly UpdateJob[], momentum: number, lr: number): Promise<void>;
  close(): Promise<void>;
}

/** The reference: plain loops on the calling thread. */
export const inThreadKernel: UpdateKernel = {
  allocate: (_name, _kind, length) => new Float32Array(length),
  adamw(jobs, scalars) {
    for (const job of jobs) adamwLoop(job, scalars);
    return Promise.resolve();
  },
  sgd(jobs, momentum, lr) {
    for (const job of jobs) sgdLoop(job, momentum, lr);
    return Promise.resolve();
  },
  close: () => Promise.resolve(),
};

function adamwLoop(job: UpdateJob, scalars: AdamWScalars): void {
  const { param: p, grad: g, decay } = job;
  const [expAvg, expAvgSq] = job.buffers as [Float32Array, Float32Array];
  const { beta1, beta2, keep1, keep2, stepSize, inverseCorrection2Sqrt, eps } = scalars;
  const count = p.length;
  for (let i = 0; i < count; i++) {
    const gi = g[i]!;
    // Rounded to float32 before use, as torch stores them, so the update sees what a restore will see.
    const m = Math.fround(beta1 * expAvg[i]! + keep1 * gi);
    const v = Math.fround(beta2 * expAvgSq[i]! + keep2 * gi * gi);
    expAvg[i] = m;
    expAvgSq[i] = v;
    p[i] = Math.fround(p[i]! * decay) - (stepSize * m) / (Math.sqrt(v) * inverseCorrection2Sqrt + eps);
  }
}

function sgdLoop(job: UpdateJob, momentum: number, lr: number): void {
  const { param: p, grad: g, decay } = job;
  if (momentum === 0) {
    for (let i = 0; i < p.length; i++) p[i] = Math.fround(p[i]! * decay) - lr * g[i]!;
    return;
  }
  // A zero buffer makes the first step buf = g exactly, which is torch's first-step clone.
  const buf = job.buffers[0]!;
  for (let i = 0; i < p.length; i++) {
    const b = Math.fround(momentum * buf[i]! + g[i]!);
    buf[i] = b;
    p[i] = Math.fround(p[i]! * decay) - lr * b;
  }
}

/** The buffer kinds an optimiser keeps per parameter, in the order its kernel receives them. */
export function bufferKinds(config: OptimizerConfig): readonly string[] {
  if (config.kind === 'adamw') return ADAMW_BUFFERS;
  return (config.momentum ?? 0.9) > 0 ? SGD_MOMENTUM_BUFFERS : [];
}

const ADAMW_BUFFERS = ['exp_avg', 'exp_avg_sq'];
const SGD_MOMENTUM_BUFFERS = ['momentum'];

export interface DecayOptions {
  /** Default 0.01 for AdamW (torch's default), 0 for SGD. */
  readonly weightDecay?: number;
  /** Parameters that get no weight decay. Default {@link defaultNoDecay}. */
  readonly noDecay?: (name: string) => boolean;
}

export interface AdamWOptions extends DecayOptions {
  /** Default 0.9. */
  readonly beta1?: number;
  /** Default 0.999. */
  readonly beta2?: number;
  /** Default 1e-8. */
  readonly eps?: number;
}

export interface SgdOptions extends DecayOptions {
  /** Default 0.9; 0 is plain SGD without a buffer. */
  readonly momentum?: number;
}

export type OptimizerConfig =
  | ({ readonly kind: 'adamw' } & AdamWOptions)
  | ({ readonly kind: 'sgd' } & SgdOptions);

const NO_DECAY_SUFFIXES = ['.bias', 'norm.weight', 'norm1.weight', 'norm2.weight'];
const NO_DECAY_NAMES = ['cls_token', 'pos_embed'];

/**
 * The customary exclusions: biases (`*.bias`), LayerNorm weights (`*norm.weight`, `*norm1.weight`,
 * `*norm2.weight`, which covers timm's `norm`, `fc_norm` and per-block `norm1`/`norm2`), and the learned
 * tokens `cls_token` and `pos_embed` (also under a prefix, e.g. `model.cls_token`). Everything else decays.
 */
export function defaultNoDecay(name: string): boolean {
  if (NO_DECAY_SUFFIXES.some((suffix) => name.endsWith(suffix))) return true;
  const last = name.slice(name.lastIndexOf('.') + 1);
  return NO_DECAY_NAMES.includes(last);
}

/** `kernel` defaults to {@link inThreadKernel}; the optimiser closes it on {@link Optimizer.close}. */
export function createOptimizer(config: OptimizerConfig, kernel: UpdateKernel = inThreadKernel): Optimizer {
  return config.kind === 'adamw' ? new AdamW(config, kernel) : new SGD(config, kernel);
}

/** torch.optim.AdamW (amsgrad off, maximize off) with per-parameter weight-decay exclusion. */
export class AdamW implements Optimizer {
  readonly kind = 'adamw';
  readonly hyper: AdamWHyper;
  private readonly noDecay: (name: string) => boolean;
  private readonly buffers: Buffers;
  private steps = 0;

  constructor(
    options: AdamWOptions = {},
    private readonly kernel: UpdateKernel = inThreadKernel,
  ) {
    this.hyper = {
      beta1: checkRange('beta1', options.beta1 ?? 0.9, 0, 1),
      beta2: checkRange('beta2', options.beta2 ?? 0.999, 0, 1),
      eps: checkNonNegative('eps', options.eps ?? 1e-8),
      weightDecay: checkNonNegative('weightDecay', options.weightDecay ?? 0.01),
    };
    this.noDecay = options.noDecay ?? defaultNoDecay;
    this.buffers = new Buffers(ADAMW_BUFFERS, kernel);
  }

  get stepCount(): number {
    return this.steps;
  }

  step(params: Map<string, HostTensor>, grads: Map<string, HostTensor>, lr: number): Promise<void> {
    checkStepArguments(params, grads, lr);
    this.buffers.prepare(params, this.steps);
    const { beta1, beta2, eps, weightDecay } = this.hyper;
    const t = this.steps + 1;
    // Bias correction as torch computes it: step size lr / (1 − β1^t), denominator √v / √(1 − β2^t) + eps.
    // √v / √(1 − β2^t) as a product: one division per element fewer (the full-fine-tuning loop runs over
    // 86 M values); the double-precision difference vanishes in the float32 result.
    const scalars: AdamWScalars = {
      beta1,
      beta2,
      keep1: 1 - beta1,
      keep2: 1 - beta2,
      stepSize: lr / (1 - beta1 ** t),
      inverseCorrection2Sqrt: 1 / Math.sqrt(1 - beta2 ** t),
      eps,
    };
    const jobs = this.buffers.jobs(params, grads, (name) => (this.noDecay(name) ? 1 : 1 - lr * weightDecay));
    return this.kernel.adamw(jobs, scalars).then(() => {
      this.steps = t;
    });
  }

  state(): OptimizerState {
    return { kind: 'adamw', step: this.steps, hyper: { ...this.hyper }, tensors: this.buffers.snapshot() };
  }

  loadState(state: OptimizerState, file?: string): void {
    if (state.kind !== 'adamw') throw stateMismatch(`was saved by ${state.kind}, this run uses adamw`, file);
    checkSameHyper(state.hyper, this.hyper, file);
    this.buffers.restore(state.tensors, state.step, file);
    this.steps = state.step;
  }

  close(): Promise<void> {
    return this.kernel.close();
  }
}

/**
 * torch.optim.SGD with momentum (dampening 0, nesterov off), except that weight decay is decoupled:
 * p ← p·(1 − lr·wd), then buf ← momentum·buf + g (buf = g on the first step), p ← p − lr·buf.
 */
export class SGD implements Optimizer {
  readonly kind = 'sgd';
  readonly hyper: SgdHyper;
  private readonly noDecay: (name: string) => boolean;
  private readonly buffers: Buffers;
  private steps = 0;

  constructor(
    options: SgdOptions = {},
    private readonly kernel: UpdateKernel = inThreadKernel,
  ) {
    this.hyper = {
      momentum: checkNonNegative('momentum', options.momentum ?? 0.9),
      weightDecay: checkNonNegative('weightDecay', options.weightDecay ?? 0),
    };
    this.noDecay = options.noDecay ?? defaultNoDecay;
    this.buffers = new Buffers(this.hyper.momentum > 0 ? SGD_MOMENTUM_BUFFERS : [], kernel);
  }

  get stepCount(): number {
    return this.steps;
  }

  step(params: Map<string, HostTensor>, grads: Map<string, HostTensor>, lr: number): Promise<void> {
    checkStepArguments(params, grads, lr);
    this.buffers.prepare(params, this.steps);
    const { momentum, weightDecay } = this.hyper;
    const jobs = this.buffers.jobs(params, grads, (name) => (this.noDecay(name) ? 1 : 1 - lr * weightDecay));
    const t = this.steps + 1;
    return this.kernel.sgd(jobs, momentum, lr).then(() => {
      this.steps = t;
    });
  }

  state(): OptimizerState {
    return { kind: 'sgd', step: this.steps, hyper: { ...this.hyper }, tensors: this.buffers.snapshot() };
  }

  loadState(state: OptimizerState, file?: string): void {
    if (state.kind !== 'sgd') throw stateMismatch(`was saved by ${state.kind}, this run uses sgd`, file);
    checkSameHyper(state.hyper, this.hyper, file);
    this.buffers.restore(state.tensors, state.step, file);
    this.steps = state.step;
  }

  close(): Promise<void> {
    return this.kernel.close();
  }
}

/** Float32 buffers of one or more kinds per parameter, created as zeros on first use. */
class Buffers {
  private readonly data = new Map<string, Float32Array[]>();
  private readonly shapes = new Map<string, readonly number[]>();
  /** The file a restored state came from, so that a later mismatch with the parameters can name it. */
  private source: string | undefined;

  constructor(
    private readonly kinds: readonly string[],
    private readonly kernel: UpdateKernel,
  ) {}

  /** Creates missing buffers on the first step; later, the buffers must match the parameters exactly. */
  prepare(params: Map<string, HostTensor>, steps: number): void {
    if (this.kinds.length === 0) return;
    for (const [name, param] of params) {
      const buffers = this.data.get(name);
      if (buffers === undefined) {
        if (steps > 0)
          throw stateMismatch(`has no ${this.kinds[0]} buffer for parameter '${name}'`, this.source);
        this.data.set(
          name,
          this.kinds.map((kind) => this.kernel.allocate(name, kind, param.data.length)),
        );
        this.shapes.set(name, [...param.shape]);
      } else if (buffers[0]!.length !== param.data.length) {
        throw stateMismatch(
          `has ${buffers[0]!.length} values for parameter '${name}', which has ${param.data.length}`,
          this.source,
        );
      }
    }
    if (this.data.size !== params.size) {
      const extra = [...this.data.keys()].find((name) => !params.has(name));
      throw stateMismatch(
        `has buffers for '${extra}', which is not among the parameters being trained`,
        this.source,
      );
    }
  }

  /** The update of every parameter (after {@link prepare}), in the order of `params`. */
  jobs(
    params: Map<string, HostTensor>,
    grads: Map<string, HostTensor>,
    decayOf: (name: string) => number,
  ): UpdateJob[] {
    return [...params].map(([name, param]) => ({
      name,
      param: param.data,
      grad: grads.get(name)!.data,
      buffers: this.data.get(name) ?? [],
      decay: decayOf(name),
    }));
  }

  snapshot(): Map<string, HostTensor> {
    const tensors = new Map<string, HostTensor>();
    for (const [k, kind] of this.kinds.entries()) {
      for (const [name, buffers] of this.data) {
        tensors.set(`${kind}.${name}`, { shape: [...this.shapes.get(name)!], data: buffers[k]!.slice() });
      }
    }
    return tensors;
  }

  restore(tensors: Map<string, HostTensor>, steps: number, file: string | undefined): void {
    const mismatch = (problem: string) => stateMismatch(problem, file);
    if (!Number.isInteger(steps) || steps < 0) throw mismatch(`has step ${steps}, not a count of updates`);
    const data = new Map<string, Float32Array[]>();
    const shapes = new Map<string, readonly number[]>();
    for (const key of tensors.keys()) {
      if (!this.kinds.some((kind) => key.startsWith(`${kind}.`))) {
        throw mismatch(
          `has an unexpected tensor '${key}' (expected ${this.kinds.map((k) => `${k}.<param>`).join(', ') || 'none'})`,
        );
      }
    }
    for (const [key, tensor] of tensors) {
      if (!key.startsWith(`${this.kinds[0]}.`)) continue;
      const name = key.slice(this.kinds[0]!.length + 1);
      const buffers = this.kinds.map((kind) => {
        const found = tensors.get(`${kind}.${name}`);
        if (found === undefined) throw mismatch(`has '${key}' but no '${kind}.${name}'`);
        if (found.data.length !== tensor.data.length)
          throw mismatch(`has '${kind}.${name}' of another size than '${key}'`);
        return found.data;
      });
      data.set(name, buffers);
      shapes.set(name, [...tensor.shape]);
    }
    const expected = data.size * this.kinds.length;
    if (tensors.size !== expected)
      throw mismatch(`has ${tensors.size} tensors where its ${data.size} parameters need ${expected}`);
    if (steps > 0 && this.kinds.length > 0 && data.size === 0)
      throw mismatch(`is at step ${steps} but has no buffers`);
    this.data.clear();
    this.shapes.clear();
    for (const [name, buffers] of data) {
      this.data.set(
        name,
        buffers.map((values, k) => {
          const copy = this.kernel.allocate(name, this.kinds[k]!, values.length);
          copy.set(values);
          return copy;
        }),
      );
    }
    for (const [name, shape] of shapes) this.shapes.set(name, shape);
    this.source = file;
  }
}

function checkStepArguments(
  params: Map<string, HostTensor>,
  grads: Map<string, HostTensor>,
  lr: number,
): void {
  if (!Number.isFinite(lr) || lr < 0)
    throw new MeloError('USAGE', `learning rate must be a finite number ≥ 0, got ${lr}`);
  for (const [name, param] of params) {
    const grad = grads.get(name);
    if (grad === undefined)
      throw new MeloError('BAD_INPUT', `optimizer step: no gradient for parameter '${name}'`);
    if (grad.data.length !== param.data.length) {
      throw new MeloError(
        'SHAPE',
        `optimizer step: gradient of '${name}' has shape [${grad.shape.join(', ')}], the parameter [${param.shape.join(', ')}]`,
      );
    }
  }
  if (grads.size !== params.size) {
    const extra = [...grads.keys()].find((name) => !params.has(name));
    throw new MeloError(
      'BAD_INPUT',
      `optimizer step: gradient for '${extra}', which is not a parameter being trained`,
    );
  }
}

function checkSameHyper<T extends object>(saved: T, current: T, file: string | undefined): void {
  for (const key of Object.keys(current) as (keyof T & string)[]) {
    if (saved[key] !== current[key]) {
      throw stateMismatch(
        `was saved with ${key} ${String(saved[key])}, this run uses ${String(current[key])}`,
        file,
      );
    }
  }
}

function checkRange(name: string, value: number, low: number, high: number): number {
  if (!(value >= low && value < high))
    throw new MeloError('USAGE', `${name} must be in [${low}, ${high}), got ${value}`);
  return value;
}

function checkNonNegative(name: string, value: number): number {
  if (!(Number.isFinite(value) && value >= 0))
    throw new MeloError('USAGE', `${name} must be a finite number ≥ 0, got ${value}`);
  return value;
}

function stateMismatch(problem: string, file?: string): MeloError {
  return new MeloError('BAD_CHECKPOINT', `optimizer state ${problem}`, file === undefined ? {} : { file });
}

/** Metadata key under which {@link optimizerStateToSafetensors} stores kind, step and hyper-parameters. */
export const OPTIMIZER_STATE_METADATA_KEY = 'melo.optimizer';

/** Tensors and metadata for a safetensors file (F32, so that the buffers restore bitwise). */
export function optimizerStateToSafetensors(state: OptimizerState): {
  tensors: Map<string, HostTensor>;
  metadata: Record<string, string>;
} {
  const { kind, step, hyper } = state;
  return {
    tensors: state.tensors,
    metadata: { [OPTIMIZER_STATE_METADATA_KEY]: JSON.stringify({ kind, step, hyper }) },
  };
}

/** The inverse of {@link optimizerStateToSafetensors}; `file` is named in errors. */
export function optimizerStateFromSafetensors(
  tensors: Map<string, HostTensor>,
  metadata: Record<string, string>,
  file?: string,
): OptimizerState {
  const text = metadata[OPTIMIZER_STATE_METADATA_KEY];
  if (text === undefined)
    throw stateMismatch(`is missing: no '${OPTIMIZER_STATE_METADATA_KEY}' metadata`, file);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw stateMismatch(`metadata '${OPTIMIZER_STATE_METADATA_KEY}' is not JSON`, file);
  }
  const record = (parsed ?? {}) as { kind?: unknown; step?: unknown; hyper?: unknown };
  const hyper = record.hyper as Record<string, unknown> | undefined;
  const numbers = (keys: string[]): boolean =>
    typeof hyper === 'object' && hyper !== null && keys.every((key) => typeof hyper[key] === 'number');
  if (typeof record.step !== 'number') throw stateMismatch(`metadata has no step count`, file);
  if (record.kind === 'adamw' && numbers(['beta1', 'beta2', 'eps', 'weightDecay'])) {
    return { kind: 'adamw', step: record.step, hyper: hyper as unknown as AdamWHyper, tensors };
  }
  if (record.kind === 'sgd' && numbers(['momentum', 'weightDecay'])) {
    return { kind: 'sgd', step: record.step, hyper: hyper as unknown as SgdHyper, tensors };
  }
  throw stateMismatch(
    `metadata names no known optimiser with its hyper-parameters: ${text.slice(0, 200)}`,
    file,
  );
}
