/**
 * Files from strangers: adapters, backbones, archives and datasets built to hang, crash or quietly corrupt
 * melo. Every case is built here from bytes (nothing large is committed) and must fail with one clear line,
 * quickly, or be handled correctly.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { crc32, deflateRawSync, constants as zlibConstants } from 'node:zlib';
import sharp from 'sharp';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { decodeSafetensors, readSafetensors, writeSafetensors } from '../src/checkpoints/safetensors.ts';
import { checkDataset, formatDataCheckReport } from '../src/data/check.ts';
import { parseNpy } from '../src/data/npy.ts';
import { readNpz } from '../src/data/npz.ts';
import { openDataSplits } from '../src/data/open.ts';
import { MeloError } from '../src/errors.ts';
import { adapterHeaderLimit, loadAdapter, saveAdapter, targetsFromField } from '../src/io/peft.ts';
import { initAdapter } from '../src/model/adapter.ts';
import { MELO_LORA_DEFAULTS } from '../src/model/lora-config.ts';
import { toMultilabelPrediction, toPrediction } from '../src/predict.ts';
import { AdapterRegistry } from '../src/serve/engine/registry.ts';
import { type HostTensor, hostTensor } from '../src/tensor.ts';
import { Random } from '../src/util/random.ts';
import { runCli } from './helpers/cli.ts';
import { npyBytes, npzBytes } from './helpers/npz.ts';

const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;
const ADAPTER = join(FIXTURES, 'lora_adapter');
let dir = '';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-hostile-'));
});
after(() => rm(dir, { recursive: true, force: true }));

/** A copy of the fixture adapter with its adapter_config.json changed by `edit`. */
async function adapterWithConfig(
  name: string,
  edit: (config: Record<string, unknown>) => void,
): Promise<string> {
  const target = join(dir, name);
  await cp(ADAPTER, target, { recursive: true });
  const configPath = join(target, 'adapter_config.json');
  const config = JSON.parse(await readFile(configPath, 'utf8')) as Record<string, unknown>;
  edit(config);
  await writeFile(configPath, JSON.stringify(config));
  return target;
}

const CONFIG = '/x/adapter_config.json';

// ---------------------------------------------------------------------------------------------------------
// 1. target_modules patterns

test('target_modules: a catastrophic-backtracking pattern answers at once with PEFT full-match semantics', async (t) => {
  const pattern = '(([a-z.0-9_])+)+Z|.*\\.(query|value)';
  // RegExp needs exponential time on the module names (it hung `melo adapter inspect` for ever).
  const started = performance.now();
  assert.deepEqual(targetsFromField(pattern, CONFIG), ['query', 'value']);
  const elapsed = performance.now() - started;
  t.diagnostic(`ReDoS pattern matched in ${elapsed.toFixed(1)} ms`);
  assert.ok(elapsed < 1000);

  // The real command in a child process, with a kill timer: it must answer, not hang.
  const hostile = await adapterWithConfig('redos', (config) => {
    config.target_modules = pattern;
  });
  const result = await runCli(['adapter', 'inspect', hostile, '--json'], { timeoutMs: 60_000 });
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /query/);
});

test('target_modules: PEFT semantics (string = full match, list = suffix match)', () => {
  assert.deepEqual(targetsFromField('.*\\.(query|value)', CONFIG), ['query', 'value']);
  // A string is matched against the whole module path: a bare name matches nothing.
  assert.deepEqual(targetsFromField('query', CONFIG), []);
  assert.deepEqual(targetsFromField('.*attention\\.(query|key|value)', CONFIG), ['query', 'key', 'value']);
  assert.deepEqual(
    targetsFromField('.*\\.encoder\\.layer\\.\\d+\\.(intermediate\\.dense|output\\.dense)', CONFIG),
    ['fc1', 'fc2'],
  );
  // Full match, not search: a pattern matching only a prefix of the path does not select it.
  assert.deepEqual(targetsFromField('vit\\.encoder', CONFIG), []);
  // A list is matched as suffixes at module-name boundaries.
  assert.deepEqual(targetsFromField(['query', 'value'], CONFIG), ['query', 'value']);
  assert.deepEqual(targetsFromField(['dense'], CONFIG), ['output', 'fc1', 'fc2']);
  assert.deepEqual(targetsFromField(['output.dense'], CONFIG), ['output', 'fc2']);
  assert.deepEqual(targetsFromField(['uery'], CONFIG), []);
});

