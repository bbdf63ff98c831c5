import { ShapeError } from '../errors.ts';
import type { HostTensor } from '../tensor.ts';
import type { OpDef } from './op.ts';
import { type Attributes, type Dim, type DType, formatShape, type Shape, type TensorType } from './types.ts';

/** A tensor in a graph under construction: a graph input, an initializer or a node output. */
export class Value implements TensorType {
  constructor(
    readonly graph: GraphBuilder,
    readonly name: string,
    readonly shape: Shape,
    readonly dtype: DType,
    /** Index of the producing node in `graph.nodes`, or -1 for inputs and initializers. */
    readonly producer: number,
  ) {}

  get rank(): number {
    return this.shape.length;
  }

  dim(axis: number): Dim {
    const index = axis < 0 ? this.shape.length + axis : axis;
    const dim = this.shape[index];
    if (dim === undefined)
      throw new RangeError(`axis ${axis} out of range for ${this.name} ${formatShape(this.shape)}`);
    return dim;
  }
}

export interface GraphNode {
  readonly op: OpDef<Attributes>;
  readonly name: string;
  readonly inputs: readonly Value[];
  readonly outputs: readonly Value[];
  readonly attributes: Attributes;
}

export type InitializerData =
  | { readonly dtype: 'float32'; readonly shape: readonly number[]; readonly data: Float32Array }
  | { readonly dtype: 'int64'; readonly shape: readonly number[]; readonly data: BigInt64Array }
  | { readonly dtype: 'bool'; readonly shape: readonly number[]; readonly data: Uint8Array }
  | { readonly dtype: 'int8'; readonly shape: readonly number[]; readonly data: Int8Array }
  | { readonly dtype: 'uint8'; readonly shape: readonly number[]; readonly data: Uint8Array };

/**
 * Builds an ONNX graph from typed values. Shapes and dtypes are checked as each node is added, so a
 * mistake fails here with the node's name instead of inside ONNX Runtime. Frozen weights become
 * initializers; anything swappable (adapters, trainable parameters, the image batch) is a graph input.
 */
export class GraphBuilder {
  readonly nodes: GraphNode[] = [];
  readonly inputs: Value[] = [];
  readonly outputs: Value[] = [];
  readonly initializers = new Map<string, { value: Value; tensor: InitializerData }>();
  private readonly usedNames = new Set<string>();
  private readonly scopes: string[] = [];
  private readonly int64Constants = new Map<string, Value>();

  constructor(readonly name = 'melo') {}

  /** Prefix node and value names inside `body` (e.g. 'blocks.3/attn'), for readable graphs and errors. */
  scope<T>(name: string, body: () => T): T {
    this.scopes.push(name);
    try {
      return body();
    } finally {
      this.scopes.pop();
    }
  }

  uniqueName(base: string): string {
    const prefix = this.scopes.length > 0 ? `${this.scopes.join('/')}/` : '';
    let candidate = `${prefix}${base}`;
    let counter = 1;
    while (this.usedNames.has(candidate)) candidate = `${prefix}${base}_${counter++}`;
    this.usedNames.add(candidate);
    return candidate;
  }

  private claimExactName(name: string): string {
    if (this.usedNames.has(name)) throw new ShapeError('graph', name, 'name already used in this graph');
    this.usedNames.add(name);
    return name;
  }

  input(name: string, shape: Shape, dtype: DType = 'float32'): Value {
    const value = new Value(this, this.claimExactName(name), shape, dtype, -1);
    this.inputs.push(value);
    return value;
  }

  /** A frozen tensor stored in the model (weights, constants). */
  initializer(name: string, tensor: HostTensor): Value {
    const value = new Value(this, this.claimExactName(name), tensor.shape, 'float32', -1);
    this.initializers.set(value.name, {
      value,
      tensor: { dtype: 'float32', shape: tensor.shape, data: tensor.data },
    });
    return value;
  }

  /** A frozen int8 tensor stored in the model (quantised weights, their zero points). */
  initializerInt8(name: string, shape: readonly number[], data: Int8Array): Value {
    const value = new Value(this, this.claimExactName(name), shape, 'int8', -1);
    this.initializers.set(value.name, { value, tensor: { dtype: 'int8', shape, data } });
    return value;
  }

