import type { GraphBuilder, Value } from './builder.ts';
import type { Attributes, TensorType } from './types.ts';

/** ONNX Runtime's contrib-op domain (the int8 product, src/ops/quantized.ts). */
export const MICROSOFT_DOMAIN = 'com.microsoft';

/** What a VJP rule sees: the node's inputs and outputs (as graph values) and the gradient of each output. */
export interface VjpContext<A extends Attributes> {
  readonly graph: GraphBuilder;
  readonly inputs: readonly Value[];
  readonly outputs: readonly Value[];
  /** Gradient of the loss w.r.t. each output; null where no gradient flows into that output. */
  readonly gradOutputs: readonly (Value | null)[];
  readonly attributes: A;
  /** Which inputs need a gradient; a rule may skip the others (return null). */
  readonly needs: readonly boolean[];
}

/**
 * One primitive: its ONNX op type, its shape rule and its gradient rule side by side (JAX-style), so that
 * adding an op is one record and one test. `inferShape` throws a ShapeError naming the rule it checked.
 */
export type OnnxAttribute =
  | { readonly name: string; readonly type: 'int'; readonly value: number }
  | { readonly name: string; readonly type: 'float'; readonly value: number }
  | { readonly name: string; readonly type: 'ints'; readonly value: readonly number[] }
  | { readonly name: string; readonly type: 'floats'; readonly value: readonly number[] }
  | { readonly name: string; readonly type: 'string'; readonly value: string };

/** How a composite is written: `portable` asks for standard-domain ops only (serialize.ts's ModelExtras). */
export interface LowerOptions {
  readonly portable: boolean;
}

/** One ONNX node of a composite op's lowering; inputs and outputs are value names. */
export interface LoweredNode {
  readonly opType: string;
  /** The node's domain: absent for the standard one; a contrib one must be the composite's `domain`. */
  readonly domain?: string;
  readonly inputs: readonly string[];
  readonly outputs: readonly string[];
  readonly attributes?: readonly OnnxAttribute[];
}

export interface OpDef<A extends Attributes = Attributes> {
  readonly name: string;
  readonly onnxType: string;
  /** The domain of the emitted node; for a composite, the non-standard domain its lowering uses, if any. */
  readonly domain?: string;
  readonly outputCount?: number;
  /** The ONNX attributes of the emitted node (op attributes not listed here stay build-time only). */
  emitAttributes?(attributes: A): OnnxAttribute[];
  /**
   * A composite: the standard-domain nodes it is written as, in place of one `onnxType` node, given its
   * input and output names, the names of its intermediates (`<node>/<each of lowerIntermediates>`,
   * reserved in the graph when the node is added) and its attributes. Its VJP reads only its inputs and
   * outputs, never those intermediates, so ONNX Runtime stays free to fuse them (GELU, ops/elementwise.ts;
   * attention, ops/attention.ts).
   */
  lower?(
    inputs: readonly string[],
    outputs: readonly string[],
    intermediates: readonly string[],
    attributes: A,
    options: LowerOptions,
  ): LoweredNode[];
  /** A composite whose lowering is standard-domain only when `LowerOptions.portable` asks for it. */
  readonly portableLowering?: boolean;
  readonly lowerIntermediates?: readonly string[];
  inferShape(inputs: readonly TensorType[], attributes: A, nodeName: string): TensorType[];
  /** Gradients w.r.t. the inputs, aligned with them; null where there is none. Absent: not differentiable. */
  vjp?(context: VjpContext<A>): (Value | null)[];
}
