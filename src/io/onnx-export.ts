/**
 * One task as a plain, self-contained ONNX classifier: LoRA merged into the dense weights, the task head as
 * the classifier, input `pixel_values` [batch, C, H, W] (already preprocessed, as Hugging Face names it) and
 * output `logits` [batch, classes]. Only standard ONNX operators (default domain, opset 18) and no other
 * graph inputs, so any ONNX Runtime (onnxruntime-web, transformers.js, Python) can run it. The task and its
 * preprocessing travel in the ModelProto's metadata_props.
 */
import onnxProto from 'onnx-proto';
import type { Backbone } from '../checkpoints/load.ts';
import { MeloError } from '../errors.ts';
import { GraphBuilder } from '../graph/builder.ts';
import { OPSET_VERSION, serializeGraph } from '../graph/serialize.ts';
import type { Adapter, TaskType } from '../model/adapter.ts';
import { checkAdapterFitsBackbone } from '../model/adapter-check.ts';
import { weightsForResolution } from '../model/inference.ts';
import { mergeLoraIntoWeights } from '../model/lora.ts';
import { loraScale } from '../model/lora-config.ts';
import { ViTGraph } from '../model/vit.ts';
import { WeightBinder } from '../model/weights.ts';
import { writeFileAtomic } from './atomic.ts';

const { onnx } = onnxProto;

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
  let weights = weightsForResolution(backbone, imageSize);
  let task: string;
  let taskType: TaskType;
  let labels: readonly string[];
  const adapter = options.task?.adapter;
  if (adapter) {
    checkAdapterFitsBackbone(adapter, backbone, `adapter '${adapter.metadata.task}'`);
    weights = mergeLoraIntoWeights(weights, config, adapter);
    weights.set('head.weight', adapter.head.weight);
    weights.set('head.bias', adapter.head.bias);
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
  const classes = weights.get('head.weight')!.shape[0]!;
  if (labels.length !== classes)
    throw new MeloError('USAGE', `${labels.length} labels for a head with ${classes} classes`);

  const graph = new GraphBuilder(`melo-${task}`);
  const vit = new ViTGraph({ config, params: new WeightBinder(graph, weights), imageSize });
  const pixels = graph.input(ONNX_INPUT_NAME, ['batch', config.channels, imageSize[0], imageSize[1]]);
  graph.output(vit.forwardHead(vit.forwardPooled(pixels)), ONNX_OUTPUT_NAME);

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
  const props = onnx.ModelProto.encode({
    metadataProps: Object.entries(metadata).map(([key, value]) => ({ key, value })),
    docString: `melo task '${task}': input ${ONNX_INPUT_NAME} [batch, ${config.channels}, ${imageSize[0]}, ${imageSize[1]}] preprocessed (resize, scale to [0, 1], normalise with mean/std), output ${ONNX_OUTPUT_NAME} [batch, ${classes}]`,
  }).finish();
  const body = serializeGraph(graph);
  if (body.byteLength + props.byteLength > PROTOBUF_LIMIT) {
    throw new MeloError(
      'UNSUPPORTED',
      `the model is ${(body.byteLength / 2 ** 30).toFixed(2)} GiB; a single ONNX file is limited to 2 GiB`,
      { file: backbone.dir },
    );
  }
  const bytes = canonicalModelBytes(body, props);
  return { bytes, task, taskType, labels, imageSize, metadata };
}

/** Writes the exported model to `path` atomically. */
export async function exportOnnx(
  backbone: Backbone,
  path: string,
  options: OnnxExportOptions = {},
): Promise<Omit<OnnxExport, 'bytes'> & { readonly bytes: number; readonly opset: number }> {
  const exported = buildOnnxExport(backbone, options);
  await writeFileAtomic(path, exported.bytes);
  return { ...exported, bytes: exported.bytes.byteLength, opset: OPSET_VERSION };
}

// Protobuf wire format: ModelProto.graph is field 7, length-delimited.
const MODEL_GRAPH_FIELD = 7;

/**
 * serializeGraph writes ModelProto.graph twice (structure, then initializers), which conformant decoders
 * merge; some JavaScript decoders (protobufjs) keep only the last occurrence. An exported file is for any
 * consumer, so its graph becomes one field holding both parts (concatenated GraphProto bytes are their
 * merge), and `extra` (more ModelProto fields, e.g. metadata_props) is appended, in one output buffer.
 */
function canonicalModelBytes(model: Uint8Array, extra: Uint8Array): Uint8Array {
  const graphParts: Uint8Array[] = [];
  const otherParts: Uint8Array[] = [];
  let pos = 0;
  while (pos < model.length) {
    const start = pos;
    const [tag, afterTag] = readVarint(model, pos);
    pos = afterTag;
    const wire = tag % 8;
    if (wire === 0) pos = readVarint(model, pos)[1];
    else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else if (wire === 2) {
      const [length, afterLength] = readVarint(model, pos);
      pos = afterLength + length;
      if (Math.floor(tag / 8) === MODEL_GRAPH_FIELD) {
        graphParts.push(model.subarray(afterLength, pos));
        continue;
      }
    } else throw new Error(`unexpected protobuf wire type ${wire} in the serialised model`);
    otherParts.push(model.subarray(start, pos));
  }
  const graphLength = graphParts.reduce((total, part) => total + part.length, 0);
  const header = new Uint8Array(20);
  let headerLength = writeVarint(header, 0, MODEL_GRAPH_FIELD * 8 + 2);
  headerLength = writeVarint(header, headerLength, graphLength);
  const otherLength = otherParts.reduce((total, part) => total + part.length, extra.length);
  const out = new Uint8Array(otherLength + headerLength + graphLength);
  let offset = 0;
  for (const part of [...otherParts, extra, header.subarray(0, headerLength), ...graphParts]) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function readVarint(bytes: Uint8Array, start: number): [number, number] {
  let value = 0;
  let scale = 1;
  let pos = start;
  for (;;) {
    const byte = bytes[pos++];
    if (byte === undefined) throw new Error('truncated varint in the serialised model');
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) return [value, pos];
    scale *= 128;
  }
}

function writeVarint(out: Uint8Array, start: number, value: number): number {
  let pos = start;
  let rest = value;
  while (rest >= 0x80) {
    out[pos++] = (rest % 128) | 0x80;
    rest = Math.floor(rest / 128);
  }
  out[pos++] = rest;
  return pos;
}