  /** A uint8 scalar constant (a quantisation zero point); one per value per graph. */
  constantUint8(value: number): Value {
    return this.sharedScalar(`u8_${value}`, { dtype: 'uint8', shape: [], data: Uint8Array.of(value) });
  }

  /** An int8 scalar constant (a weight's zero point); one per value per graph. */
  constantInt8(value: number): Value {
    return this.sharedScalar(`i8_${value}`, { dtype: 'int8', shape: [], data: Int8Array.of(value) });
  }

  /** A small float constant, named automatically. */
  constantFloat(values: readonly number[] | number, shape?: readonly number[]): Value {
    const data = Float32Array.from(typeof values === 'number' ? [values] : values);
    const name = this.uniqueName('const');
    this.usedNames.delete(name);
    return this.initializer(name, {
      shape: shape ?? (typeof values === 'number' ? [] : [data.length]),
      data,
    });
  }

  /** An int64 vector constant (shapes, axes, indices); identical constants are shared. */
  constantInt64(values: readonly number[], shape?: readonly number[]): Value {
    const dims = shape ?? [values.length];
    const key = `${dims.join('x')}:${values.join(',')}`;
    const cached = this.int64Constants.get(key);
    if (cached) return cached;
    const name = this.claimExactName(`i64_${this.int64Constants.size}`);
    const value = new Value(this, name, dims, 'int64', -1);
    this.initializers.set(name, {
      value,
      tensor: { dtype: 'int64', shape: dims, data: BigInt64Array.from(values.map((v) => BigInt(v))) },
    });
    this.int64Constants.set(key, value);
    return value;
  }

  /** A boolean scalar constant (flags such as Dropout's training_mode); one per value per graph. */
  constantBool(flag: boolean): Value {
    return this.sharedScalar(`bool_${flag}`, { dtype: 'bool', shape: [], data: Uint8Array.of(flag ? 1 : 0) });
  }

  /** A scalar initializer under a fixed name, created on first use and shared after. */
  private sharedScalar(name: string, tensor: InitializerData & { readonly shape: readonly [] }): Value {
    const existing = this.initializers.get(name);
    if (existing) return existing.value;
    const value = new Value(this, this.claimExactName(name), [], tensor.dtype, -1);
    this.initializers.set(name, { value, tensor });
    return value;
  }

  /** Adds one node after checking its shapes; returns its outputs. */
  apply<A extends Attributes>(
    op: OpDef<A>,
    inputs: readonly Value[],
    attributes: A,
    label?: string,
  ): Value[] {
    for (const input of inputs) {
      if (input.graph !== this)
        throw new ShapeError(op.name, label ?? op.name, `input ${input.name} belongs to another graph`);
    }
    const nodeName = this.uniqueName(label ?? op.name);
    const types = op.inferShape(inputs, attributes, nodeName);
    const producer = this.nodes.length;
    const outputs = types.map(
      (type, index) =>
        new Value(
          this,
          types.length === 1 ? nodeName : `${nodeName}:${index}`,
          type.shape,
          type.dtype,
          producer,
        ),
    );
    for (const output of outputs) this.usedNames.add(output.name);
    for (const intermediate of op.lowerIntermediates ?? [])
      this.claimExactName(`${nodeName}/${intermediate}`);
    this.nodes.push({ op: op as unknown as OpDef<Attributes>, name: nodeName, inputs, outputs, attributes });
    return outputs;
  }

  apply1<A extends Attributes>(op: OpDef<A>, inputs: readonly Value[], attributes: A, label?: string): Value {
    const outputs = this.apply(op, inputs, attributes, label);
    return outputs[0] as Value;
  }

  /** Marks a value as a graph output under `name` (an Identity node renames it when needed). */
  output(value: Value, name?: string): Value {
    if (name === undefined || name === value.name) {
      this.outputs.push(value);
      return value;
    }
    const renamed = new Value(this, this.claimExactName(name), value.shape, value.dtype, this.nodes.length);
    this.nodes.push({
      op: identityOp,
      name: `${name}_identity`,
      inputs: [value],
      outputs: [renamed],
      attributes: {},
    });
    this.outputs.push(renamed);
    return renamed;
  }
}

const identityOp: OpDef = {
  name: 'identity',
  onnxType: 'Identity',
  inferShape: (inputs) => [{ shape: inputs[0]!.shape, dtype: inputs[0]!.dtype }],
  vjp: ({ gradOutputs: [g] }) => [g!],
};