test('target_modules: patterns RE2 cannot run in linear time, or absurdly long, are refused with one line', () => {
  for (const pattern of ['(query)\\1', '.*(?=query)query', '.*(?<!key)value']) {
    assert.throws(
      () => targetsFromField(pattern, CONFIG),
      (error: unknown) =>
        error instanceof MeloError &&
        error.code === 'BAD_ADAPTER' &&
        error.message.startsWith(`${CONFIG}: target_modules is not a regular expression melo can match`) &&
        !error.message.includes('\n'),
    );
  }
  assert.throws(
    () => targetsFromField(`.*${'a?'.repeat(5000)}`, CONFIG),
    /target_modules pattern is 10002 characters long \(at most 4096\)/,
  );
  assert.throws(() => targetsFromField(42, CONFIG), /target_modules must be a list/);
});

test('loadAdapter reads an adapter whose target_modules is a PEFT regular expression', async () => {
  const path = await adapterWithConfig('regex', (config) => {
    config.target_modules = '.*\\.encoder\\.layer\\.\\d+\\.attention\\.attention\\.(query|value)';
  });
  const adapter = await loadAdapter(path);
  assert.deepEqual(adapter.lora.targets, ['query', 'value']);
  assert.equal(adapter.pairs.size, 4);
});

// ---------------------------------------------------------------------------------------------------------
// 2. Non-finite numbers

/** Copies `from` to `name` and rewrites one safetensors file in it with `edit` applied to its tensors. */
async function withEditedTensors(
  from: string,
  name: string,
  file: string,
  edit: (tensors: Map<string, HostTensor>) => void,
): Promise<string> {
  const target = join(dir, name);
  await cp(from, target, { recursive: true });
  const path = join(target, file);
  const read = await readSafetensors(path);
  edit(read.tensors);
  await writeSafetensors(path, read.tensors, { metadata: read.metadata });
  return target;
}

