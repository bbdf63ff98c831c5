import { Piscina } from 'piscina';
import type { Backbone } from '../../checkpoints/load.ts';
import { errorMessage } from '../../errors.ts';
import type { StackedTaskWeights } from '../engine/adapter-stack.ts';
import { workerExecArgv } from '../engine/upload-decoder.ts';
import { ServeErrors } from '../errors.ts';
import type { AttentionResult } from './attention-model.ts';
import type { ExplainJob } from './explain-task.ts';

const WORKER_ENTRY = new URL('./explain-worker.mjs', import.meta.url).href;

/** An idle explanation thread exits after this long, freeing its compiled graph (a backbone's worth). */
export const EXPLAIN_IDLE_MS = 5 * 60_000;

/** Explanations waiting beyond the one running; more are refused with 503 rather than held in memory. */
export const EXPLAIN_MAX_QUEUE = 8;

export interface ExplainerOptions {
  /** ONNX Runtime intra-op threads of the explanation session (default: every core). */
  readonly threads?: number;
  readonly idleTimeoutMs?: number;
}

/** A copy that owns just its own bytes (views into a stack would clone the whole stack's buffers). */
function compactWeights(weights: StackedTaskWeights): StackedTaskWeights {
  const pairs = new Map<string, { A: Float32Array; B: Float32Array }>();
  for (const [key, pair] of weights.pairs) pairs.set(key, { A: pair.A.slice(), B: pair.B.slice() });
  return { ...weights, pairs, headWeight: weights.headWeight.slice(), headBias: weights.headBias.slice() };
}

/**
 * Explanations run on one thread of their own, started on first use and stopped when idle, so they
 * neither block the HTTP thread nor queue behind (or slow down) the serving batches; requests wait their
 * turn there, one image at a time.
 */
export class AttentionExplainer {
  private readonly pool: Piscina<ExplainJob, AttentionResult>;

  constructor(
    private readonly backbone: Backbone,
    private readonly options: ExplainerOptions = {},
  ) {
    this.pool = new Piscina<ExplainJob, AttentionResult>({
      filename: WORKER_ENTRY,
      minThreads: 0,
      maxThreads: 1,
      maxQueue: EXPLAIN_MAX_QUEUE,
      idleTimeout: options.idleTimeoutMs ?? EXPLAIN_IDLE_MS,
      execArgv: workerExecArgv(),
    });
    // A thread that fails to start rejects its task; without a listener the event would crash the server.
    this.pool.on('error', () => undefined);
  }

  /** Whether an explanation would be queued now (checked before its upload is decoded). */
  hasRoom(): boolean {
    return this.pool.queueSize < EXPLAIN_MAX_QUEUE;
  }

  async explain(task: string, weights: StackedTaskWeights, pixels: Float32Array): Promise<AttentionResult> {
    const job: ExplainJob = {
      backboneDir: this.backbone.dir,
      fingerprint: this.backbone.fingerprint,
      precision: this.backbone.precision ?? 'fp32',
      config: this.backbone.config,
      inputSize: this.backbone.preprocess.inputSize,
      ...(this.options.threads ? { threads: this.options.threads } : {}),
      task,
      weights: compactWeights(weights),
      pixels,
    };
    try {
      return await this.pool.run(job);
    } catch (error) {
      if (errorMessage(error) === 'Task queue is at limit')
        throw new ServeErrors.queueFull(EXPLAIN_MAX_QUEUE);
      throw new Error(`explanation thread: ${errorMessage(error)}`, { cause: error });
    }
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}
