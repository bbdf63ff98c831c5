import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import onnxProto from 'onnx-proto';
import { buildIsaMaskLibrary, isaMaskEnvironment } from '../bench/lib/isa-mask.ts';
import { buildBackward } from '../src/graph/backward.ts';
import { GraphBuilder } from '../src/graph/builder.ts';
import { serializeGraph } from '../src/graph/serialize.ts';
import { quantizePerOutputChannel } from '../src/model/quantize.ts';
import { int8MatMul, switchBackMatMul } from '../src/ops/quantized.ts';
import { int8ProductsSaturate } from '../src/runtime/int8-kernels.ts';
import { Session } from '../src/runtime/session.ts';
import { hostTensor } from '../src/tensor.ts';
import { Random } from '../src/util/random.ts';

const { onnx } = onnxProto;
const root = fileURLToPath(new URL('..', import.meta.url));

test('int8AsUint8 writes every int8 tensor as uint8 + 128 (weights and zero points), and nothing else', () => {
  const graph = new GraphBuilder('encoding');
  const x = graph.input('x', [2, 5]);
  const wq = graph.initializerInt8('wq', [5, 1], Int8Array.of(-128, -127, -1, 0, 127));
  graph.output(int8MatMul(x, wq, graph.constantFloat(0.5)), 'y');
  const decode = (int8AsUint8: boolean) =>
    new Map(
      onnx.ModelProto.decode(serializeGraph(graph, { int8AsUint8 })).graph!.initializer!.map((t) => [
        t.name!,
        { dataType: t.dataType, bytes: [...t.rawData!] },
      ]),
    );
  const signed = decode(false);
  const unsigned = decode(true);
  assert.deepEqual(signed.get('wq'), {
    dataType: onnx.TensorProto.DataType.INT8,
    bytes: [128, 129, 255, 0, 127],
  });
  assert.deepEqual(unsigned.get('wq'), {
    dataType: onnx.TensorProto.DataType.UINT8,
    bytes: [0, 1, 127, 128, 255],
  });
  assert.deepEqual(unsigned.get('i8_0'), { dataType: onnx.TensorProto.DataType.UINT8, bytes: [128] });
  // The float scale is untouched.
  const scale = [...unsigned.keys()].find((name) => name !== 'wq' && name !== 'i8_0')!;
  assert.deepEqual(unsigned.get(scale), signed.get(scale));
});

/** A frozen int8 projection and a SwitchBack one, with their input and weight gradients. */
function int8Graph(random: Random) {
  const [rows, k, n] = [12, 40, 24];
  const graph = new GraphBuilder('int8-both-encodings');
  const x = graph.input('x', [rows, k]);
  const w = graph.input('w', [n, n]);
  const seed = graph.input('dy', [rows, n]);
  const weight = hostTensor([k, n]);
  for (let i = 0; i < weight.data.length; i++) weight.data[i] = random.normal() * 0.05;
  const frozen = quantizePerOutputChannel(weight);
  const hidden = int8MatMul(
    x,
    graph.initializerInt8('wq', [k, n], frozen.data),
    graph.initializer('scale', hostTensor([n], frozen.scale)),
  );
  const y = switchBackMatMul(hidden, w);
  graph.output(y, 'y');
  const grads = buildBackward(graph, y, [x, w], { seed });
  graph.output(grads.get(x)!, 'dx');
  graph.output(grads.get(w)!, 'dw');
  return { graph, rows, k, n };
}

test('int8 graphs written unsigned compute what the signed ones do: forward, input and weight gradients', async () => {
  const random = new Random(5);
  const { graph, rows, k, n } = int8Graph(random);
  const feeds = {
    x: hostTensor(
      [rows, k],
      Float32Array.from({ length: rows * k }, () => random.normal()),
    ),
    w: hostTensor(
      [n, n],
      Float32Array.from({ length: n * n }, () => random.normal() * 0.1),
    ),
    dy: hostTensor(
      [rows, n],
      Float32Array.from({ length: rows * n }, () => random.normal() * 0.1),
    ),
  };
  const run = async (int8AsUint8: boolean) => {
    const session = await Session.fromBytes(serializeGraph(graph, { int8AsUint8 }), { threads: 1 });
    try {
      return await session.run(feeds);
    } finally {
      await session.release();
    }
  };
  const [signed, unsigned] = [await run(false), await run(true)];
  // Where the u8·s8 kernel is exact (VNNI) both encodings give the same integer sums: equal up to the
  // float rounding of the scaling. Where it saturates, the unsigned one is the right one.
  const saturates = await int8ProductsSaturate();
  for (const name of ['y', 'dx', 'dw']) {
    const [a, b] = [signed[name]!.data, unsigned[name]!.data];
    let worst = 0;
    let scale = 0;
    for (let i = 0; i < a.length; i++) {
      worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
      scale = Math.max(scale, Math.abs(b[i]!));
    }
    if (!saturates)
      assert.ok(worst <= 1e-5 * scale, `${name}: signed and unsigned differ by ${worst} (scale ${scale})`);
    assert.ok(scale > 0 && b.every(Number.isFinite), name);
  }
});