test('an adapter with a NaN head bias, an Inf or an absurd LoRA value is refused at load, naming the tensor', async () => {
  const nan = await withEditedTensors(ADAPTER, 'nan-adapter', 'adapter_model.safetensors', (tensors) => {
    tensors.get('base_model.model.classifier.bias')!.data[1] = Number.NaN;
  });
  await assert.rejects(
    loadAdapter(nan),
    (error: unknown) =>
      error instanceof MeloError &&
      error.code === 'BAD_ADAPTER' &&
      error.message ===
        `${join(nan, 'adapter_model.safetensors')}: tensor 'base_model.model.classifier.bias' holds NaN (element 1): refusing non-finite or absurd weights`,
  );
  const huge = await withEditedTensors(ADAPTER, 'huge-adapter', 'adapter_model.safetensors', (tensors) => {
    for (const [name, tensor] of tensors) if (name.endsWith('lora_A.weight')) tensor.data[0] = -3e30;
  });
  await assert.rejects(
    loadAdapter(huge),
    /holds value -3\.000e\+30 beyond ±1e\+6 \(element 0\); 3 more tensors too/,
  );

  // The real commands: predict exits non-zero with one line and prints no probabilities.
  const image = join(dir, 'gray.png');
  await sharp(Buffer.alloc(32 * 32, 128), { raw: { width: 32, height: 32, channels: 1 } })
    .png()
    .toFile(image);
  const result = await runCli([
    'predict',
    '--backbone',
    join(FIXTURES, 'hf'),
    '--adapter',
    nan,
    image,
    '--json',
  ]);
  assert.notEqual(result.code, 0);
  assert.equal(result.stdout, '');
  assert.match(result.stderr, /classifier\.bias' holds NaN/);
  assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
});

test('a backbone with one Inf weight is refused at load, naming the tensor as the file does', async () => {
  const inf = await withEditedTensors(
    join(FIXTURES, 'hf'),
    'inf-backbone',
    'model.safetensors',
    (tensors) => {
      tensors.get('vit.encoder.layer.1.attention.attention.value.weight')!.data[5] = Number.POSITIVE_INFINITY;
    },
  );
  await assert.rejects(
    loadBackbone(inf),
    (error: unknown) =>
      error instanceof MeloError &&
      error.code === 'BAD_CHECKPOINT' &&
      /tensor 'vit\.encoder\.layer\.1\.attention\.attention\.value\.weight' holds Infinity \(element \d+\)/.test(
        error.message,
      ),
  );
});

test('no prediction is ever made from non-finite logits', () => {
  assert.throws(
    () => toPrediction('x.png', 'breast', ['a', 'b'], [Number.NaN, 0]),
    /^MeloError: x\.png: task 'breast': the model's output 0 is NaN/,
  );
  assert.throws(
    () => toMultilabelPrediction('x.png', 't', ['a', 'b'], [0, Number.POSITIVE_INFINITY]),
    /output 1 is Infinity/,
  );
  assert.deepEqual(toPrediction('x.png', 't', ['a', 'b'], [0, 0]).probabilities, [0.5, 0.5]);
});

test('data check reports all-NaN images as non-finite and does not overflow on 200,000 constant images', async (t) => {
  const nanImages = new Float32Array(4 * 8 * 8).fill(Number.NaN);
  nanImages.fill(0.25, 3 * 64); // the last image is fine but constant
  const nanPath = join(dir, 'nan.npz');
  await writeFile(
    nanPath,
    npzBytes({
      train_images: { values: nanImages, shape: [4, 8, 8] },
      train_labels: { values: new Uint8Array([0, 1, 0, 1]), shape: [4, 1] },
    }),
  );
  const report = await checkDataset(await openDataSplits(nanPath));
  assert.deepEqual(report.issues.map((issue) => [issue.id, issue.kind, issue.detail]).sort(), [
    ...[0, 1, 2].map((i) => [
      `${nanPath}#train/${i}`,
      'non-finite-pixels',
      '64 of 64 values are NaN or infinite (first: NaN)',
    ]),
    [`${nanPath}#train/3`, 'constant-image', 'every pixel is 0.2500'],
  ]);

  // 200,000 constant 8×8 images: about 13 KB compressed. `issues.push(...many)` overflowed the stack.
  const count = 200_000;
  const manyPath = join(dir, 'many.npz');
  const bytes = npzBytes({
    train_images: { values: new Uint8Array(count * 64), shape: [count, 8, 8] },
    train_labels: { values: new Uint8Array(count).map((_, i) => i % 2), shape: [count, 1] },
  });
  assert.ok(bytes.byteLength < 100_000, `${bytes.byteLength} bytes`);
  await writeFile(manyPath, bytes);
  const checkStarted = performance.now();
  const many = await checkDataset(await openDataSplits(manyPath));
  t.diagnostic(`200,000-image check in ${((performance.now() - checkStarted) / 1000).toFixed(1)} s`);
  assert.equal(many.issues.length, count);
  assert.ok(many.issues.every((issue) => issue.kind === 'constant-image'));
  const text = formatDataCheckReport(many);
  const lines = text.trim().split('\n');
  assert.equal(lines.filter((line) => line.includes('\tconstant-image\t')).length, 100);
  assert.ok(
    lines.includes(`… and ${count - 100} more (${count - 100} constant-image); --json lists them all`),
  );
  assert.equal(lines.at(-1), `${count} problems found`);
});

// ---------------------------------------------------------------------------------------------------------
// 5. .npz archives

/** A raw deflate stream of `chunks` × 16 MiB of zeros, built from one sync-flushed chunk (≈16 KB each). */
function zerosDeflated(chunks: number): Uint8Array {
  const chunk = deflateRawSync(Buffer.alloc(16 * 1024 * 1024), { finishFlush: zlibConstants.Z_SYNC_FLUSH });
  const end = deflateRawSync(Buffer.alloc(0));
  return Buffer.concat([...Array.from({ length: chunks }, () => chunk), end]);
}

/** A one-member zip whose directory says what `declared` says, around the given (compressed) data. */
function zipWith(
  name: string,
  data: Uint8Array,
  declared: { size: number; crc: number; method: 0 | 8 },
): Uint8Array {
  const nameBytes = new TextEncoder().encode(name);
  const local = Buffer.alloc(30 + nameBytes.length);
  local.writeUInt32LE(0x04034b50, 0);
  local.writeUInt16LE(20, 4);
  local.writeUInt16LE(declared.method, 8);
  local.writeUInt32LE(declared.crc, 14);
  local.writeUInt32LE(data.length, 18);
  local.writeUInt32LE(declared.size, 22);
  local.writeUInt16LE(nameBytes.length, 26);
  local.set(nameBytes, 30);
  const central = Buffer.alloc(46 + nameBytes.length);
  central.writeUInt32LE(0x02014b50, 0);
  central.writeUInt16LE(20, 4);
  central.writeUInt16LE(20, 6);
  central.writeUInt16LE(declared.method, 10);
  central.writeUInt32LE(declared.crc, 16);
  central.writeUInt32LE(data.length, 20);
  central.writeUInt32LE(declared.size, 24);
  central.writeUInt16LE(nameBytes.length, 28);
  central.writeUInt32LE(0, 42);
  central.set(nameBytes, 46);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(1, 8);
  end.writeUInt16LE(1, 10);
  end.writeUInt32LE(central.length, 12);
  end.writeUInt32LE(local.length + data.length, 16);
  return Buffer.concat([local, data, central, end]);
}

/** Runs `body` (ESM, may import from src/ by absolute path) in a child process; returns its JSON output. */
async function inChild(body: string): Promise<Record<string, unknown>> {
  const script = join(dir, `child-${Math.random().toString(16).slice(2)}.mts`);
  await writeFile(script, body);
  const { stdout, stderr, code } = await new Promise<{ stdout: string; stderr: string; code: number | null }>(
    (resolve) => {
      const child = spawn(process.execPath, ['--import', 'tsx', script], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      let err = '';
      child.stdout.on('data', (chunk) => (out += chunk));
      child.stderr.on('data', (chunk) => (err += chunk));
      const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
      child.on('close', (exit) => {
        clearTimeout(timer);
        resolve({ stdout: out, stderr: err, code: exit });
      });
    },
  );
  assert.equal(code, 0, stderr);
  return JSON.parse(stdout) as Record<string, unknown>;
}

const SRC = new URL('../src/', import.meta.url).pathname;

test('.npz: a 1.5 MB zip of 1.5 GB of zeros is refused at once, and a lying size stops inflation', async (t) => {
  const stream = zerosDeflated(96); // 1.5 GiB of zeros
  assert.ok(stream.length < 2_000_000, `${stream.length} bytes`);
  const honest = join(dir, 'bomb-honest.npz');
  await writeFile(
    honest,
    zipWith('train_images.npy', stream, { size: 96 * 16 * 1024 * 1024, crc: 0, method: 8 }),
  );
  // Declares less than the ratio floor, inflates to 1.5 GiB: zlib stops one byte past the declared 60 MiB.
  const lying = join(dir, 'bomb-lying.npz');
  await writeFile(lying, zipWith('train_images.npy', stream, { size: 60 * 1024 * 1024, crc: 0, method: 8 }));
  const result = await inChild(`
    import { readNpz } from '${SRC}data/npz.ts';
    const before = process.memoryUsage().rss;
    const outcome = {};
    for (const [key, path] of [['honest', '${honest}'], ['lying', '${lying}']]) {
      const started = performance.now();
      try { await readNpz(path); outcome[key] = 'read'; } catch (error) { outcome[key] = error.message; }
      outcome[key + 'Ms'] = performance.now() - started;
    }
    outcome.peakGrowth = process.resourceUsage().maxRSS * 1024 - before;
    console.log(JSON.stringify(outcome));
  `);
  t.diagnostic(
    `bomb refused in ${Number(result.honestMs).toFixed(0)} ms, lying member in ${Number(result.lyingMs).toFixed(0)} ms, peak RSS growth ${(Number(result.peakGrowth) / 2 ** 20).toFixed(0)} MiB`,
  );
  assert.match(
    String(result.honest),
    /member 'train_images\.npy' declares 1610612736 bytes from \d+ compressed \(\d+x; at most 100x for members over 67108864 bytes\): a decompression bomb\?/,
  );
  assert.ok(String(result.honest).startsWith(`${honest}: `));
  assert.equal(
    String(result.lying),
    `${lying}/train_images.npy: inflates to more than the 62914560 bytes it declares`,
  );
  assert.ok(Number(result.honestMs) < 1000 && Number(result.lyingMs) < 5000);
  assert.ok(Number(result.peakGrowth) < 300 * 2 ** 20, `peak RSS grew ${result.peakGrowth} bytes`);
});

test('.npz: a flipped byte under an intact CRC, a short member and duplicate names are refused', async () => {
  const npy = npyBytes(new Uint8Array(64).fill(7), [1, 8, 8]);
  const crc = crc32(npy) >>> 0;
  const flipped = Uint8Array.from(npy);
  flipped[100] ^= 0x01;
  await assert.rejects(
    readNpz(await bytesFile('flipped.npz', zipWith('a.npy', flipped, { size: npy.length, crc, method: 0 }))),
    /flipped\.npz\/a\.npy: CRC-32 [0-9a-f]{8} differs from the archive's [0-9a-f]{8}: the member is damaged$/,
  );
  const deflated = deflateRawSync(npy);
  await assert.rejects(
    readNpz(
      await bytesFile('short.npz', zipWith('a.npy', deflated, { size: npy.length + 10, crc, method: 8 })),
    ),
    /short\.npz\/a\.npy: holds 192 bytes but declares 202$/,
  );
  // The intact archive reads.
  const good = await readNpz(
    await bytesFile('good.npz', zipWith('a.npy', deflated, { size: npy.length, crc, method: 8 })),
  );
  assert.deepEqual([...good.get('a')!.data], new Array(64).fill(7));

  // Two members with one name: renaming b.npy to a.npy in place, in both headers.
  const two = npzBytes({
    a: { values: new Uint8Array(4), shape: [4] },
    b: { values: new Uint8Array(4).fill(1), shape: [4] },
  });
  const patched = Buffer.from(two);
  for (let i = 0; i + 5 <= patched.length; i++)
    if (patched.toString('latin1', i, i + 5) === 'b.npy') patched.write('a.npy', i, 'latin1');
  await assert.rejects(
    readNpz(await bytesFile('dup.npz', patched)),
    /dup\.npz: not a readable \.npz \(zip\) archive: two members are named 'a\.npy'$/,
  );
});

async function bytesFile(name: string, bytes: Uint8Array): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, bytes);
  return path;
}

