import assert from 'node:assert/strict';
import { test } from 'node:test';
import { summarizeTrace } from '../bench/lib/ort-profile.ts';

// bench:train --profile and bench:infer --profile read ORT's trace through this summary.
const kernel = (name: string, op: string, dur: number) => ({
  cat: 'Node',
  name: `${name}_kernel_time`,
  dur,
  args: { op_name: op },
});
const run = (dur: number) => ({ cat: 'Session', name: 'model_run', dur });

test('an ORT trace summary skips the warm-up runs and sums each node over the blocks', () => {
  const oneRun = (scale: number) => [
    kernel('blocks.0/gelu_Grad/mul_2', 'Mul', 1000 * scale),
    kernel('blocks.11/gelu_Grad/mul_2', 'Mul', 3000 * scale),
    kernel('blocks.0/attention/0', 'FusedMatMul', 2000 * scale),
    kernel('head/gemm', 'Gemm', 500 * scale),
  ];
  // A warm-up run 10× slower, then two timed runs.
  const events = [run(99_000), ...oneRun(10), run(7000), ...oneRun(1), run(9000), ...oneRun(1)];
  const summary = summarizeTrace(events, 1);
  assert.equal(summary.runs, 2);
  assert.equal(summary.medianRunMs, 8);
  assert.deepEqual(summary.kernelMsByOp, { Mul: 4, FusedMatMul: 2, Gemm: 0.5 });
  assert.deepEqual(summary.kernelMsByNode, {
    'blocks.*/gelu_Grad/mul_2 (Mul)': 4,
    'blocks.*/attention/0 (FusedMatMul)': 2,
    'head/gemm (Gemm)': 0.5,
  });
  assert.throws(() => summarizeTrace(events.slice(0, -1), 1), /cannot split per run/);
});
