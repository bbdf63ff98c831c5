/**
 * Element types the graphs use. float32 carries data; int64 carries shapes and indices; int8 carries
 * quantised frozen weights (`--backbone-precision int8`); uint8 and int32 the row-wise quantised
 * gradients and their integer products (ops/quantized.ts).
 */
export type DType = 'float32' | 'int64' | 'bool' | 'int8' | 'uint8' | 'int32';

/** A dimension is a number, or a name for a size only known at run time (e.g. 'batch'). */
export type Dim = number | string;
export type Shape = readonly Dim[];

export interface TensorType {
  readonly shape: Shape;
  readonly dtype: DType;
}

/** Build-time attributes of a node; only what an op's `emitAttributes` returns reaches the ONNX file. */
export type Attributes = object;

export function formatShape(shape: Shape): string {
  return `[${shape.join(', ')}]`;
}

export function isStaticShape(shape: Shape): shape is readonly number[] {
  return shape.every((dim) => typeof dim === 'number');
}
