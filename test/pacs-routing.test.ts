import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import sharp from 'sharp';
import { type Backbone, loadBackbone } from '../src/checkpoints/load.ts';
import { loadAdapter } from '../src/io/peft.ts';
import { parseCodeList, routingMatches } from '../src/pacs/routing.ts';
import { loadTasks, predictTasks } from '../src/predict.ts';
import { buildApp } from '../src/serve/app.ts';
import { runCli } from './helpers/cli.ts';
import { makeAdapter, writeAdapter } from './serve-fixtures.ts';

const REPO = new URL('..', import.meta.url).pathname;
const TINY = join(REPO, 'models/melo-vit-tiny-fmnist');
const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;
const DICOM_DIR = process.env.MELO_DICOM_DIR ?? resolve(REPO, '../shared/data/dicom/pydicom-test-files');
const CT = join(DICOM_DIR, 'CT_small.dcm');
const MR = join(DICOM_DIR, 'MR_small.dcm');

let dir = '';
let backbone: Backbone;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-routing-'));
  backbone = await loadBackbone(TINY);
  for (const [task, seed] of [
    ['ct-task', 1],
    ['mr-task', 2],
    ['any-task', 3],
  ] as const) {
    await writeAdapter(dir, task, makeAdapter(backbone, { task, labels: ['no', 'yes'], seed }));
  }
});
after(() => rm(dir, { recursive: true, force: true }));

test('routing: listed attributes must match, unlisted ones are not looked at, no routing matches all', () => {
  assert.equal(routingMatches(undefined, {}), true);
  assert.equal(routingMatches({ modalities: ['CR', 'DX'] }, { modality: 'DX' }), true);
  assert.equal(routingMatches({ modalities: ['CR', 'DX'] }, { modality: 'ct ' }), false);
  assert.equal(routingMatches({ modalities: ['CR', 'DX'] }, {}), false);
  assert.equal(routingMatches({ modalities: ['CR'], bodyParts: ['CHEST'] }, { modality: 'CR' }), false);
  assert.equal(
    routingMatches({ modalities: ['CR'], bodyParts: ['CHEST'] }, { modality: 'CR', bodyPart: 'chest' }),
    true,
  );
  assert.equal(routingMatches({ bodyParts: ['CHEST'] }, { modality: 'MR', bodyPart: 'CHEST' }), true);
  assert.deepEqual(parseCodeList(' cr, DX ,cr', '--modality'), ['CR', 'DX']);
  assert.throws(() => parseCodeList('C/R', '--modality'), /--modality: 'C\/R' is not a DICOM code string/);
});

test('melo adapter set rewrites the routing in place; inspect shows it; predict routes DICOM images', async () => {
  const set = await runCli(['adapter', 'set', join(dir, 'ct-task'), '--modality', 'ct']);
  assert.equal(set.code, 0, set.stderr);
  assert.match(set.stdout, /routing: CT \/ any body part/);
  const setMr = await runCli([
    'adapter',
    'set',
    join(dir, 'mr-task'),
    '--modality',
    'MR,MG',
    '--body-part',
    'HEAD',
  ]);
  assert.equal(setMr.code, 0, setMr.stderr);
  // Changing one field keeps the other.
  const again = await runCli(['adapter', 'set', join(dir, 'mr-task'), '--body-part', 'BRAIN,HEAD']);
  assert.equal(again.code, 0, again.stderr);
  assert.deepEqual((await loadAdapter(join(dir, 'mr-task'))).metadata.routing, {
    modalities: ['MR', 'MG'],
    bodyParts: ['BRAIN', 'HEAD'],
  });
  const config = JSON.parse(await readFile(join(dir, 'ct-task', 'adapter_config.json'), 'utf8'));
  assert.deepEqual(config.melo.routing, { modalities: ['CT'] });
  const inspect = await runCli(['adapter', 'inspect', join(dir, 'ct-task'), '--json']);
  assert.deepEqual(JSON.parse(inspect.stdout).routing, { modalities: ['CT'] });

  // MR_small has no Body Part Examined, so mr-task (which lists body parts) does not apply to it.
  const adapters = ['ct-task', 'mr-task', 'any-task'].flatMap((name) => ['--adapter', join(dir, name)]);
  const routed = await runCli([
    'predict',
    '--backbone',
    TINY,
    ...adapters,
    '--threads',
    '1',
    '--json',
    CT,
    MR,
  ]);
  assert.equal(routed.code, 0, routed.stderr);
  const pairs = (stdout: string) =>
    JSON.parse(stdout).predictions.map(
      (p: { image: string; task: string }) => `${p.image.split('/').pop()}:${p.task}`,
    );
  assert.deepEqual(pairs(routed.stdout), [
    'CT_small.dcm:ct-task',
    'CT_small.dcm:any-task',
    'MR_small.dcm:any-task',
  ]);

  const all = await runCli([
    'predict',
    '--backbone',
    TINY,
    ...adapters,
    '--threads',
    '1',
    '--json',
    '--tasks',
    'all',
    CT,
    MR,
  ]);
  assert.equal(all.code, 0, all.stderr);
  assert.equal(JSON.parse(all.stdout).predictions.length, 6);
  // Routed rows are computed in a smaller batch: the numbers equal those of the full run.
  const tasks = await loadTasks(
    backbone,
    ['ct-task', 'mr-task', 'any-task'].map((name) => join(dir, name)),
  );
  const reference = await predictTasks(backbone, tasks, [CT, MR], { threads: 1 });
  for (const p of JSON.parse(routed.stdout).predictions) {
    const ref = reference.find((r) => r.image === p.image && r.task === p.task)!;
    p.probabilities.forEach((value: number, i: number) => {
      assert.ok(Math.abs(value - ref.probabilities[i]!) < 1e-6);
    });
  }

  const named = await runCli([
    'predict',
    '--backbone',
    TINY,
    ...adapters,
    '--json',
    '--tasks',
    'mr-task',
    CT,
  ]);
  assert.deepEqual(pairs(named.stdout), ['CT_small.dcm:mr-task']);

  const clear = await runCli(['adapter', 'set', join(dir, 'mr-task'), '--clear-routing']);
  assert.equal(clear.code, 0, clear.stderr);
  assert.equal((await loadAdapter(join(dir, 'mr-task'))).metadata.routing, undefined);
  const bad = await runCli(['adapter', 'set', join(dir, 'ct-task'), '--modality', 'C;T']);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /--modality: 'C;T' is not a DICOM code string/);
});

