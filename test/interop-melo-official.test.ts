import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import type { Command } from 'commander';
import sharp from 'sharp';
import { type Backbone, loadBackbone } from '../src/checkpoints/load.ts';
import { readSafetensors, writeSafetensors } from '../src/checkpoints/safetensors.ts';
import { registerAdapterCommand } from '../src/cli/commands/adapter.ts';
import { buildProgram } from '../src/cli/main.ts';
import { exportMeloOfficial, importMeloOfficial, officialScale } from '../src/io/melo-official.ts';
import { loadAdapter, saveAdapter } from '../src/io/peft.ts';
import type { Adapter } from '../src/model/adapter.ts';
import { adapterFeeds } from '../src/model/task-graph.ts';
import { TaskModel } from '../src/model/task-model.ts';
import { loadTasks, predictTasks } from '../src/predict.ts';
import { assertClose } from './helpers/graph.ts';

const ROOT = new URL('..', import.meta.url).pathname;
const VIT = join(ROOT, 'test/fixtures/vit');
const OFFICIAL = join(ROOT, 'test/fixtures/interop/melo_official');
const BCCD = process.env.MELO_BCCD_DIR ?? resolve(ROOT, '../shared/data/bccd');
const BCCD_IMAGES = ['BloodImage_00000.jpg', 'BloodImage_00007.jpg'].map((name) =>
  join(BCCD, 'BCCD/JPEGImages', name),
);

let dir = '';
let timm: Backbone;
let hf: Backbone;
let expected: Map<string, { data: Float32Array }>;
let pixels: Float32Array;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-interop-official-'));
  timm = await loadBackbone(join(VIT, 'timm'));
  hf = await loadBackbone(join(VIT, 'hf'));
  expected = (await readSafetensors(join(OFFICIAL, 'expected.safetensors'))).tensors;
  pixels = (await readSafetensors(join(VIT, 'reference.safetensors'))).tensors.get('input')!.data;
});
after(() => rm(dir, { recursive: true, force: true }));

/** Logits of an adapter on the reference input (already normalised pixels, batch 2). */
async function logitsOf(backbone: Backbone, adapter: Adapter): Promise<Float32Array> {
  const model = await TaskModel.create({
    backbone,
    method: 'lora',
    lora: adapter.lora,
    numClasses: adapter.head.weight.shape[0]!,
    threads: 1,
  });
  try {
    return (await model.run(pixels, 2, adapterFeeds(adapter))).data;
  } finally {
    await model.release();
  }
}

async function runAdapterCli(args: string[]): Promise<{ stdout: string; stderr: string }> {
  const program = buildProgram();
  let stdout = '';
  let stderr = '';
  const sink = {
    stdout: (text: string) => {
      stdout += text;
    },
    stderr: (text: string) => {
      stderr += text;
    },
  };
  // Replace a registration from main.ts (if wired) by one that writes to the sink.
  const commands = program.commands as Command[];
  const wired = commands.findIndex((command) => command.name() === 'adapter');
  if (wired >= 0) commands.splice(wired, 1);
  registerAdapterCommand(program, sink);
  await program.parseAsync(['adapter', ...args], { from: 'user' });
  return { stdout, stderr };
}

test('official scale is alpha // r (integer division)', () => {
  assert.equal(officialScale(5, 2), 2);
  assert.equal(officialScale(4, 4), 1);
  assert.equal(officialScale(3, 4), 0);
  assert.equal(officialScale(16, 4), 4);
});