/** /proc/cpuinfo's flags, all of them (bench/lib/machine.ts reports only those that decide speed). */
function procCpuFlags(): string[] {
  return /^flags\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.split(/\s+/) ?? [];
}

/** The C compiler and Linux's CPUID faulting the AVX2 mask needs, or why they are missing. */
function maskUnavailable(): string | undefined {
  const flags = procCpuFlags();
  if (!flags.includes('cpuid_fault')) return 'this CPU or hypervisor offers no CPUID faulting';
  if (!flags.includes('avx512f') && !flags.includes('avx_vnni'))
    return 'the CPU has no ISA above AVX2 to hide';
  if (spawnSync(process.env.CC ?? 'cc', ['--version']).status !== 0) return 'no C compiler';
  // The kernel (or a container's seccomp filter) may still refuse CPUID faulting: the shim then says so.
  const trial = spawnSync('true', { env: isaMaskEnvironment(buildIsaMaskLibrary()), encoding: 'utf8' });
  if (trial.status !== 0) return trial.stderr.trim() || `the mask stops programs (exit ${trial.status})`;
  return undefined;
}

interface KernelReport {
  mask: string;
  saturates: boolean;
  trainingWeightLevels: number;
  trainedRowLevels: number;
  inference: string;
  training: string;
  trained: string;
  wasmTrap: string;
}

function report(env: NodeJS.ProcessEnv): KernelReport {
  const child = spawnSync(process.execPath, ['--import', 'tsx', 'test/helpers/int8-kernel-report.ts'], {
    cwd: root,
    env,
    encoding: 'utf8',
    timeout: 60_000,
  });
  assert.equal(child.status, 0, child.stderr);
  return JSON.parse(child.stdout.trim().split('\n').at(-1)!);
}

test('under an AVX2-only CPUID mask ORT’s u8·s8 product saturates, melo notices, trains on grids whose pairs fit 16 bits, and the int8 tests still pass against the operator definitions', {
  skip: maskUnavailable(),
}, () => {
  const flags = procCpuFlags();
  const vnni = flags.includes('avx512_vnni') || flags.includes('avx_vnni');
  const masked = isaMaskEnvironment(buildIsaMaskLibrary());
  const [native, avx2] = [report(process.env), report(masked)];
  const trap = 'memory access out of bounds';
  const exact = { saturates: false, trainingWeightLevels: 127, trainedRowLevels: 127 };
  const exactEncodings = { inference: 'int8', training: 'int8', trained: 'int8' };
  // Where pairs saturate: inference's full-grid weights go unsigned (u8·u8); training's grids, ±90 for a
  // frozen backbone and ±127 weights with ±64 rows for full fine-tuning, stay signed.
  const saturating = { saturates: true, trainingWeightLevels: 90, trainedRowLevels: 64 };
  const saturatingEncodings = { inference: 'uint8', training: 'int8', trained: 'int8' };
  const nativeExpected = vnni ? { ...exact, ...exactEncodings } : { ...saturating, ...saturatingEncodings };
  assert.deepEqual(native, { mask: 'native', ...nativeExpected, wasmTrap: trap });
  assert.deepEqual(avx2, { mask: 'avx2', ...saturating, ...saturatingEncodings, wasmTrap: trap });
  // Every int8 op test compares ORT with the ONNX definitions of exact integer products, on every grid:
  // under the mask the full grid's pass only because the weights are written unsigned (signed, the int8
  // gradients' cosine to fp32 fell to 0.79), the 16-bit-pair grids' because their pairs fit. The backbone
  // tests then run melo's int8 backbones on those grids: logits, LoRA and full fine-tuning gradient
  // cosines ≥ 0.99 to fp32, the CLI and the server.
  // A test runner's child must not think it is one too: with NODE_TEST_CONTEXT inherited, a nested
  // `node --test` reports to a parent that is not listening, prints nothing and exits 0 whatever fails.
  const { NODE_TEST_CONTEXT: _, ...runnerEnv } = masked;
  const tests = spawnSync(
    process.execPath,
    ['--import', 'tsx', '--test', 'test/int8.test.ts', 'test/backbone-precision.test.ts'],
    { cwd: root, env: runnerEnv, encoding: 'utf8', timeout: 600_000 },
  );
  assert.equal(tests.status, 0, `${tests.stdout}\n${tests.stderr}`);
  const count = (label: string) => Number(new RegExp(`^# ${label} (\\d+)$`, 'm').exec(tests.stdout)?.[1]);
  assert.deepEqual([count('pass'), count('fail')], [count('tests'), 0], tests.stdout);
  // Both files ran: the backbone tests log the lowest gradient cosines they checked.
  const lowest = [...tests.stdout.matchAll(/gradient cosine int8 vs fp32: min ([\d.]+)/g)].map((m) =>
    Number(m[1]),
  );
  assert.equal(lowest.length, 4, tests.stdout);
  assert.ok(count('tests') >= 20 && lowest.every((cosine) => cosine >= 0.99), `${lowest}`);
  console.log(`# under the AVX2 mask: ${count('tests')} int8 tests pass; lowest gradient cosines ${lowest}`);
});
