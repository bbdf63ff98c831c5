import onnxProto, { type onnx as OnnxTypes } from 'onnx-proto';
import type { GraphBuilder, InitializerData, Value } from './builder.ts';
import type { OnnxAttribute } from './op.ts';
import type { DType, Shape } from './types.ts';

// onnx-proto is CommonJS: take the namespace from its default export.
const { onnx } = onnxProto;

/** Opset 18: ReduceSum/ReduceMean take axes as an input, LayerNormalization exists (see ENGINE-NOTES). */
export const OPSET_VERSION = 18;

const ONNX_DTYPE: Record<DType, OnnxTypes.TensorProto.DataType> = {
  float32: onnx.TensorProto.DataType.FLOAT,
  int64: onnx.TensorProto.DataType.INT64,
  bool: onnx.TensorProto.DataType.BOOL,
};

function valueInfo(value: Value): OnnxTypes.IValueInfoProto {
  return {
    name: value.name,
    type: {
      tensorType: {
        elemType: ONNX_DTYPE[value.dtype],
        shape: { dim: shapeDims(value.shape) },
      },
    },
  };
}

function shapeDims(shape: Shape): OnnxTypes.TensorShapeProto.IDimension[] {
  return shape.map((dim) => (typeof dim === 'number' ? { dimValue: dim } : { dimParam: dim }));
}

function attributeProto(attribute: OnnxAttribute): OnnxTypes.IAttributeProto {
  const Type = onnx.AttributeProto.AttributeType;
  switch (attribute.type) {
    case 'int':
      return { name: attribute.name, type: Type.INT, i: attribute.value };
    case 'float':
      return { name: attribute.name, type: Type.FLOAT, f: attribute.value };
    case 'ints':
      return { name: attribute.name, type: Type.INTS, ints: [...attribute.value] };
    case 'floats':
      return { name: attribute.name, type: Type.FLOATS, floats: [...attribute.value] };
    case 'string':
      return { name: attribute.name, type: Type.STRING, s: new TextEncoder().encode(attribute.value) };
  }
}

/**
 * Serialises the graph to ONNX model bytes. The graph structure goes through onnx-proto; the initializers
 * are appended as a second occurrence of ModelProto.graph holding only `initializer` entries, which
 * protobuf merges into the first (repeated fields concatenate). Writing the weights ourselves, straight
 * into one buffer, avoids protobufjs holding a second copy of a ViT's weights (ENGINE-NOTES).
 */
export function serializeGraph(graph: GraphBuilder): Uint8Array {
  const nodes: OnnxTypes.INodeProto[] = graph.nodes.map((node) => ({
    name: node.name,
    opType: node.op.onnxType,
    domain: node.op.domain ?? '',
    input: node.inputs.map((input) => input.name),
    output: node.outputs.map((output) => output.name),
    attribute: (node.op.emitAttributes?.(node.attributes as never) ?? []).map(attributeProto),
  }));
  const model = onnx.ModelProto.create({
    irVersion: 8,
    producerName: 'melo',
    opsetImport: [{ domain: '', version: OPSET_VERSION }],
    graph: {
      name: graph.name,
      node: nodes,
      input: graph.inputs.map(valueInfo),
      output: graph.outputs.map(valueInfo),
    },
  });
  const structure = onnx.ModelProto.encode(model).finish();
  const weights = encodeInitializers(
    [...graph.initializers.values()].map((entry) => [entry.value.name, entry.tensor]),
  );
  const bytes = new Uint8Array(structure.length + weights.length);
  bytes.set(structure, 0);
  bytes.set(weights, structure.length);
  return bytes;
}

// Protobuf field numbers (onnx.proto): ModelProto.graph = 7, GraphProto.initializer = 5,
// TensorProto.dims = 1, data_type = 2, name = 8, raw_data = 9.
const MODEL_GRAPH_FIELD = 7;
const GRAPH_INITIALIZER_FIELD = 5;

function encodeInitializers(entries: readonly [string, InitializerData][]): Uint8Array {
  const tensors = entries.map(([name, tensor]) => encodeTensorHeader(name, tensor));
  let graphLength = 0;
  for (const tensor of tensors) {
    graphLength += tagLength(GRAPH_INITIALIZER_FIELD) + varintLength(tensor.length) + tensor.length;
  }
  const total = tagLength(MODEL_GRAPH_FIELD) + varintLength(graphLength) + graphLength;
  const out = new Uint8Array(total);
  let offset = writeVarint(out, 0, (MODEL_GRAPH_FIELD << 3) | 2);
  offset = writeVarint(out, offset, graphLength);
  for (const tensor of tensors) {
    offset = writeVarint(out, offset, (GRAPH_INITIALIZER_FIELD << 3) | 2);
    offset = writeVarint(out, offset, tensor.length);
    out.set(tensor.header, offset);
    offset += tensor.header.length;
    out.set(tensor.raw, offset);
    offset += tensor.raw.length;
  }
  return out;
}

function encodeTensorHeader(name: string, tensor: InitializerData) {
  const raw = new Uint8Array(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength);
  const nameBytes = new TextEncoder().encode(name);
  const parts: number[] = [];
  const push = (value: number) => {
    const scratch = new Uint8Array(10);
    const end = writeVarint(scratch, 0, value);
    for (let i = 0; i < end; i++) parts.push(scratch[i] as number);
  };
  for (const dim of tensor.shape) {
    push((1 << 3) | 0);
    push(dim);
  }
  push((2 << 3) | 0);
  push(ONNX_DTYPE[tensor.dtype]);
  push((8 << 3) | 2);
  push(nameBytes.length);
  for (const byte of nameBytes) parts.push(byte);
  push((9 << 3) | 2);
  push(raw.length);
  const header = Uint8Array.from(parts);
  return { header, raw, length: header.length + raw.length };
}

function tagLength(field: number): number {
  return varintLength((field << 3) | 2);
}

function varintLength(value: number): number {
  let length = 1;
  while (value >= 0x80) {
    value = Math.floor(value / 128);
    length++;
  }
  return length;
}

function writeVarint(out: Uint8Array, offset: number, value: number): number {
  while (value >= 0x80) {
    out[offset++] = (value % 128) | 0x80;
    value = Math.floor(value / 128);
  }
  out[offset++] = value;
  return offset;
}