test('an official file with --alpha 5 at rank 2 computes what the official forward computes (scale 2)', async () => {
  const adapter = await importMeloOfficial(
    { lora: join(OFFICIAL, 'lora.safetensors') },
    { task: 'cells', alpha: 5 },
  );
  assert.equal(adapter.lora.rank, 2);
  assert.equal(adapter.lora.alpha, 4, 'official scale 5 // 2 = 2 is imported exactly as alpha 2·r');
  assert.deepEqual(adapter.lora.targets, ['query', 'value']);
  assert.equal(adapter.pairs.size, 4);
  assert.deepEqual([...adapter.head.bias.data], [0, 0, 0]);
  assert.ok(
    adapter.notes.some((note) => /bias set to zero/.test(note)),
    adapter.notes.join('; '),
  );
  assert.ok(
    adapter.notes.some((note) => /5 \/\/ 2 = 2/.test(note)),
    adapter.notes.join('; '),
  );
  // Entry 2i is block i's query, 2i+1 its value; A [r, dim], B [dim, r] unchanged.
  const file = (await readSafetensors(join(OFFICIAL, 'lora.safetensors'))).tensors;
  assert.deepEqual(adapter.pairs.get('1.query')!.A.data, file.get('w_a_002')!.data);
  assert.deepEqual(adapter.pairs.get('1.value')!.B.data, file.get('w_b_003')!.data);
  assert.deepEqual(adapter.pairs.get('0.value')!.B.shape, [32, 2]);
  assertClose(await logitsOf(timm, adapter), expected.get('logits_alpha5')!.data, 1e-5, 'alpha 5 logits');
});

test('without alpha or scale the import assumes scale 1 and says so', async () => {
  const adapter = await importMeloOfficial({ lora: join(OFFICIAL, 'lora.safetensors') }, { task: 'cells' });
  assert.equal(adapter.lora.alpha, adapter.lora.rank);
  assert.ok(
    adapter.notes.some((note) => /scale 1 assumed/.test(note)),
    adapter.notes.join('; '),
  );
  assertClose(await logitsOf(timm, adapter), expected.get('logits_scale1')!.data, 1e-5, 'scale 1 logits');
  const scaled = await importMeloOfficial(
    { lora: join(OFFICIAL, 'lora.safetensors') },
    { task: 'cells', scale: 2 },
  );
  assertClose(
    await logitsOf(timm, scaled),
    expected.get('logits_alpha5')!.data,
    1e-5,
    '--scale 2 = --alpha 5',
  );
});

test('a separate head file (save_fc_parameters) gives the same adapter', async () => {
  const together = await importMeloOfficial(
    { lora: join(OFFICIAL, 'lora.safetensors') },
    { task: 't', alpha: 5 },
  );
  const split = await importMeloOfficial(
    { lora: join(OFFICIAL, 'lora_only.safetensors'), head: join(OFFICIAL, 'fc.safetensors') },
    { task: 't', alpha: 5 },
  );
  assert.deepEqual(split.head.weight, together.head.weight);
  for (const [key, pair] of together.pairs) assert.deepEqual(split.pairs.get(key), pair);
  await assert.rejects(
    importMeloOfficial({ lora: join(OFFICIAL, 'lora_only.safetensors') }, { task: 't' }),
    /lora_only\.safetensors: no fc_\{in\}in_\{out\}out head in the file; pass the head file/,
  );
});

test("a subset of LoRA'd blocks maps entry 2k to the k-th listed block", async () => {
  const adapter = await importMeloOfficial(
    { lora: join(OFFICIAL, 'lora_block1.safetensors') },
    { task: 't', alpha: 5, layers: [1] },
  );
  assert.deepEqual([...adapter.pairs.keys()].sort(), ['1.query', '1.value']);
  assertClose(await logitsOf(timm, adapter), expected.get('logits_block1')!.data, 1e-5, 'block 1 logits');
  await assert.rejects(
    importMeloOfficial({ lora: join(OFFICIAL, 'lora_block1.safetensors') }, { task: 't', layers: [0, 1] }),
    /1 LoRA'd blocks in the file but 2 layers given/,
  );
});

