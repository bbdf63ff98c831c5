/**
 * Prints, as one JSON line, what this process sees of the int8 kernels: the ISA mask it runs under
 * (bench/lib/isa-mask.ts), whether ONNX Runtime's u8·s8 product saturates here (runtime/int8-kernels.ts),
 * the weight levels of the grid training through a frozen backbone then uses and the row levels of full
 * fine-tuning's, how a session's bytes encode the weights of an inference product (full grid), of a
 * frozen backbone's training product and of a trained weight's (their grids) (runtime/session.ts), and
 * whether V8's WebAssembly bounds check still traps (the mask's SIGSEGV handler
 * must pass it on).
 */
import onnxProto from 'onnx-proto';
import { activeIsaMask } from '../../bench/lib/isa-mask.ts';
import { GraphBuilder } from '../../src/graph/builder.ts';
import { INT8_GRID, type Int8Grid, int8MatMul, switchBackMatMul } from '../../src/ops/quantized.ts';
import { int8ProductsSaturate, int8TrainingGrid } from '../../src/runtime/int8-kernels.ts';
import { serializeForThisCpu } from '../../src/runtime/session.ts';

const { onnx } = onnxProto;

// (module (memory 1) (func (export "f") (param i32) (result i32) local.get 0 i32.load))
const LOAD = Uint8Array.from([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 6, 1, 96, 1, 127, 1, 127, 3, 2, 1, 0, 5, 3, 1, 0, 1, 7, 5, 1, 1, 102, 0, 0,
  10, 9, 1, 7, 0, 32, 0, 40, 2, 0, 11,
]);

function wasmTrapMessage(): string {
  const load = new WebAssembly.Instance(new WebAssembly.Module(LOAD)).exports.f as (at: number) => number;
  try {
    load(1 << 20);
    return 'no trap';
  } catch (error) {
    return (error as Error).message;
  }
}

/**
 * The ONNX type a session here gets for the weight of one product on `grid`, with weights reaching the
 * grid's ±levels: 'int8', or 'uint8' (+128). A static batch is a training step's shape, a symbolic one an
 * inference graph's.
 */
async function weightEncoding(grid: Int8Grid, batch: number | string): Promise<string> {
  const graph = new GraphBuilder('encoding');
  const levels = grid.weightLevels;
  const weight = graph.initializerInt8('w', [2, 2], Int8Array.of(levels, -levels, 1, 0));
  const x = graph.input('x', [batch, 2]);
  graph.output(int8MatMul(x, weight, graph.constantFloat(1), undefined, grid), 'y');
  const model = onnx.ModelProto.decode(await serializeForThisCpu(graph));
  const type = model.graph!.initializer!.find((tensor) => tensor.name === 'w')!.dataType;
  const { INT8, UINT8 } = onnx.TensorProto.DataType;
  return type === UINT8 ? 'uint8' : type === INT8 ? 'int8' : `type ${type}`;
}

/**
 * How a session here types the weight of a training step's product of a trained weight on `grid`: it is
 * quantised in the graph, so its zero point carries the type ('int8', or 'uint8' + 128 when no int8
 * tensor is left; the activations' zero points are uint8 either way).
 */
async function trainedWeightEncoding(grid: Int8Grid): Promise<string> {
  const graph = new GraphBuilder('trained-encoding');
  graph.output(switchBackMatMul(graph.input('x', [8, 2]), graph.input('w', [2, 2]), undefined, grid), 'y');
  const model = onnx.ModelProto.decode(await serializeForThisCpu(graph));
  const signed = model.graph!.initializer!.some(
    (tensor) => tensor.dataType === onnx.TensorProto.DataType.INT8,
  );
  return signed ? 'int8' : 'uint8';
}

const trainingGrid = await int8TrainingGrid('frozen');
const trainedGrid = await int8TrainingGrid('trained');
console.log(
  JSON.stringify({
    mask: activeIsaMask(),
    saturates: await int8ProductsSaturate(),
    trainingWeightLevels: trainingGrid.weightLevels,
    trainedRowLevels: trainedGrid.rowLevels,
    inference: await weightEncoding(INT8_GRID, 'batch'),
    training: await weightEncoding(trainingGrid, 8),
    trained: await trainedWeightEncoding(trainedGrid),
    wasmTrap: wasmTrapMessage(),
  }),
);