// ---------------------------------------------------------------------------------------------------------
// 7. Huge headers and long lists

/** Raw safetensors bytes whose header lists `count` empty F32 tensors named by `name(i)`. */
function manyNamesSafetensors(count: number, name: (i: number) => string): Uint8Array {
  const entries = Array.from(
    { length: count },
    (_, i) => `${JSON.stringify(name(i))}:{"dtype":"F32","shape":[0],"data_offsets":[0,0]}`,
  );
  const json = Buffer.from(`{${entries.join(',')}}`);
  const out = Buffer.alloc(8 + json.length);
  out.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(out, 8);
  return out;
}

test('an adapter header listing a million tensor names is refused before it is parsed', async (t) => {
  const path = join(dir, 'million');
  await cp(ADAPTER, path, { recursive: true });
  const bytes = manyNamesSafetensors(1_000_000, (i) => `base_model.model.junk.${i}.weight`);
  await writeFile(join(path, 'adapter_model.safetensors'), bytes);
  const started = performance.now();
  await assert.rejects(loadAdapter(path), (error: unknown) => {
    assert.ok(error instanceof MeloError);
    assert.equal(
      error.message,
      `${join(path, 'adapter_model.safetensors')}: header length ${bytes.length - 8} exceeds the ${adapterHeaderLimit(2, undefined)} bytes the expected tensors need (corrupt or crafted)`,
    );
    return true;
  });
  const elapsed = performance.now() - started;
  t.diagnostic(`${bytes.length}-byte header refused in ${elapsed.toFixed(1)} ms`);
  assert.ok(elapsed < 1000);
});

