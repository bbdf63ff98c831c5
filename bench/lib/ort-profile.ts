import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import onnxProto from 'onnx-proto';
import ort from 'onnxruntime-node';

/** Where a graph's time goes, from ORT's own profiler, and what ORT's optimiser turned the graph into. */
export interface OrtProfile {
  readonly runs: number;
  readonly medianRunMs: number;
  /** Kernel milliseconds per run by op type (Gelu, MatMul, …), largest first. */
  readonly kernelMsByOp: Record<string, number>;
  /**
   * Kernel milliseconds per run by node, with a leading `blocks.<i>` read as `blocks.*` so that one line
   * sums a node over every block (e.g. GELU's VJP's `mul_2` in all twelve), the 40 largest first.
   */
  readonly kernelMsByNode: Record<string, number>;
  /** Node count by op type in the optimised graph: shows which fusions (Gemm, Gelu, FusedMatMul) applied. */
  readonly optimizedOps: Record<string, number>;
}

interface TraceEvent {
  readonly cat: string;
  readonly name: string;
  readonly dur: number;
  readonly args?: { readonly op_name?: string };
  readonly ts?: number;
}

/**
 * Profiles `model` with ORT's profiler. The session options mirror src/runtime/session.ts (which does not
 * expose profiling) plus enableProfiling and a dump of the optimised graph; the first `warmup` runs are
 * left out of the summary.
 */
export async function profileOrtModel(
  model: Uint8Array,
  feeds: Record<string, ort.Tensor>,
  options: { threads: number; warmup: number; runs: number },
): Promise<OrtProfile> {
  const dir = await mkdtemp(join(tmpdir(), 'melo-profile-'));
  try {
    const optimizedPath = join(dir, 'optimized.onnx');
    const session = await ort.InferenceSession.create(model, {
      executionProviders: ['cpu'],
      intraOpNumThreads: options.threads,
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
      enableMemPattern: false,
      enableCpuMemArena: true,
      executionMode: 'sequential',
      enableProfiling: true,
      profileFilePrefix: join(dir, 'profile'),
      optimizedModelFilePath: optimizedPath,
      // Quiet ORT's warning that an optimised dump is hardware-specific: it is only read back here.
      logSeverityLevel: 3,
    });
    for (let i = 0; i < options.warmup + options.runs; i++) await session.run(feeds);
    session.endProfiling();
    await session.release();
    const traceFile = (await readdir(dir)).find(
      (name) => name.startsWith('profile') && name.endsWith('.json'),
    );
    if (!traceFile) throw new Error(`ORT wrote no profile in ${dir}`);
    const events = JSON.parse(await readFile(join(dir, traceFile), 'utf8')) as TraceEvent[];
    return {
      ...summarizeTrace(events, options.warmup),
      optimizedOps: countOps(await readFile(optimizedPath)),
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Per-op-type kernel time per run, skipping the first `skipRuns` model runs. */
export function summarizeTrace(
  events: readonly TraceEvent[],
  skipRuns: number,
): Pick<OrtProfile, 'runs' | 'medianRunMs' | 'kernelMsByOp' | 'kernelMsByNode'> {
  const runs = events.filter((e) => e.cat === 'Session' && e.name === 'model_run');
  const kernels = events.filter((e) => e.cat === 'Node' && e.name.endsWith('_kernel_time'));
  const timedRuns = runs.length - skipRuns;
  if (runs.length === 0 || timedRuns <= 0 || kernels.length % runs.length !== 0) {
    throw new Error(
      `profile has ${runs.length} runs and ${kernels.length} kernel events; cannot split per run`,
    );
  }
  const perRun = kernels.length / runs.length;
  const byOp = new Map<string, number>();
  const byNode = new Map<string, number>();
  for (const event of kernels.slice(perRun * skipRuns)) {
    const op = event.args?.op_name ?? 'unknown';
    const ms = event.dur / 1e3 / timedRuns;
    byOp.set(op, (byOp.get(op) ?? 0) + ms);
    const node = `${event.name.replace(/_kernel_time$/, '').replace(/^blocks\.\d+\//, 'blocks.*/')} (${op})`;
    byNode.set(node, (byNode.get(node) ?? 0) + ms);
  }
  const durations = runs
    .slice(skipRuns)
    .map((r) => r.dur / 1e3)
    .sort((a, b) => a - b);
  const middle = durations.length >> 1;
  return {
    runs: timedRuns,
    medianRunMs:
      durations.length % 2 ? durations[middle]! : (durations[middle - 1]! + durations[middle]!) / 2,
    kernelMsByOp: Object.fromEntries([...byOp].sort((a, b) => b[1] - a[1])),
    kernelMsByNode: Object.fromEntries([...byNode].sort((a, b) => b[1] - a[1]).slice(0, 40)),
  };
}

function countOps(modelBytes: Uint8Array): Record<string, number> {
  const model = onnxProto.onnx.ModelProto.decode(modelBytes);
  const counts = new Map<string, number>();
  for (const node of model.graph?.node ?? []) {
    const op = node.domain ? `${node.domain}.${node.opType}` : String(node.opType);
    counts.set(op, (counts.get(op) ?? 0) + 1);
  }
  return Object.fromEntries([...counts].sort((a, b) => b[1] - a[1]));
}
