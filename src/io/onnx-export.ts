/**
 * One task as a plain, self-contained ONNX classifier: LoRA merged into the dense weights, the task head as
 * the classifier, input `pixel_values` [batch, C, H, W] (already preprocessed, as Hugging Face names it) and
 * output `logits` [batch, classes]. Only standard ONNX operators (default domain, opset 18) and no other
 * graph inputs, so any ONNX Runtime (onnxruntime-web, transformers.js, Python) can run it. The task and its
 * preprocessing travel in the ModelProto's metadata_props.
 */
import { MeloError } from '../errors.ts';
import { GraphBuilder } from '../graph/builder.ts';
import { OPSET_VERSION, serializeGraph } from '../graph/serialize.ts';
import type { Adapter, TaskType } from '../model/adapter.ts';
import { checkAdapterFitsBackbone } from '../model/adapter-check.ts';
import type { Backbone } from '../model/backbone.ts';
import { buildClassifierGraph } from '../model/classifier-graph.ts';
import { loraScale } from '../model/lora-config.ts';
import { int8ProductsSaturate } from '../runtime/int8-kernels.ts';
import { writeFileAtomic } from './atomic.ts';

export const ONNX_INPUT_NAME = 'pixel_values';
export const ONNX_OUTPUT_NAME = 'logits';

/** A protobuf message cannot exceed 2 GiB; larger models would need ONNX external data. */
const PROTOBUF_LIMIT = 2 ** 31 - 1;

export interface OnnxExportTask {
  readonly adapter: Adapter;
  /** Resolved label names (as predict shows them); default: the adapter's metadata labels. */
  readonly labels?: readonly string[];
}

export interface OnnxExportOptions {
  /** The task; without it the backbone is exported with its own classifier. */
  readonly task?: OnnxExportTask;
  /** Input resolution; default the backbone's preprocessing size (position embeddings are resampled). */
  readonly imageSize?: readonly [number, number];
  /**
   * How an int8 backbone's weights are written: 'int8' (ONNX Runtime's fast u8·s8 kernels; exact with
   * AVX-512 VNNI or AVX-VNNI, saturating on AVX2-only CPUs) or 'uint8' (+128 with zero point 128: u8·u8
   * kernels, exact everywhere, slower with VNNI). exportOnnx's default is what this machine's ORT
   * multiplies exactly (runtime/int8-kernels.ts); buildOnnxExport's is 'int8'.
   */
  readonly int8Weights?: 'int8' | 'uint8';
}

export interface OnnxExport {
  readonly bytes: Uint8Array;
  readonly task: string;
  readonly taskType: TaskType;
  readonly labels: readonly string[];
  readonly imageSize: readonly [number, number];
  /** What went into metadata_props. */
  readonly metadata: Readonly<Record<string, string>>;
}

/** Builds the ONNX model bytes. */
export function buildOnnxExport(backbone: Backbone, options: OnnxExportOptions = {}): OnnxExport {
  const { config, preprocess } = backbone;
  const imageSize = options.imageSize ?? preprocess.inputSize;
  let task: string;
  let taskType: TaskType;
  let labels: readonly string[];
  const adapter = options.task?.adapter;
  if (adapter) {
    checkAdapterFitsBackbone(adapter, backbone, `adapter '${adapter.metadata.task}'`);
    task = adapter.metadata.task;
    taskType = adapter.metadata.taskType;
    labels = options.task?.labels ?? adapter.metadata.labels;
  } else {
    if (config.numClasses === 0) {
      throw new MeloError(
        'USAGE',
        'backbone has no classifier head; pass the task adapter to export (--adapter <dir>)',
        { file: backbone.dir },
      );
    }
    task = 'backbone';
    taskType = config.numClasses === 2 ? 'binary' : 'multiclass';
    labels = backbone.labels ?? Array.from({ length: config.numClasses }, (_, i) => String(i));
  }
  const classes = adapter ? adapter.head.weight.shape[0]! : config.numClasses;
  if (labels.length !== classes)
    throw new MeloError('USAGE', `${labels.length} labels for a head with ${classes} classes`);

  // The classifier recipe with the LoRA folded into the weights and the task head as the classifier.
  const graph = new GraphBuilder(`melo-${task}`);
  const { logits } = buildClassifierGraph(graph, {
    backbone,
    batch: 'batch',
    imageSize,
    pixelsName: ONNX_INPUT_NAME,
    lora: adapter && adapter.pairs.size > 0 ? { kind: 'merged', adapter } : { kind: 'none' },
    head: adapter ? { kind: 'fixed', ...adapter.head } : { kind: 'checkpoint' },
  });
  graph.output(logits!, ONNX_OUTPUT_NAME);

  const metadata: Record<string, string> = {
    task,
    task_type: taskType,
    labels: JSON.stringify(labels),
    image_size: JSON.stringify(imageSize),
    mean: JSON.stringify(preprocess.mean),
    std: JSON.stringify(preprocess.std),
    resize_mode: preprocess.resizeMode,
    resize_size: JSON.stringify(preprocess.resizeSize),
    interpolation: preprocess.interpolation,
    channels: String(config.channels),
    backbone_fingerprint: backbone.fingerprint,
    ...(backbone.precision === 'int8'
      ? { int8_weights: options.int8Weights === 'uint8' ? 'uint8, zero point 128' : 'int8, zero point 0' }
      : {}),
    ...(adapter && adapter.pairs.size > 0
      ? {
          lora_merged: JSON.stringify({
            rank: adapter.lora.rank,
            alpha: adapter.lora.alpha,
            scale: loraScale(adapter.lora),
            targets: adapter.lora.targets,
          }),
        }
      : {}),
  };
  const bytes = serializeGraph(graph, {
    portable: true,
    int8AsUint8: options.int8Weights === 'uint8',
    metadataProps: metadata,
    docString: `melo task '${task}': input ${ONNX_INPUT_NAME} [batch, ${config.channels}, ${imageSize[0]}, ${imageSize[1]}] preprocessed (resize, scale to [0, 1], normalise with mean/std), output ${ONNX_OUTPUT_NAME} [batch, ${classes}]`,
  });
  if (bytes.byteLength > PROTOBUF_LIMIT) {
    throw new MeloError(
      'UNSUPPORTED',
      `the model is ${(bytes.byteLength / 2 ** 30).toFixed(2)} GiB; a single ONNX file is limited to 2 GiB`,
      { file: backbone.dir },
    );
  }
  return { bytes, task, taskType, labels, imageSize, metadata };
}

/** Writes the exported model to `path` atomically. */
export async function exportOnnx(
  backbone: Backbone,
  path: string,
  options: OnnxExportOptions = {},
): Promise<Omit<OnnxExport, 'bytes'> & { readonly bytes: number; readonly opset: number }> {
  const int8Weights =
    options.int8Weights ??
    (backbone.precision === 'int8' && (await int8ProductsSaturate()) ? 'uint8' : 'int8');
  const exported = buildOnnxExport(backbone, { ...options, int8Weights });
  await writeFileAtomic(path, exported.bytes);
  return { ...exported, bytes: exported.bytes.byteLength, opset: OPSET_VERSION };
}