test('melo adapter import-melo writes an adapter that predicts like the equivalent PEFT adapter', async (t) => {
  const out = join(dir, 'imported');
  const { stdout, stderr } = await runAdapterCli([
    'import-melo',
    join(OFFICIAL, 'lora.safetensors'),
    '--alpha',
    '5',
    '--backbone',
    join(VIT, 'hf'),
    '--task',
    'cells',
    '--out',
    out,
  ]);
  assert.match(stdout, /rank 2, alpha 4, scale 2, 2 blocks, 3 classes/);
  assert.match(stderr, /note: head bias set to zero/);
  const saved = await loadAdapter(out);
  assert.equal(saved.metadata.backboneFingerprint, hf.fingerprint);
  assert.deepEqual(saved.metadata.labels, ['normal', 'benign', 'malignant'], 'labels from the backbone');

  const images = [join(dir, 'synthetic.png')];
  await sharp({ create: { width: 40, height: 36, channels: 3, background: { r: 30, g: 160, b: 220 } } })
    .png()
    .toFile(images[0]!);
  if (BCCD_IMAGES.every((path) => existsSync(path))) images.push(...BCCD_IMAGES);
  else t.diagnostic(`BCCD images not found under ${BCCD}; using a synthetic image only`);
  const [imported, equivalent] = await loadTasks(hf, [out, join(OFFICIAL, 'peft_equivalent')]).then(
    (tasks) => [tasks.slice(0, 1), tasks.slice(1)],
  );
  const a = await predictTasks(hf, imported!, images, { threads: 1 });
  const b = await predictTasks(hf, equivalent!, images, { threads: 1 });
  assert.equal(a.length, images.length);
  a.forEach((prediction, i) => {
    assertClose(prediction.logits, b[i]!.logits, 1e-5, `logits of ${images[i]}`);
  });
});

test('bad official files and options fail with one line naming the file', async () => {
  const bad = async (name: string, tensors: Record<string, number[]>): Promise<string> => {
    const path = join(dir, name);
    const map = new Map(
      Object.entries(tensors).map(([key, shape]) => [
        key,
        { shape, data: new Float32Array(shape.reduce((p, d) => p * d, 1)).fill(0.1) },
      ]),
    );
    await writeSafetensors(path, map);
    return path;
  };
  const good = {
    w_a_000: [2, 32],
    w_b_000: [32, 2],
    w_a_001: [2, 32],
    w_b_001: [32, 2],
    fc_32in_3out: [3, 32],
  };
  const cases: [() => Promise<unknown>, RegExp][] = [
    [
      async () =>
        importMeloOfficial(
          {
            lora: await bad(
              'missing-b.safetensors',
              Object.fromEntries(Object.entries(good).filter(([k]) => k !== 'w_b_001')),
            ),
          },
          { task: 't' },
        ),
      /missing-b\.safetensors: .*w_b_001 is missing/,
    ],
    [
      async () =>
        importMeloOfficial(
          { lora: await bad('extra.safetensors', { ...good, 'head.bias': [3] }) },
          { task: 't' },
        ),
      /extra\.safetensors: unexpected tensor 'head\.bias'/,
    ],
    [
      async () =>
        importMeloOfficial(
          { lora: await bad('shape.safetensors', { ...good, w_b_001: [2, 32] }) },
          { task: 't' },
        ),
      /shape\.safetensors: w_b_001 has shape \[2,32\], expected \[32, 2\]/,
    ],
    [
      async () =>
        importMeloOfficial(
          { lora: await bad('fc.safetensors', { ...good, fc_32in_3out: [4, 32] }) },
          { task: 't' },
        ),
      /fc\.safetensors: fc_32in_3out has shape \[4,32\] but its name says \[3, 32\]/,
    ],
    [
      async () =>
        importMeloOfficial(
          { lora: await bad('odd.safetensors', { w_a_000: [2, 32], w_b_000: [32, 2] }) },
          {
            task: 't',
          },
        ),
      /odd\.safetensors: 1 entries: expected \(query, value\) pairs/,
    ],
    [
      async () => importMeloOfficial({ lora: join(OFFICIAL, 'lora.safetensors') }, { task: 't', alpha: 1 }),
      /alpha 1 < rank 2: the official scale alpha \/\/ r is 0/,
    ],
    [
      async () =>
        importMeloOfficial({ lora: join(OFFICIAL, 'lora.safetensors') }, { task: 't', alpha: 4, scale: 2 }),
      /give alpha .* or scale, not both/,
    ],
    [
      async () =>
        importMeloOfficial({ lora: join(OFFICIAL, 'lora.safetensors') }, { task: 't', labels: ['a', 'b'] }),
      /2 labels given but fc_32in_3out has 3 classes/,
    ],
    [
      async () => importMeloOfficial({ lora: join(OFFICIAL, 'lora.safetensors') }, { task: '../x' }),
      /task name/,
    ],
    [
      async () => importMeloOfficial({ lora: join(dir, 'nope.safetensors') }, { task: 't' }),
      /nope\.safetensors/,
    ],
  ];
  for (const [run, pattern] of cases) {
    const error = await run().then(
      () => assert.fail(`expected ${pattern}`),
      (caught: Error) => caught,
    );
    assert.match(error.message, pattern);
    assert.equal(error.message.split('\n').length, 1);
  }
  // An adapter from a larger ViT does not fit the tiny backbone: the CLI refuses before writing.
  const wide = await bad('wide.safetensors', {
    w_a_000: [2, 48],
    w_b_000: [48, 2],
    w_a_001: [2, 48],
    w_b_001: [48, 2],
    w_a_002: [2, 48],
    w_b_002: [48, 2],
    w_a_003: [2, 48],
    w_b_003: [48, 2],
    fc_48in_3out: [3, 48],
  });
  await assert.rejects(
    runAdapterCli([
      'import-melo',
      wide,
      '--backbone',
      join(VIT, 'hf'),
      '--task',
      't',
      '--out',
      join(dir, 'wide'),
    ]),
    /wide\.safetensors: query of block 0 is \[2,48\]·\[48,2\] but the backbone's query is 32→32/,
  );
  assert.equal(existsSync(join(dir, 'wide')), false);
});

