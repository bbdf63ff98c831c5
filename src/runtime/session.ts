import { availableParallelism } from 'node:os';
import ort from 'onnxruntime-node';
import { MeloError } from '../errors.ts';
import type { GraphBuilder } from '../graph/builder.ts';
import { serializeGraph } from '../graph/serialize.ts';
import { int8PairsFit16Bits } from '../ops/quantized.ts';
import type { HostTensor } from '../tensor.ts';
import { int8ProductsSaturate } from './int8-kernels.ts';

export interface SessionOptions {
  /** Intra-op threads; defaults to the number of cores, which measured best (docs/engine.md). */
  threads?: number;
}

export type Feed = HostTensor | { readonly shape: readonly number[]; readonly data: BigInt64Array };

/**
 * A compiled graph ready to run. Built once per graph shape and reused for every call: feeding new
 * inputs (images, adapter weights) never rebuilds or re-serialises the graph.
 */
/**
 * The graph as ONNX bytes for ONNX Runtime on this machine: where its u8·s8 kernel saturates
 * (runtime/int8-kernels.ts), a graph whose int8 products can form pairs beyond 16 bits
 * (int8PairsFit16Bits) gets its int8 weights written as uint8 + 128, so that int8 graphs compute the same
 * sums on every CPU; a training graph on the 16-bit-pair grid stays signed, on the fast kernel. A graph
 * without int8 tensors never runs the probe.
 */
export async function serializeForThisCpu(graph: GraphBuilder): Promise<Uint8Array> {
  const hasInt8 = [...graph.initializers.values()].some((entry) => entry.tensor.dtype === 'int8');
  const unsigned = hasInt8 && (await int8ProductsSaturate()) && !int8PairsFit16Bits(graph);
  return serializeGraph(graph, { int8AsUint8: unsigned });
}

export class Session {
  private constructor(
    private readonly inner: ort.InferenceSession,
    readonly inputNames: readonly string[],
    readonly outputNames: readonly string[],
  ) {}

  static async fromGraph(graph: GraphBuilder, options: SessionOptions = {}): Promise<Session> {
    return Session.fromBytes(await serializeForThisCpu(graph), options);
  }

  static async fromBytes(model: Uint8Array, options: SessionOptions = {}): Promise<Session> {
    const threads = options.threads ?? defaultThreads();
    const inner = await ort.InferenceSession.create(model, {
      executionProviders: executionProviders(),
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
      // Memory patterns made the first real run slow and added ~1 GB at batch 4–8 (docs/engine.md).
      enableMemPattern: false,
      enableCpuMemArena: true,
      executionMode: 'sequential',
    });
    return new Session(inner, inner.inputNames, inner.outputNames);
  }

  /** Outputs are fresh arrays owned by the caller (ORT's binding copies them out of the session). */
  async run(feeds: Record<string, Feed>, outputs?: readonly string[]): Promise<Record<string, HostTensor>> {
    const ortFeeds: Record<string, ort.Tensor> = {};
    for (const [name, feed] of Object.entries(feeds)) {
      ortFeeds[name] =
        feed.data instanceof BigInt64Array
          ? new ort.Tensor('int64', feed.data, feed.shape as number[])
          : new ort.Tensor('float32', feed.data, feed.shape as number[]);
    }
    let results: ort.InferenceSession.OnnxValueMapType;
    try {
      results = outputs ? await this.inner.run(ortFeeds, [...outputs]) : await this.inner.run(ortFeeds);
    } catch (error) {
      throw new MeloError(
        'BAD_INPUT',
        `ONNX Runtime failed: ${String((error as Error).message ?? error).split('\n')[0]}`,
      );
    }
    const out: Record<string, HostTensor> = {};
    for (const [name, tensor] of Object.entries(results)) {
      out[name] = { shape: [...tensor.dims], data: tensor.data as Float32Array };
    }
    return out;
  }

  async release(): Promise<void> {
    await this.inner.release();
  }
}

export function defaultThreads(): number {
  const fromEnv = Number(process.env.MELO_THREADS);
  if (Number.isInteger(fromEnv) && fromEnv > 0) return fromEnv;
  return Math.max(1, navigatorCores());
}

function navigatorCores(): number {
  // availableParallelism respects CPU affinity where os.cpus().length does not.
  return availableParallelism();
}

/** `MELO_EXECUTION_PROVIDER=cuda` puts ORT's CUDA provider first (README: how to install it); CPU otherwise. */
function executionProviders(): string[] {
  const requested = (process.env.MELO_EXECUTION_PROVIDER ?? 'cpu').toLowerCase();
  if (requested === 'cpu') return ['cpu'];
  if (requested === 'cuda') return ['cuda', 'cpu'];
  throw new MeloError('USAGE', `MELO_EXECUTION_PROVIDER must be 'cpu' or 'cuda', got '${requested}'`);
}
