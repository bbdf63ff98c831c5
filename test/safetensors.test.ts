import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  decodeSafetensors,
  encodeSafetensors,
  float16BitsToFloat32,
  float32ToBfloat16Bits,
  float32ToFloat16Bits,
  readCheckpointTensors,
  readSafetensors,
  readSafetensorsDir,
  readSafetensorsHeader,
  SAFETENSORS_INDEX_FILE,
  type SafetensorsWriteDtype,
  writeSafetensors,
} from '../src/checkpoints/safetensors.ts';
import { MeloError } from '../src/errors.ts';
import { type HostTensor, hostTensor } from '../src/tensor.ts';

const fixtures = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'safetensors');
const root = await mkdtemp(join(tmpdir(), 'melo-safetensors-'));
after(() => rm(root, { recursive: true, force: true }));

let counter = 0;
async function freshDir(): Promise<string> {
  const dir = join(root, `case-${counter++}`);
  await mkdir(dir);
  return dir;
}

/** Mirrors INPUTS in scripts/fixtures/make_safetensors_fixture.py. */
function referenceInputs(): Map<string, HostTensor> {
  const t = (shape: number[], values: number[]) => hostTensor(shape, Float32Array.from(values));
  return new Map([
    ['weight', t([2, 3], [1.0, -2.5, 0.1, 1.0 / 3.0, 65504.0, 65519.99609375])],
    ['bias', t([4], [65520.0, 1e-8, 2 ** -25, 3 * 2 ** -25])],
    ['blocks.0.ünï', t([2], [-0, Number.NaN])],
    ['scalar', t([], [1.0009765625 + 2 ** -11])],
    ['empty', t([0, 3], [])],
    ['10', t([3], [Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, 6.103515625e-5 * 0.999])],
    ['\u{1F600}', t([1], [2])],
    ['\uFF01', t([1], [-3])],
  ]);
}

function bitsOf(values: Float32Array): number[] {
  return [...new Uint32Array(values.buffer, values.byteOffset, values.length)];
}