test('convert --to melo-official round-trips through import (bias refused unless dropped)', async () => {
  const source = join(dir, 'roundtrip-src');
  const imported = await importMeloOfficial(
    { lora: join(OFFICIAL, 'lora.safetensors') },
    { task: 'cells', alpha: 5, labels: ['a', 'b', 'c'] },
  );
  await saveAdapter(source, imported);
  const out = join(dir, 'official-out');
  const { stdout } = await runAdapterCli(['convert', source, '--out', out, '--to', 'melo-official']);
  const [name] = await readdir(out);
  // The official multi-adapter loader reads rank, alpha and classes from fields 3, 4, 5 of the name.
  assert.equal(name, 'melo_vit_lora_2_4_3_cells.safetensors');
  const fields = name!.split('_');
  assert.deepEqual([Number(fields[3]), Number(fields[4]), Number(fields[5])], [2, 4, 3]);
  assert.match(stdout, /official MeLo, F32, scale 2/);
  const file = await readSafetensors(join(out, name!));
  assert.deepEqual([...file.tensors.keys()].sort(), [
    'fc_32in_3out',
    'w_a_000',
    'w_a_001',
    'w_a_002',
    'w_a_003',
    'w_b_000',
    'w_b_001',
    'w_b_002',
    'w_b_003',
  ]);
  const original = (await readSafetensors(join(OFFICIAL, 'lora.safetensors'))).tensors;
  for (const [key, tensor] of original) assert.deepEqual(file.tensors.get(key), tensor, key);
  // melo recorded the scale and labels, so a plain re-import needs no flags.
  const back = await importMeloOfficial({ lora: join(out, name!) }, { task: 'cells' });
  assert.equal(back.lora.alpha, 4);
  assert.deepEqual(back.metadata.labels, ['a', 'b', 'c']);

  const biased: Adapter = {
    ...imported,
    head: { weight: imported.head.weight, bias: { shape: [3], data: Float32Array.from([0.5, 0, -0.25]) } },
  };
  await assert.rejects(
    exportMeloOfficial(biased, join(dir, 'b.safetensors')),
    /head bias is non-zero \(max \|b\| = 0\.500\)/,
  );
  const notes = await exportMeloOfficial(biased, join(dir, 'b.safetensors'), { dropBias: true });
  assert.match(notes.join(';'), /head bias dropped/);
  const nonInteger: Adapter = { ...imported, lora: { ...imported.lora, alpha: 3 } };
  await assert.rejects(
    exportMeloOfficial(nonInteger, join(dir, 'c.safetensors')),
    /scale alpha\/r = 3\/2 = 1\.5/,
  );
  const keyTarget: Adapter = { ...imported, lora: { ...imported.lora, targets: ['query', 'key'] } };
  await assert.rejects(exportMeloOfficial(keyTarget, join(dir, 'd.safetensors')), /exactly query and value/);
});