test('melo train --modality --body-part records the routing in the adapter', async () => {
  const data = join(dir, 'cells');
  for (const [cls, level] of [
    ['dark', 60],
    ['bright', 190],
  ] as const) {
    await mkdir(join(data, cls), { recursive: true });
    for (let i = 0; i < 4; i++) {
      const pixels = Buffer.from(
        Uint8Array.from({ length: 16 * 16 * 3 }, (_, p) => level + ((p * 7 + i * 13) % 40)),
      );
      await sharp(pixels, { raw: { width: 16, height: 16, channels: 3 } })
        .png()
        .toFile(join(data, cls, `${i}.png`));
    }
  }
  const out = join(dir, 'trained');
  const result = await runCli([
    'train',
    '--backbone',
    join(FIXTURES, 'hf'),
    '--data',
    data,
    '--val',
    'none',
    '--epochs',
    '1',
    '--batch-size',
    '4',
    '--threads',
    '1',
    '--modality',
    'CR,DX',
    '--body-part',
    'chest',
    '--out',
    out,
  ]);
  assert.equal(result.code, 0, result.stderr);
  assert.deepEqual((await loadAdapter(out)).metadata.routing, {
    modalities: ['CR', 'DX'],
    bodyParts: ['CHEST'],
  });
});

test('server: tasks=auto (default) runs the routed tasks for DICOM, all for other images; tasks=all runs all', async () => {
  const root = join(dir, 'served');
  await writeAdapter(root, 'ct-only', {
    ...makeAdapter(backbone, { task: 'ct-only', labels: ['a', 'b'], seed: 5 }),
  });
  const routedAdapter = makeAdapter(backbone, { task: 'mr-only', labels: ['a', 'b'], seed: 6 });
  await writeAdapter(root, 'mr-only', {
    ...routedAdapter,
    metadata: { ...routedAdapter.metadata, routing: { modalities: ['MR'] } },
  });
  await writeAdapter(
    root,
    'everything',
    makeAdapter(backbone, { task: 'everything', labels: ['a', 'b'], seed: 7 }),
  );
  const ctAdapter = await loadAdapter(join(root, 'ct-only'));
  await writeAdapter(root, 'ct-only', {
    ...ctAdapter,
    metadata: { ...ctAdapter.metadata, routing: { modalities: ['CT'] } },
  });
  const app = await buildApp({
    backbone,
    adapters: root,
    threads: 1,
    watch: false,
    rescanMs: 0,
    logger: false,
  });
  try {
    const post = async (bytes: Uint8Array, type: string, tasks?: string) => {
      const response = await app.inject({
        method: 'POST',
        url: `/v1/predict${tasks ? `?tasks=${tasks}` : ''}`,
        headers: { 'content-type': type },
        payload: Buffer.from(bytes),
      });
      assert.equal(response.statusCode, 200, response.body);
      return (response.json().results as { task: string }[]).map((r) => r.task).sort();
    };
    const ct = await readFile(CT);
    assert.deepEqual(await post(ct, 'application/dicom'), ['ct-only', 'everything']);
    assert.deepEqual(await post(await readFile(MR), 'application/dicom', 'auto'), ['everything', 'mr-only']);
    assert.deepEqual(await post(ct, 'application/dicom', 'all'), ['ct-only', 'everything', 'mr-only']);
    assert.deepEqual(await post(ct, 'application/dicom', 'mr-only'), ['mr-only']);
    const png = await sharp(Buffer.alloc(16 * 16 * 3, 90), { raw: { width: 16, height: 16, channels: 3 } })
      .png()
      .toBuffer();
    assert.deepEqual(await post(png, 'image/png'), ['ct-only', 'everything', 'mr-only']);
    const tasks = (await app.inject({ method: 'GET', url: '/v1/tasks' })).json().tasks as {
      name: string;
      routing?: unknown;
    }[];
    assert.deepEqual(tasks.find((t) => t.name === 'mr-only')!.routing, { modalities: ['MR'] });
    assert.equal(tasks.find((t) => t.name === 'everything')!.routing, undefined);
  } finally {
    await app.close();
  }
});