/** A safetensors file from a raw header (object or text), data bytes and an optional lying length. */
function rawSafetensors(header: unknown, data: Uint8Array = new Uint8Array(0), length?: bigint): Uint8Array {
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, length ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

async function writeTemp(bytes: Uint8Array, name = 'bad.safetensors'): Promise<string> {
  const path = join(await freshDir(), name);
  await writeFile(path, bytes);
  return path;
}

/** Reading `bytes` from a file must fail with BAD_SAFETENSORS, a one-line message naming the file and `problem`. */
async function assertRejectsFile(bytes: Uint8Array, problem: RegExp): Promise<void> {
  const path = await writeTemp(bytes);
  for (const read of [readSafetensors, readSafetensorsHeader]) {
    await assert.rejects(read(path), (error: unknown) => {
      assert.ok(error instanceof MeloError, `expected a MeloError, got ${String(error)}`);
      assert.equal(error.code, 'BAD_SAFETENSORS');
      assert.ok(error.message.startsWith(`${path}: `), error.message);
      assert.ok(!error.message.includes('\n'));
      assert.match(error.message, problem);
      return true;
    });
  }
}

describe('half-precision conversion', () => {
  test('float32 → float16 matches known bit patterns, rounding to nearest even', () => {
    const cases: [number, number][] = [
      [1.0, 0x3c00],
      [-2.0, 0xc000],
      [65504, 0x7bff], // largest finite
      [65519.99609375, 0x7bff], // just below the midpoint to infinity
      [65520, 0x7c00], // the midpoint rounds to even, which is infinity
      [1e6, 0x7c00],
      [-1e6, 0xfc00],
      [Number.POSITIVE_INFINITY, 0x7c00],
      [Number.NEGATIVE_INFINITY, 0xfc00],
      [Number.NaN, 0x7e00],
      [0, 0x0000],
      [-0, 0x8000],
      [0.1, 0x2e66],
      [1 / 3, 0x3555],
      [2 ** -14, 0x0400], // smallest normal
      [2 ** -24, 0x0001], // smallest subnormal
      [2 ** -25, 0x0000], // half of it: tie, to even (zero)
      [2 ** -25 * 1.0000001, 0x0001], // just above the tie
      [3 * 2 ** -25, 0x0002], // tie between 1 and 2 units: to even
      [5 * 2 ** -25, 0x0002], // tie between 2 and 3 units: to even
      [1023 * 2 ** -24, 0x03ff], // largest subnormal
      [(1023.5 * 2 ** -24) as number, 0x0400], // tie: carries into the smallest normal
      [1 + 2 ** -11, 0x3c00], // tie between 0x3c00 and 0x3c01: to even
      [1 + 3 * 2 ** -11, 0x3c02], // tie between 0x3c01 and 0x3c02: to even
      [1 + 2 ** -11 + 2 ** -20, 0x3c01], // just above the tie
      [-(2 ** -30), 0x8000], // underflow keeps the sign
    ];
    for (const [value, bits] of cases) {
      assert.equal(float32ToFloat16Bits(value).toString(16), bits.toString(16), `value ${value}`);
    }
  });

  test('every float16 value survives float16 → float32 → float16, and midpoints round to even', () => {
    for (let bits = 0; bits < 0x10000; bits++) {
      const value = float16BitsToFloat32(bits);
      if (Number.isNaN(value)) {
        assert.equal((bits >> 10) & 0x1f, 31);
        continue;
      }
      assert.equal(float32ToFloat16Bits(value), bits);
    }
    const below = new Float32Array(1);
    for (let bits = 0; bits < 0x7bff; bits++) {
      const low = float16BitsToFloat32(bits);
      const high = float16BitsToFloat32(bits + 1);
      const middle = (low + high) / 2; // exact in float32: one more significand bit than float16
      const even = bits % 2 === 0 ? bits : bits + 1;
      assert.equal(float32ToFloat16Bits(middle), even, `midpoint after 0x${bits.toString(16)}`);
      below[0] = middle;
      const middleBits = new Uint32Array(below.buffer);
      middleBits[0] -= 1;
      assert.equal(float32ToFloat16Bits(below[0]), bits);
      middleBits[0] += 2;
      assert.equal(float32ToFloat16Bits(below[0]), bits + 1);
    }
  });

  test('float16 → float32 gives exact values', () => {
    assert.equal(float16BitsToFloat32(0x3c00), 1);
    assert.equal(float16BitsToFloat32(0x7bff), 65504);
    assert.equal(float16BitsToFloat32(0x0001), 2 ** -24);
    assert.equal(float16BitsToFloat32(0x03ff), 1023 * 2 ** -24);
    assert.equal(float16BitsToFloat32(0xc000), -2);
    assert.ok(Object.is(float16BitsToFloat32(0x8000), -0));
    assert.equal(float16BitsToFloat32(0xfc00), Number.NEGATIVE_INFINITY);
    assert.ok(Number.isNaN(float16BitsToFloat32(0x7e00)));
  });

  test('float32 → bfloat16 rounds to nearest even and keeps NaN a NaN', () => {
    const cases: [number, number][] = [
      [1, 0x3f80],
      [1 + 2 ** -8, 0x3f80], // tie: to even
      [1 + 3 * 2 ** -8, 0x3f82], // tie: to even (up)
      [1 + 2 ** -8 + 2 ** -20, 0x3f81],
      [-3.140625, 0xc049],
      [3.4028234663852886e38, 0x7f80], // float32 max rounds up to infinity
      [Number.NEGATIVE_INFINITY, 0xff80],
      [Number.NaN, 0x7fc0],
      [-0, 0x8000],
      [2 ** -149, 0x0000], // float32 subnormal, tie to even
    ];
    for (const [value, bits] of cases) {
      assert.equal(float32ToBfloat16Bits(value).toString(16), bits.toString(16), `value ${value}`);
    }
  });
});

describe('writing matches the reference implementation byte for byte', () => {
  const files: Record<SafetensorsWriteDtype, string> = {
    F32: 'reference_f32.safetensors',
    F16: 'reference_f16.safetensors',
    BF16: 'reference_bf16.safetensors',
  };
  for (const [dtype, name] of Object.entries(files) as [SafetensorsWriteDtype, string][]) {
    test(`${dtype}: encodeSafetensors and writeSafetensors reproduce ${name}`, async () => {
      const expected = new Uint8Array(await readFile(join(fixtures, name)));
      const encoded = encodeSafetensors(referenceInputs(), { dtype, metadata: { format: 'pt' } });
      assert.deepEqual(Buffer.from(encoded), Buffer.from(expected));
      const dir = await freshDir();
      const path = join(dir, 'out.safetensors');
      await writeSafetensors(path, Object.fromEntries(referenceInputs()), {
        dtype,
        metadata: { format: 'pt' },
      });
      assert.deepEqual(await readFile(path), Buffer.from(expected));
      assert.deepEqual(await readdir(dir), ['out.safetensors']);
    });
  }

  test('header JSON keeps integer-like names in byte order and pads with spaces to a multiple of 8', () => {
    const one = hostTensor([1], Float32Array.of(1));
    const bytes = encodeSafetensors(
      new Map([
        ['b', one],
        ['2', one],
        ['10', one],
        ['a', one],
      ]),
      {
        metadata: { z: 'last', '0': 'first' },
      },
    );
    const length = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal(length % 8, 0);
    const header = new TextDecoder().decode(bytes.subarray(8, 8 + length));
    assert.equal(
      header.trimEnd(),
      '{"__metadata__":{"0":"first","z":"last"},' +
        '"10":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},' +
        '"2":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},' +
        '"a":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},' +
        '"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}}',
    );
    assert.match(header, /^[^ ]* {0,7}$/);
    assert.equal(bytes.length, 8 + length + 16);
  });
});

describe('reading', () => {
  test('reference F16 and BF16 files load as the exactly rounded float32 values', async () => {
    const f16 = await readSafetensors(join(fixtures, 'reference_f16.safetensors'));
    assert.deepEqual(f16.metadata, { format: 'pt' });
    assert.deepEqual(
      [...f16.tensors.keys()],
      ['10', 'bias', 'blocks.0.ünï', 'empty', 'scalar', 'weight', '\uFF01', '\u{1F600}'],
    );
    assert.ok([...f16.dtypes.values()].every((d) => d === 'F16'));
    const weight = f16.tensors.get('weight')!;
    assert.deepEqual(weight.shape, [2, 3]);
    assert.deepEqual([...weight.data], [1, -2.5, 0.0999755859375, 0.333251953125, 65504, 65504]);
    assert.deepEqual([...f16.tensors.get('bias')!.data], [Number.POSITIVE_INFINITY, 0, 0, 2 ** -23]);
    assert.deepEqual(bitsOf(f16.tensors.get('blocks.0.ünï')!.data), [0x80000000, 0x7fc00000]);
    assert.deepEqual(f16.tensors.get('scalar')!.shape, []);
    assert.deepEqual([...f16.tensors.get('scalar')!.data], [1.001953125]);
    assert.deepEqual(f16.tensors.get('empty')!.shape, [0, 3]);
    assert.equal(f16.tensors.get('empty')!.data.length, 0);
    assert.deepEqual([...f16.tensors.get('10')!.data], [Infinity, -Infinity, 1023 * 2 ** -24]);

    const bf16 = await readSafetensors(join(fixtures, 'reference_bf16.safetensors'));
    assert.deepEqual(
      [...bf16.tensors.get('weight')!.data],
      [1, -2.5, 0.10009765625, 0.333984375, 65536, 65536],
    );
    assert.deepEqual(
      [...bf16.tensors.get('bias')!.data],
      [65536, 1.0011717677116394e-8, 2 ** -25, 3 * 2 ** -25],
    );
  });

  test('F32 reference file loads bit-exactly', async () => {
    const file = await readSafetensors(join(fixtures, 'reference_f32.safetensors'));
    for (const [name, tensor] of referenceInputs()) {
      assert.deepEqual(file.tensors.get(name)!.shape, tensor.shape);
      assert.deepEqual(bitsOf(file.tensors.get(name)!.data), bitsOf(tensor.data), name);
    }
  });

  test('every supported dtype converts to the float32 value numpy gives', async () => {
    const expected = JSON.parse(await readFile(join(fixtures, 'mixed_dtypes.expected.json'), 'utf8')) as {
      tensors: Record<string, { dtype: string; shape: number[]; values: (number | string)[] }>;
    };
    const path = join(fixtures, 'mixed_dtypes.safetensors');
    const file = await readSafetensors(path);
    assert.deepEqual(file.metadata, { source: 'numpy' });
    assert.equal(file.tensors.size, 13);
    for (const [name, want] of Object.entries(expected.tensors)) {
      const tensor = file.tensors.get(name);
      assert.ok(tensor, name);
      assert.equal(file.dtypes.get(name), want.dtype);
      assert.deepEqual(tensor.shape, want.shape, name);
      const values = want.values.map((v) => (typeof v === 'string' ? Number(v) : v));
      assert.deepEqual([...tensor.data], values, name);
    }
    const inMemory = decodeSafetensors(new Uint8Array(await readFile(path)), 'upload');
    assert.equal(inMemory.path, 'upload');
    assert.deepEqual([...inMemory.tensors.entries()], [...file.tensors.entries()]);
  });

  test('readSafetensorsHeader describes tensors without loading data', async () => {
    const header = await readSafetensorsHeader(join(fixtures, 'reference_f32.safetensors'));
    assert.equal(header.fileSize, 592);
    assert.equal(header.headerLength, 512);
    assert.equal(header.dataStart, 520);
    assert.deepEqual(header.metadata, { format: 'pt' });
    assert.deepEqual(header.tensors.get('weight'), {
      name: 'weight',
      dtype: 'F32',
      shape: [2, 3],
      dataOffsets: [40, 64],
    });
    assert.deepEqual(
      [...header.tensors.values()].map((t) => t.dataOffsets[0]),
      [0, 12, 28, 36, 36, 40, 64, 68],
    );
  });

  test('F32, F16 and BF16 round trips through a file', async () => {
    const dir = await freshDir();
    const values = Float32Array.of(0.5, -1.25, 3.0000001, 1e-7, 70000);
    const tensors = { 'a.weight': hostTensor([5], values) };
    const expectations: [SafetensorsWriteDtype, number[]][] = [
      ['F32', [...values]],
      ['F16', [0.5, -1.25, 3, 1.1920928955078125e-7, Number.POSITIVE_INFINITY]],
      ['BF16', [0.5, -1.25, 3, 1.0011717677116394e-7, 70144]],
    ];
    for (const [dtype, want] of expectations) {
      const path = join(dir, `${dtype}.safetensors`);
      await writeSafetensors(path, tensors, { dtype, metadata: { step: '12' } });
      const file = await readSafetensors(path);
      assert.equal(file.dtypes.get('a.weight'), dtype);
      assert.deepEqual(file.metadata, { step: '12' });
      assert.deepEqual([...file.tensors.get('a.weight')!.data], want, dtype);
    }
  });
});

describe('sharded checkpoints', () => {
  const one = (v: number) => hostTensor([2], Float32Array.of(v, -v));

  async function shardedDir(weightMap: Record<string, string>, shards: Record<string, string[]>) {
    const dir = await freshDir();
    for (const [file, names] of Object.entries(shards)) {
      await writeSafetensors(join(dir, file), new Map(names.map((name, i) => [name, one(i + 1)])), {
        metadata: { shard: file },
      });
    }
    await writeFile(
      join(dir, SAFETENSORS_INDEX_FILE),
      JSON.stringify({ metadata: { total_size: 48 }, weight_map: weightMap }),
    );
    return dir;
  }

  test('an index merges its shards', async () => {
    const dir = await shardedDir(
      {
        'a.w': 'model-00001-of-00002.safetensors',
        'a.b': 'model-00001-of-00002.safetensors',
        'c.w': 'model-00002-of-00002.safetensors',
      },
      { 'model-00001-of-00002.safetensors': ['a.w', 'a.b'], 'model-00002-of-00002.safetensors': ['c.w'] },
    );
    const checkpoint = await readSafetensorsDir(dir);
    assert.deepEqual([...checkpoint.tensors.keys()].sort(), ['a.b', 'a.w', 'c.w']);
    assert.deepEqual([...checkpoint.tensors.get('a.b')!.data], [2, -2]);
    assert.deepEqual([...checkpoint.tensors.get('c.w')!.data], [1, -1]);
    assert.equal(checkpoint.shards.length, 2);
    assert.deepEqual(checkpoint.metadata, { shard: 'model-00001-of-00002.safetensors' });
    const viaIndex = await readCheckpointTensors(join(dir, SAFETENSORS_INDEX_FILE));
    assert.deepEqual([...viaIndex.tensors.keys()].sort(), ['a.b', 'a.w', 'c.w']);
  });

  test('a directory with model.safetensors, or a file, loads directly', async () => {
    const dir = await freshDir();
    await writeSafetensors(join(dir, 'model.safetensors'), { x: one(3) });
    const checkpoint = await readCheckpointTensors(dir);
    assert.deepEqual([...checkpoint.tensors.get('x')!.data], [3, -3]);
    assert.deepEqual(checkpoint.shards, [join(dir, 'model.safetensors')]);
    const single = await readCheckpointTensors(join(dir, 'model.safetensors'));
    assert.deepEqual([...single.tensors.keys()], ['x']);
    await assert.rejects(readSafetensorsDir(await freshDir()), (error: unknown) => {
      assert.ok(error instanceof MeloError);
      assert.equal(error.code, 'NOT_FOUND');
      assert.match(
        error.message,
        /: no model\.safetensors\.index\.json or model\.safetensors in the directory$/,
      );
      return true;
    });
  });

  const badCases: [string, Record<string, string>, Record<string, string[]>, RegExp][] = [
    [
      'a mapped tensor missing from its shard',
      { a: 's1.safetensors', b: 's1.safetensors' },
      { 's1.safetensors': ['a'] },
      /tensor 'b' is mapped to shard 's1\.safetensors' but is not in it/,
    ],
    [
      'a tensor duplicated in another shard',
      { a: 's1.safetensors', b: 's2.safetensors' },
      { 's1.safetensors': ['a', 'b'], 's2.safetensors': ['b'] },
      /tensor 'b' is duplicated: shard 's1\.safetensors' holds it but the weight_map puts it in 's2\.safetensors'/,
    ],
    [
      'a tensor the index omits',
      { a: 's1.safetensors' },
      { 's1.safetensors': ['a', 'z'] },
      /shard 's1\.safetensors' holds tensor 'z', which the weight_map omits/,
    ],
    [
      'a missing shard',
      { a: 's1.safetensors', b: 'gone.safetensors' },
      { 's1.safetensors': ['a'] },
      /shard 'gone\.safetensors' listed in the weight_map does not exist/,
    ],
    [
      'a shard outside the directory',
      { a: '../s1.safetensors' },
      {},
      /weight_map entry 'a' points outside the directory: '\.\.\/s1\.safetensors'/,
    ],
    ['an empty weight_map', {}, {}, /weight_map is empty/],
  ];
  for (const [what, weightMap, shards, problem] of badCases) {
    test(`an index with ${what} is refused, naming the index`, async () => {
      const dir = await shardedDir(weightMap, shards);
      await assert.rejects(readSafetensorsDir(dir), (error: unknown) => {
        assert.ok(error instanceof MeloError);
        assert.equal(error.code, 'BAD_SAFETENSORS');
        assert.ok(error.message.startsWith(`${join(dir, SAFETENSORS_INDEX_FILE)}: `), error.message);
        assert.match(error.message, problem);
        return true;
      });
    });
  }

  test('an index that is not JSON or has no weight_map is refused', async () => {
    const dir = await freshDir();
    await writeFile(join(dir, SAFETENSORS_INDEX_FILE), '{"weight_map": ');
    await assert.rejects(readSafetensorsDir(dir), /index\.json: shard index is not valid JSON/);
    await writeFile(join(dir, SAFETENSORS_INDEX_FILE), '{"metadata": {}}');
    await assert.rejects(readSafetensorsDir(dir), /index\.json: shard index has no "weight_map" object/);
  });
});

describe('malformed files are refused with a message naming the file and the problem', () => {
  const f32 = (shape: number[], begin: number, end: number) => ({
    dtype: 'F32',
    shape,
    data_offsets: [begin, end],
  });

  test('a file shorter than 8 bytes', async () => {
    await assertRejectsFile(new Uint8Array(5), /file is 5 bytes, too short for the 8-byte header length/);
  });

  test('a header length that runs past the end of the file', async () => {
    await assertRejectsFile(
      rawSafetensors({}, new Uint8Array(0), 1000n),
      /header length 1000 runs past the end of the file \(2 bytes follow/,
    );
  });

  test('a huge header length, refused before anything is allocated', async () => {
    await assertRejectsFile(
      rawSafetensors({}, new Uint8Array(0), 2n ** 62n),
      /header length 4611686018427387904 exceeds the 100000000-byte limit/,
    );
  });

  test('a truncated file', async () => {
    const good = encodeSafetensors({ w: hostTensor([2, 2], Float32Array.of(1, 2, 3, 4)) });
    await assertRejectsFile(
      good.subarray(0, good.length - 3),
      /tensor 'w': data_offsets \[0, 16\] run past the end of the data section \(13 bytes\)/,
    );
    await assertRejectsFile(good.subarray(0, 20), /header length \d+ runs past the end of the file/);
  });

  test('a header that is not UTF-8, not JSON or not an object', async () => {
    const invalidUtf8 = rawSafetensors('{"a":1}');
    invalidUtf8[10] = 0xff;
    await assertRejectsFile(invalidUtf8, /header is not valid UTF-8/);
    await assertRejectsFile(rawSafetensors('{"a": {'), /header is not valid JSON \(/);
    await assertRejectsFile(rawSafetensors('[1, 2]'), /header is not a JSON object/);
    await assertRejectsFile(rawSafetensors('null'), /header is not a JSON object/);
  });

  test('unknown and unsupported dtypes', async () => {
    await assertRejectsFile(
      rawSafetensors({ w: { dtype: 'Q4', shape: [1], data_offsets: [0, 1] } }, new Uint8Array(1)),
      /tensor 'w': unknown dtype "Q4"/,
    );
    await assertRejectsFile(
      rawSafetensors({ w: { dtype: 'F8_E4M3', shape: [1], data_offsets: [0, 1] } }, new Uint8Array(1)),
      /tensor 'w': dtype F8_E4M3 is not supported/,
    );
    await assertRejectsFile(
      rawSafetensors({ w: { shape: [1], data_offsets: [0, 1] } }, new Uint8Array(1)),
      /tensor 'w': dtype is missing/,
    );
  });

  test('bad shapes and data_offsets', async () => {
    const data = new Uint8Array(8);
    await assertRejectsFile(
      rawSafetensors({ w: f32([2, -1], 0, 8) }, data),
      /tensor 'w': shape must be an array of non-negative integers, got \[2,-1\]/,
    );
    await assertRejectsFile(
      rawSafetensors({ w: f32([1.5], 0, 8) }, data),
      /shape must be an array of non-negative integers/,
    );
    await assertRejectsFile(
      rawSafetensors({ w: { dtype: 'F32', shape: '2', data_offsets: [0, 8] } }, data),
      /shape must be an array/,
    );
    await assertRejectsFile(
      rawSafetensors({ w: { dtype: 'F32', shape: [2], data_offsets: [0, 4, 8] } }, data),
      /tensor 'w': data_offsets must be \[begin, end\]/,
    );
    await assertRejectsFile(
      rawSafetensors({ w: { dtype: 'F32', shape: [0], data_offsets: [8, 0] } }, data),
      /data_offsets must be \[begin, end\] with integers 0 <= begin <= end, got \[8,0\]/,
    );
    await assertRejectsFile(
      rawSafetensors({ w: { dtype: 'F32', shape: [2], data_offsets: ['0', '8'] } }, data),
      /data_offsets must be/,
    );
    await assertRejectsFile(rawSafetensors({ w: 'F32' }, data), /tensor 'w': entry is not an object/);
  });

  test('shape and byte range disagree', async () => {
    await assertRejectsFile(
      rawSafetensors({ w: f32([2, 3], 0, 20) }, new Uint8Array(20)),
      /tensor 'w': shape \[2, 3\] of F32 needs 24 bytes but data_offsets \[0, 20\] hold 20/,
    );
  });

  test('offsets outside the data section', async () => {
    await assertRejectsFile(
      rawSafetensors({ w: f32([4], 0, 16) }, new Uint8Array(8)),
      /tensor 'w': data_offsets \[0, 16\] run past the end of the data section \(8 bytes\)/,
    );
  });

  test('overlapping ranges', async () => {
    await assertRejectsFile(
      rawSafetensors({ a: f32([4], 0, 16), b: f32([4], 8, 24) }, new Uint8Array(24)),
      /tensors 'a' \[0, 16\] and 'b' \[8, 24\] have overlapping data_offsets/,
    );
    await assertRejectsFile(
      rawSafetensors({ a: f32([2], 0, 8), b: f32([2], 0, 8) }, new Uint8Array(8)),
      /overlapping data_offsets/,
    );
  });

  test('gaps and trailing bytes in the data section', async () => {
    await assertRejectsFile(
      rawSafetensors({ a: f32([1], 0, 4), b: f32([1], 8, 12) }, new Uint8Array(12)),
      /bytes \[4, 8\) of the data section belong to no tensor \(gap before 'b'\)/,
    );
    await assertRejectsFile(
      rawSafetensors({ a: f32([1], 4, 8) }, new Uint8Array(8)),
      /bytes \[0, 4\) of the data section belong to no tensor/,
    );
    await assertRejectsFile(
      rawSafetensors({ a: f32([1], 0, 4) }, new Uint8Array(8)),
      /the last 4 bytes of the data section belong to no tensor/,
    );
  });

  test('metadata that is not string to string', async () => {
    await assertRejectsFile(
      rawSafetensors({ __metadata__: { epochs: 3 } }),
      /__metadata__ value for 'epochs' is not a string/,
    );
    await assertRejectsFile(
      rawSafetensors({ __metadata__: ['a'] }),
      /__metadata__ must be an object of strings/,
    );
  });

  test('BOOL bytes other than 0 and 1 (found when the data is read)', async () => {
    const path = await writeTemp(
      rawSafetensors({ m: { dtype: 'BOOL', shape: [3], data_offsets: [0, 3] } }, Uint8Array.of(1, 0, 2)),
    );
    await assert.rejects(readSafetensors(path), (error: unknown) => {
      assert.ok(error instanceof MeloError);
      assert.equal(error.message, `${path}: tensor 'm': BOOL element 2 is byte 2, expected 0 or 1`);
      return true;
    });
  });

  test('a missing file is NOT_FOUND', async () => {
    const path = join(root, 'nope.safetensors');
    await assert.rejects(readSafetensors(path), (error: unknown) => {
      assert.ok(error instanceof MeloError);
      assert.equal(error.code, 'NOT_FOUND');
      assert.equal(error.message, `${path}: no such file`);
      return true;
    });
  });
});

describe('the writer refuses bad input without leaving a file', () => {
  test('data that does not match the shape, a reserved name or an unknown dtype', async () => {
    const dir = await freshDir();
    const path = join(dir, 'adapter.safetensors');
    const bad = { w: { shape: [2, 2], data: new Float32Array(3) } };
    await assert.rejects(
      writeSafetensors(path, bad),
      /adapter\.safetensors: tensor 'w' has 3 float32 values but shape \[2, 2\] needs 4/,
    );
    await assert.rejects(
      writeSafetensors(path, { __metadata__: hostTensor([1]) }),
      /'__metadata__' cannot name a tensor/,
    );
    await assert.rejects(
      writeSafetensors(path, { w: hostTensor([1]) }, { dtype: 'F64' as SafetensorsWriteDtype }),
      /cannot write safetensors dtype F64/,
    );
    await assert.rejects(
      writeSafetensors(path, { w: { shape: [-1], data: new Float32Array(0) } }),
      /tensor 'w' has an invalid shape \[-1\]/,
    );
    assert.deepEqual(await readdir(dir), []);
  });
});
