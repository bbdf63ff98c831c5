import onnxProto, { type onnx as OnnxTypes } from 'onnx-proto';
import type { GraphBuilder, InitializerData, Value } from './builder.ts';
import { MICROSOFT_DOMAIN, type OnnxAttribute } from './op.ts';
import type { DType, Shape } from './types.ts';

// onnx-proto is CommonJS: take the namespace from its default export.
const { onnx } = onnxProto;

/** Opset 18: ReduceSum/ReduceMean take axes as an input, LayerNormalization exists (docs/engine.md). */
export const OPSET_VERSION = 18;

/** ONNX's TensorProto.DataType of each element type: value infos, initializers and Cast's `to`. */
export const ONNX_DTYPE: Record<DType, OnnxTypes.TensorProto.DataType> = {
  float32: onnx.TensorProto.DataType.FLOAT,
  int64: onnx.TensorProto.DataType.INT64,
  bool: onnx.TensorProto.DataType.BOOL,
  int8: onnx.TensorProto.DataType.INT8,
  uint8: onnx.TensorProto.DataType.UINT8,
  int32: onnx.TensorProto.DataType.INT32,
};

function valueInfo(value: Value, int8AsUint8: boolean): OnnxTypes.IValueInfoProto {
  return {
    name: value.name,
    type: {
      tensorType: {
        elemType: ONNX_DTYPE[int8AsUint8 && value.dtype === 'int8' ? 'uint8' : value.dtype],
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

/** ModelProto fields besides the graph (an exported model's task metadata and description). */
export interface ModelExtras {
  readonly metadataProps?: Readonly<Record<string, string>>;
  readonly docString?: string;
  /**
   * Write composites in standard-domain ops where they have a choice (a file for any ONNX runtime, e.g.
   * `export-onnx`); otherwise they may use ONNX Runtime's contrib ops (com.microsoft) that run faster.
   */
  readonly portable?: boolean;
  /**
   * Write every int8 tensor (quantised weights and their zero points, initializers or values) as uint8
   * with 128 added: the same numbers to every op that takes a zero point, and ONNX Runtime then
   * multiplies with its u8·u8 kernels instead of u8·s8. On CPUs without VNNI, MLAS's u8·s8 kernel adds
   * pairs of products in saturating 16-bit lanes (255·127·2 > 32767) and its results drift; u8·u8 widens
   * first (runtime/int8-kernels.ts decides by asking ORT).
   */
  readonly int8AsUint8?: boolean;
}

/**
 * Serialises the graph to canonical ONNX model bytes: one ModelProto.graph field, as any protobuf
 * decoder expects (protobufjs keeps only the last occurrence of a repeated message field). The graph's
 * structure goes through onnx-proto; the initializers are appended inside the same GraphProto by hand
 * (a GraphProto's bytes followed by more `initializer` fields are that GraphProto with the initializers
 * added), written straight into the one output buffer, so protobufjs never holds a second copy of a
 * ViT's weights (docs/engine.md).
 */
export function serializeGraph(graph: GraphBuilder, extras: ModelExtras = {}): Uint8Array {
  const unsigned = extras.int8AsUint8 ?? false;
  const nodes: OnnxTypes.INodeProto[] = graph.nodes.flatMap((node): OnnxTypes.INodeProto[] => {
    const inputs = node.inputs.map((input) => input.name);
    const outputs = node.outputs.map((output) => output.name);
    if (node.op.lower) {
      const intermediates = (node.op.lowerIntermediates ?? []).map((name) => `${node.name}/${name}`);
      const lowering = { portable: extras.portable ?? false };
      return node.op.lower(inputs, outputs, intermediates, node.attributes, lowering).map((part, index) => ({
        name: `${node.name}/${index}`,
        opType: part.opType,
        domain: part.domain ?? '',
        input: [...part.inputs],
        output: [...part.outputs],
        attribute: (part.attributes ?? []).map(attributeProto),
      }));
    }
    return [
      {
        name: node.name,
        opType: node.op.onnxType,
        domain: node.op.domain ?? '',
        input: inputs,
        output: outputs,
        attribute: (node.op.emitAttributes?.(node.attributes as never) ?? []).map(attributeProto),
      },
    ];
  });
  const header = onnx.ModelProto.encode({
    irVersion: 8,
    producerName: 'melo',
    opsetImport: opsetImports(graph, extras.portable ?? false),
    ...(extras.metadataProps
      ? { metadataProps: Object.entries(extras.metadataProps).map(([key, value]) => ({ key, value })) }
      : {}),
    ...(extras.docString !== undefined ? { docString: extras.docString } : {}),
  }).finish();
  const structure = onnx.GraphProto.encode({
    name: graph.name,
    node: nodes,
    input: graph.inputs.map((value) => valueInfo(value, unsigned)),
    output: graph.outputs.map((value) => valueInfo(value, unsigned)),
  }).finish();
  // Only the initializers some written node or output reads: a composite's lowering may leave one of its
  // inputs unread (attention's scale, in the FusedMatMul form), and ORT warns about every such one.
  const read = new Set([...nodes.flatMap((node) => node.input ?? []), ...graph.outputs.map((o) => o.name)]);
  const tensors = [...graph.initializers.values()]
    .filter((entry) => read.has(entry.value.name))
    .map((entry) => encodeTensorHeader(entry.value.name, entry.tensor, unsigned));
  let graphLength = structure.length;
  for (const tensor of tensors) {
    graphLength += tagLength(GRAPH_INITIALIZER_FIELD) + varintLength(tensor.length) + tensor.length;
  }
  const out = new Uint8Array(
    header.length + tagLength(MODEL_GRAPH_FIELD) + varintLength(graphLength) + graphLength,
  );
  out.set(header, 0);
  let offset = writeVarint(out, header.length, (MODEL_GRAPH_FIELD << 3) | 2);
  offset = writeVarint(out, offset, graphLength);
  out.set(structure, offset);
  offset += structure.length;
  for (const tensor of tensors) {
    offset = writeVarint(out, offset, (GRAPH_INITIALIZER_FIELD << 3) | 2);
    offset = writeVarint(out, offset, tensor.length);
    out.set(tensor.header, offset);
    offset += tensor.header.length;
    if (tensor.offsetBy128) {
      // int8 → uint8 + 128 is flipping the sign bit of each byte.
      for (let i = 0; i < tensor.raw.length; i++) out[offset + i] = (tensor.raw[i] as number) ^ 0x80;
    } else {
      out.set(tensor.raw, offset);
    }
    offset += tensor.raw.length;
  }
  return out;
}

/** The standard opset, plus ONNX Runtime's contrib domain when a node uses it (the int8 products). */
function opsetImports(graph: GraphBuilder, portable: boolean): OnnxTypes.IOperatorSetIdProto[] {
  const imports = [{ domain: '', version: OPSET_VERSION }];
  // A portable composite is written in the standard domain whatever domain its record names.
  const usesMicrosoft = (node: GraphBuilder['nodes'][number]) =>
    node.op.domain === MICROSOFT_DOMAIN && !(portable && node.op.portableLowering);
  if (graph.nodes.some(usesMicrosoft)) imports.push({ domain: MICROSOFT_DOMAIN, version: 1 });
  return imports;
}

// Protobuf field numbers (onnx.proto): ModelProto.graph = 7, GraphProto.initializer = 5,
// TensorProto.dims = 1, data_type = 2, name = 8, raw_data = 9.
const MODEL_GRAPH_FIELD = 7;
const GRAPH_INITIALIZER_FIELD = 5;

function encodeTensorHeader(name: string, tensor: InitializerData, int8AsUint8: boolean) {
  const offsetBy128 = int8AsUint8 && tensor.dtype === 'int8';
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
  push(ONNX_DTYPE[offsetBy128 ? 'uint8' : tensor.dtype]);
  push((8 << 3) | 2);
  push(nameBytes.length);
  for (const byte of nameBytes) parts.push(byte);
  push((9 << 3) | 2);
  push(raw.length);
  const header = Uint8Array.from(parts);
  return { header, raw, offsetBy128, length: header.length + raw.length };
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