test('errors about many unexpected tensors name five and count the rest', async () => {
  const path = join(dir, 'unexpected');
  await cp(ADAPTER, path, { recursive: true });
  const original = await readSafetensors(join(ADAPTER, 'adapter_model.safetensors'));
  const tensors = new Map(original.tensors);
  for (let i = 0; i < 5000; i++) tensors.set(`junk.${i}.${'x'.repeat(i === 0 ? 300 : 1)}`, hostTensor([0]));
  await writeSafetensors(join(path, 'adapter_model.safetensors'), tensors);
  await assert.rejects(loadAdapter(path), (error: unknown) => {
    assert.ok(error instanceof MeloError);
    assert.ok(error.message.length < 600, `${error.message.length} characters`);
    assert.match(
      error.message,
      /: 5000 unexpected tensors: junk\.0\.x{73}… \(307 characters\), junk\.1\.x, junk\.10\.x, junk\.100\.x, junk\.1000\.x and 4995 more$/,
    );
    return true;
  });
});

// ---------------------------------------------------------------------------------------------------------
// 8. eval outputs

test('eval --report and --predictions work for classes named constructor and toString', async () => {
  const root = join(dir, 'proto-classes');
  const names = ['constructor', 'toString'];
  for (const [k, name] of names.entries()) {
    await mkdir(join(root, 'test', name), { recursive: true });
    for (let j = 0; j < 3; j++) {
      const pixels = Buffer.from(
        Array.from({ length: 24 * 24 * 3 }, (_, i) => (i * (17 + j * 5) + k * 91) % 256),
      );
      await sharp(pixels, { raw: { width: 24, height: 24, channels: 3 } })
        .png()
        .toFile(join(root, 'test', name, `${j}.png`));
    }
  }
  const backbone = await loadBackbone(join(FIXTURES, 'hf'));
  const adapterDir = join(dir, 'proto-adapter');
  const metadata = {
    task: 'proto',
    taskType: 'binary' as const,
    labels: names,
    backboneFingerprint: backbone.fingerprint,
  };
  await saveAdapter(adapterDir, initAdapter(backbone.config, MELO_LORA_DEFAULTS, metadata, new Random(2)));
  const report = join(dir, 'proto.html');
  const predictions = join(dir, 'proto.csv');
  const result = await runCli([
    'eval',
    '--backbone',
    join(FIXTURES, 'hf'),
    '--adapter',
    adapterDir,
    '--data',
    root,
    '--report',
    report,
    '--predictions',
    predictions,
    '--bootstrap',
    '20',
    '--workers',
    '0',
  ]);
  assert.equal(result.code, 0, result.stderr);
  const html = await readFile(report, 'utf8');
  assert.match(html, />constructor</);
  assert.match(html, />toString</);
  assert.equal(
    (await readFile(predictions, 'utf8')).split('\n')[0],
    'image,true_label,predicted_label,p_constructor,p_toString',
  );
});

