/**
 * The explanation worker's task, run by piscina in its own thread, since ONNX Runtime's Node binding
 * blocks the thread it runs on. The thread reads the backbone from its directory to compile the graph
 * (the server never serialises the model for it), in the server's precision (an int8 server explains
 * through the same int8 products it predicts with, and never holds the float weights), and keeps only
 * the compiled session of the latest LoRA layout, not the weights.
 */
import { loadBackbone } from '../../checkpoints/load.ts';
import { type BackbonePrecision, withPrecision } from '../../model/backbone.ts';
import { Session } from '../../runtime/session.ts';
import { AdapterStack, type StackedTaskWeights } from '../engine/adapter-stack.ts';
import {
  type AttentionResult,
  buildExplainGraph,
  type ExplainShape,
  runExplainGraph,
} from './attention-model.ts';

export interface ExplainJob extends ExplainShape {
  readonly backboneDir: string;
  /** The served backbone's fingerprint: the directory must still hold that checkpoint. */
  readonly fingerprint: string;
  /** The served backbone's precision: explanations run the same products as /v1/predict. */
  readonly precision: BackbonePrecision;
  readonly threads?: number;
  readonly task: string;
  /** The task's weights in stack form, as the serving engine holds them. */
  readonly weights: StackedTaskWeights;
  /** One preprocessed image, CHW. */
  readonly pixels: Float32Array;
}

interface Compiled {
  readonly key: string;
  readonly session: Session;
}

/** Each session holds a copy of the backbone, so one is kept: explanations are rare and layouts few. */
let compiled: Promise<Compiled> | undefined;

async function compile(job: ExplainJob, stack: AdapterStack): Promise<Session> {
  const key = [job.backboneDir, job.fingerprint, job.precision, stack.graphKey, job.threads ?? ''].join('\n');
  const current = await compiled?.catch(() => undefined);
  if (current?.key === key) return current.session;
  compiled = (async () => {
    if (current) await current.session.release();
    const loaded = await loadBackbone(job.backboneDir);
    if (loaded.fingerprint !== job.fingerprint)
      throw new Error(`the backbone in ${job.backboneDir} changed since the server started; restart it`);
    const backbone = withPrecision(loaded, job.precision);
    const session = await Session.fromGraph(
      buildExplainGraph(backbone, stack),
      job.threads ? { threads: job.threads } : {},
    );
    return { key, session };
  })();
  return (await compiled).session;
}

export default async function explainJob(job: ExplainJob): Promise<AttentionResult> {
  const stack = AdapterStack.build(job.config, [{ name: job.task, weights: job.weights }]);
  const session = await compile(job, stack);
  return runExplainGraph(session, job, stack, 0, job.weights.classes, job.pixels);
}
