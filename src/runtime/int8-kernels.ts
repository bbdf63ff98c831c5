/**
 * Which int8 encoding ONNX Runtime multiplies exactly on this CPU. melo's int8 graphs multiply uint8
 * activations by int8 weights (ops/quantized.ts). With AVX-512 VNNI or AVX-VNNI, MLAS's u8·s8 kernel sums
 * in 32 bits and is exact. Without them (an AVX2-only CPU) it multiplies with vpmaddubsw, which adds each
 * pair of u8·s8 products in a saturating 16-bit lane: 255·127 + 255·127 = 64770 comes out as 32767. melo
 * quantises gradients with zero point 128, so most of their bytes are near 128 and the saturation is
 * common: under an AVX2 CPUID mask (bench/lib/isa-mask.ts) int8 logits drifted past 5% of their scale and
 * a LoRA gradient's cosine to fp32 fell to 0.79 (0.993 with VNNI). Written as uint8 + 128 with zero point
 * 128 (serialize.ts, `int8AsUint8`), the same numbers go through MLAS's u8·u8 kernel, which widens to 16
 * bits before multiplying and is exact: int8 then computes the same sums on every x86 CPU. That is what
 * inference does. Training goes further ({@link int8TrainingGrid}): on such a CPU it quantises to grids
 * whose pairs all fit 16 bits, so that the faster u8·s8 kernel is exact (ops/quantized.ts,
 * INT8_GRID_16BIT_PAIRS and INT8_GRID_16BIT_PAIRS_TRAINED).
 *
 * Rather than guess from CPU flags (which a hypervisor or a mask can hide), melo asks ORT once per
 * process: one tiny product whose pairs overflow 16 bits, compared with the exact sum.
 */
import ort from 'onnxruntime-node';
import { GraphBuilder } from '../graph/builder.ts';
import { serializeGraph } from '../graph/serialize.ts';
import { cast } from '../ops/cast.ts';
import {
  INT8_GRID,
  INT8_GRID_16BIT_PAIRS,
  INT8_GRID_16BIT_PAIRS_TRAINED,
  type Int8Grid,
  MatMulIntegerOp,
} from '../ops/quantized.ts';

const ROWS = 8;
const DEPTH = 64;
const COLUMNS = 8;

let saturates: Promise<boolean> | undefined;

/** Whether ORT's u8·s8 product saturates on this CPU (then int8 weights are written as uint8 + 128). */
export function int8ProductsSaturate(): Promise<boolean> {
  saturates ??= probe();
  return saturates;
}

/**
 * The int8 grid training multiplies on here: the full one where ORT's u8·s8 kernel is exact; where it
 * saturates, one whose pairs fit 16 bits. Through a frozen backbone (LoRA, linear probing) that is
 * weights, activations and gradients on ±90 (under an AVX2 CPUID mask the LoRA step's ORT kernels took
 * 1496 ms on it against 1708 on the full grid written unsigned, bench/results/
 * train-avx2-int8-grid-{auto,full}-profile.json). Full fine-tuning trains its weights and keeps them on
 * ±127, with activations and gradients on ±64 (its gradients fall below the tests' 0.99 cosine on the
 * ±90 weights; train/training-backbone.ts). Inference keeps the full grid everywhere (its
 * DynamicQuantizeMatMul reads the weights as they are; a narrower grid would only cost accuracy there).
 */
export async function int8TrainingGrid(weights: 'frozen' | 'trained'): Promise<Int8Grid> {
  if (!(await int8ProductsSaturate())) return INT8_GRID;
  return weights === 'frozen' ? INT8_GRID_16BIT_PAIRS : INT8_GRID_16BIT_PAIRS_TRAINED;
}

async function probe(): Promise<boolean> {
  const graph = new GraphBuilder('melo-int8-kernel-probe');
  // The activations enter as a float input cast to uint8, so that ORT cannot fold the product away at
  // session creation; the weights are an initializer, as in melo's graphs (ORT prepacks those).
  const activations = cast(graph.input('x', [ROWS, DEPTH]), 'uint8');
  const weights = graph.initializerInt8('w', [DEPTH, COLUMNS], new Int8Array(DEPTH * COLUMNS).fill(127));
  const sums = graph.apply1(
    MatMulIntegerOp,
    [activations, weights, graph.constantUint8(0), graph.constantInt8(0)],
    { activationMax: 255 },
  );
  graph.output(cast(sums, 'float32'), 'sums');
  const session = await ort.InferenceSession.create(serializeGraph(graph), {
    executionProviders: ['cpu'],
    intraOpNumThreads: 1,
    logSeverityLevel: 3,
  });
  try {
    const x = new ort.Tensor('float32', new Float32Array(ROWS * DEPTH).fill(255), [ROWS, DEPTH]);
    const { sums: result } = await session.run({ x });
    const exact = DEPTH * 255 * 127;
    return !(result!.data as Float32Array).every((value) => value === exact);
  } finally {
    await session.release();
  }
}
