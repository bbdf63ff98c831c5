import { availableParallelism } from 'node:os';
import { Piscina } from 'piscina';
import type { Backbone } from '../../checkpoints/load.ts';
import { errorMessage } from '../../errors.ts';
import type { ImageLimits } from '../../imaging/limits.ts';
import type { RoutingKeys } from '../../pacs/routing.ts';
import { ServeErrors } from '../errors.ts';
import type { UploadJob, UploadReply } from './upload-task.ts';

const WORKER_ENTRY = new URL('./upload-worker.mjs', import.meta.url).href;

/** Decode threads by default: half the cores (ONNX Runtime has the rest), at least one, at most four. */
export function defaultDecodeThreads(): number {
  return Math.min(4, Math.max(1, Math.floor(availableParallelism() / 2)));
}

/** Flags (with a value) that load code or choose module conditions: what a worker needs from its parent. */
const LOADER_FLAGS = new Set([
  '--import',
  '--require',
  '-r',
  '--loader',
  '--experimental-loader',
  '--conditions',
  '-C',
]);
/** Value-less flags a worker accepts and that change no process-wide state. */
const PLAIN_FLAGS = new Set(['--enable-source-maps', '--no-warnings', '--no-deprecation']);

/**
 * The parent's Node flags the decode and explanation threads get: only those that load code (tsx's
 * `--import`) or quiet warnings. Node refuses to start a worker given a main-script flag (`--eval`,
 * `--input-type`) or a process-wide one (`--expose-gc`, memory sizes), and piscina passes
 * `process.execArgv` on by default.
 */
export function workerExecArgv(argv: readonly string[] = process.execArgv): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    const name = flag.split('=')[0]!;
    if (LOADER_FLAGS.has(name)) {
      if (flag.includes('=')) out.push(flag);
      else if (i + 1 < argv.length) out.push(flag, argv[++i]!);
    } else if (PLAIN_FLAGS.has(flag)) {
      out.push(flag);
    }
  }
  return out;
}

export interface UploadDecoderOptions {
  readonly limits: ImageLimits;
  readonly threads?: number;
  /** Uploads waiting for a decode thread beyond those decoding; more get 503 before any decoding. */
  readonly maxQueue?: number;
}

export interface DecodedUpload {
  readonly width: number;
  readonly height: number;
  readonly pixels?: Float32Array;
  readonly preview?: Uint8Array;
  readonly routing?: RoutingKeys;
}

/**
 * Decodes uploads on worker threads (piscina), so that no upload, however crafted, holds the HTTP thread:
 * /healthz and every other request keep answering while images decode. Each decode is bounded by the
 * image limits (checked from the header before pixels are decoded) and by the request's signal: a
 * request that times out or hangs up stops its decode (piscina ends a thread whose task is aborted).
 */
export class UploadDecoder {
  private readonly pool: Piscina<UploadJob, UploadReply>;
  private failure: unknown;
  readonly threads: number;
  readonly maxQueue: number;

  constructor(
    private readonly backbone: Backbone,
    private readonly options: UploadDecoderOptions,
  ) {
    this.threads = options.threads ?? defaultDecodeThreads();
    // A waiting upload holds only its body, which fastify has already read (at most the body limit), and
    // a decode takes milliseconds: the queue exists to answer 503 early, not to bound memory. Four per
    // thread turned away a burst of a few concurrent uploads (bench:serve's 16 connections got 503s on
    // a 2-core machine with one decode thread), so bursts of up to 64 now wait their turn.
    this.maxQueue = options.maxQueue ?? Math.max(64, 16 * this.threads);
    this.pool = new Piscina<UploadJob, UploadReply>({
      filename: WORKER_ENTRY,
      // One thread is started at once so that the first upload does not wait for the TypeScript loader.
      minThreads: 1,
      maxThreads: this.threads,
      maxQueue: this.maxQueue,
      idleTimeout: 60_000,
      execArgv: workerExecArgv(),
    });
    // A thread that cannot start is reported once; later uploads fail at once (500) instead of waiting
    // for their time-out. Without a listener the event would crash the server.
    this.pool.on('error', (error: unknown) => {
      this.failure ??= error;
    });
  }

  get limits(): ImageLimits {
    return this.options.limits;
  }

  /**
   * Resolves once a decode thread has loaded its code (a trivial job round trip), so that the server
   * does not count a thread's start-up (seconds on a loaded machine) against the first uploads' time-outs;
   * rejects when no thread can start.
   */
  async warm(): Promise<void> {
    const job: UploadJob = {
      bytes: new Uint8Array(0),
      limits: this.options.limits,
      preprocess: this.backbone.preprocess,
      channels: this.backbone.config.channels as 1 | 3,
      pixels: false,
      preview: false,
    };
    try {
      await this.pool.run(job);
    } catch (error) {
      throw new Error(`upload decode thread did not start: ${errorMessage(error)}`, { cause: error });
    }
  }

  /** Whether an upload would be queued now (checked before reading its pixels, to answer 503 early). */
  hasRoom(): boolean {
    return this.pool.queueSize < this.maxQueue;
  }

  /** Decodes `bytes`; throws the HTTP error (400, 413, 415, 503) a failure deserves. */
  async decode(
    bytes: Uint8Array,
    want: { readonly pixels: boolean; readonly preview: boolean; readonly routing?: boolean },
    signal?: AbortSignal,
  ): Promise<DecodedUpload> {
    if (bytes.length === 0) throw new ServeErrors.noImage('the request body is empty');
    if (this.failure !== undefined)
      throw new Error(`upload decode thread: ${errorMessage(this.failure)}`, { cause: this.failure });
    if (!this.hasRoom()) throw new ServeErrors.queueFull(this.pool.queueSize);
    const job: UploadJob = {
      bytes,
      limits: this.options.limits,
      preprocess: this.backbone.preprocess,
      channels: this.backbone.config.channels as 1 | 3,
      ...want,
    };
    let reply: UploadReply;
    try {
      reply = await this.pool.run(job, signal ? { signal } : {});
    } catch (error) {
      if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : error;
      if (errorMessage(error) === 'Task queue is at limit')
        throw new ServeErrors.queueFull(this.pool.queueSize);
      throw new Error(`upload decode thread: ${errorMessage(error)}`, { cause: error });
    }
    if (reply.ok) return reply;
    switch (reply.kind) {
      case 'empty':
        throw new ServeErrors.noImage(reply.message);
      case 'tooLarge':
        throw new ServeErrors.imageTooLarge(reply.message);
      case 'unsupported':
        throw new ServeErrors.unsupportedImage(reply.message);
      default:
        throw new ServeErrors.badImage(reply.message);
    }
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}