test('the serving registry lists a NaN adapter as an error and serves the healthy one', async () => {
  const root = join(dir, 'served');
  await mkdir(root);
  await cp(ADAPTER, join(root, 'healthy'), { recursive: true });
  const sick = await withEditedTensors(ADAPTER, 'served/sick', 'adapter_model.safetensors', (tensors) => {
    tensors.get('base_model.model.classifier.bias')!.data[0] = Number.NaN;
  });
  const backbone = await loadBackbone(join(FIXTURES, 'hf'));
  const registry = await AdapterRegistry.open({ backbone, dir: root, watch: false, rescanMs: 0 });
  try {
    assert.deepEqual(
      registry.tasks().map((task) => task.name),
      ['healthy'],
    );
    const problems = registry.problems();
    assert.equal(problems.length, 1);
    assert.equal(problems[0]!.adapter, 'sick');
    assert.match(problems[0]!.message, /classifier\.bias' holds NaN \(element 0\)/);
    assert.ok(!problems[0]!.message.includes(sick), 'no absolute path in what clients see');
  } finally {
    await registry.close();
  }
});

test('eval on images with NaN pixels fails with one line naming the image and writes nothing', async () => {
  const nanPath = join(dir, 'eval-nan.npz');
  await writeFile(
    nanPath,
    npzBytes({
      test_images: { values: new Float32Array(2 * 64).fill(Number.NaN), shape: [2, 8, 8] },
      test_labels: { values: new Uint8Array([0, 1]), shape: [2, 1] },
    }),
  );
  const backbone = await loadBackbone(join(FIXTURES, 'hf'));
  const adapterDir = join(dir, 'eval-nan-adapter');
  const metadata = { task: 'nan', taskType: 'binary' as const, labels: ['0', '1'] };
  await saveAdapter(adapterDir, initAdapter(backbone.config, MELO_LORA_DEFAULTS, metadata, new Random(3)));
  const predictions = join(dir, 'eval-nan.csv');
  const result = await runCli([
    'eval',
    '--backbone',
    join(FIXTURES, 'hf'),
    '--adapter',
    adapterDir,
    '--data',
    nanPath,
    '--predictions',
    predictions,
    '--workers',
    '0',
  ]);
  assert.equal(result.code, 1);
  // The error is one line (eval may print what it evaluates before it).
  const errors = result.stderr
    .trim()
    .split('\n')
    .filter((line) => line.startsWith('melo: error:'));
  assert.equal(errors.length, 1, result.stderr);
  assert.match(
    errors[0]!,
    /^melo: error: \S+#test\/0: the model's output 0 is NaN: the image holds non-finite pixels/,
  );
  assert.equal(result.stderr.trim().split('\n').at(-1), errors[0]);
  await assert.rejects(readFile(predictions), /ENOENT/);
});

test('an adapter_config.json over 16 MiB is refused before it is parsed', async () => {
  const path = await adapterWithConfig('huge-config', (config) => {
    config.padding = 'x'.repeat(17 * 1024 * 1024);
  });
  await assert.rejects(
    loadAdapter(path),
    /adapter_config\.json: is \d+ bytes; an adapter_config\.json is at most 16777216 \(even with thousands of labels\)$/,
  );
});

test('values echoed from a crafted header stay short: a million-dimension shape, a huge dtype, a huge .npy header', () => {
  const header = JSON.stringify({
    a: { dtype: 'F32', shape: new Array(1_000_000).fill(1), data_offsets: [0, 4] },
  });
  const bytes = Buffer.alloc(8 + header.length + 4);
  bytes.writeBigUInt64LE(BigInt(header.length), 0);
  bytes.write(header, 8);
  assert.throws(
    () => decodeSafetensors(bytes, 'dims.safetensors'),
    /^MeloError: dims\.safetensors: tensor 'a': shape has 1000000 dimensions \(at most 64\)$/,
  );
  const dtype = JSON.stringify({ a: { dtype: 'x'.repeat(100_000), shape: [1], data_offsets: [0, 4] } });
  const dtypeBytes = Buffer.alloc(8 + dtype.length + 4);
  dtypeBytes.writeBigUInt64LE(BigInt(dtype.length), 0);
  dtypeBytes.write(dtype, 8);
  assert.throws(
    () => decodeSafetensors(dtypeBytes, 'dtype.safetensors'),
    (error: unknown) =>
      error instanceof MeloError && error.message.length < 200 && /unknown dtype/.test(error.message),
  );
  const npy = npyBytes(new Uint8Array(4), [4]);
  new DataView(npy.buffer).setUint8(6, 2); // version 2: a 32-bit header length
  const big = new Uint8Array(12 + 100_000);
  big.set(npy.subarray(0, 8));
  new DataView(big.buffer).setUint32(8, 100_000, true);
  assert.throws(
    () => parseNpy(big, 'big.npy'),
    /^MeloError: big\.npy: \.npy header of 100000 bytes \(at most 65536\)$/,
  );
});
