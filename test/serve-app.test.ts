import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify';
import sharp from 'sharp';
import { type Backbone, loadBackbone } from '../src/checkpoints/load.ts';
import type { Adapter } from '../src/model/adapter.ts';
import { loadTasks, type Prediction, predictTasks } from '../src/predict.ts';
import { buildApp } from '../src/serve/app.ts';
import type { ServeOptions } from '../src/serve/options.ts';
import { Random } from '../src/util/random.ts';
import { assertClose } from './helpers/graph.ts';
import { adapterSet, copyFixtureAdapter, FIXTURES, makeAdapter, writeAdapter } from './serve-fixtures.ts';

const DICOM_DIR =
  process.env.MELO_DICOM_DIR ?? resolve(FIXTURES, '../../../../shared/data/dicom/pydicom-test-files');
const noDicom = existsSync(join(DICOM_DIR, 'CT_small.dcm')) ? false : `no DICOM test files at ${DICOM_DIR}`;

let backbone: Backbone;
let work = '';
let root = '';
let adapters: Record<string, Adapter> = {};
/** name → encoded bytes and content type; each also written to disk for `predictTasks`. */
const images = new Map<string, { file: string; bytes: Buffer; type: string }>();
let app: FastifyInstance;
const logLines: string[] = [];

interface PredictBody {
  results: { task: string; labels: string[]; probabilities: number[]; prediction: string }[];
}
interface ErrorBody {
  statusCode: number;
  code: string;
  message: string;
}

async function addImage(name: string, bytes: Buffer, type: string): Promise<void> {
  const file = join(work, name);
  await writeFile(file, bytes);
  images.set(name, { file, bytes, type });
}

before(async () => {
  backbone = await loadBackbone(join(FIXTURES, 'hf'));
  work = await mkdtemp(join(tmpdir(), 'melo-serve-app-'));
  root = join(work, 'adapters');
  await mkdir(root);
  adapters = adapterSet(backbone);
  for (const [name, adapter] of Object.entries(adapters)) await writeAdapter(root, name, adapter);
  await copyFixtureAdapter(root, 'fixture');

  const grey16 = new Uint16Array(50 * 40);
  for (let y = 0; y < 40; y++) for (let x = 0; x < 50; x++) grey16[y * 50 + x] = 1000 + x * 900 + y * 300;
  await addImage(
    'grey16.png',
    await sharp(grey16, { raw: { width: 50, height: 40, channels: 1 } })
      .toColourspace('grey16')
      .png()
      .toBuffer(),
    'image/png',
  );
  const rgb = Buffer.alloc(48 * 36 * 3);
  for (let i = 0; i < rgb.length; i++) rgb[i] = (i * 37 + (i >> 7) * 11) % 256;
  const raw = { raw: { width: 48, height: 36, channels: 3 as const } };
  await addImage('rgb.png', await sharp(rgb, raw).png().toBuffer(), 'image/png');
  await addImage('rgb.jpg', await sharp(rgb, raw).jpeg({ quality: 90 }).toBuffer(), 'image/jpeg');
  await addImage('rgb.tif', await sharp(rgb, raw).tiff().toBuffer(), 'image/tiff');
  await addImage('rgb.webp', await sharp(rgb, raw).webp({ lossless: true }).toBuffer(), 'image/webp');
  if (!noDicom) {
    await addImage('ct.dcm', await readFile(join(DICOM_DIR, 'CT_small.dcm')), 'application/dicom');
  }

  app = await buildApp({
    backbone,
    adapters: root,
    threads: 1,
    watch: false,
    rescanMs: 0,
    maxWaitMs: 2,
    logger: { level: 'info', stream: { write: (line: string) => logLines.push(line) } },
  });
});

after(async () => {
  await app?.close();
  await rm(work, { recursive: true, force: true });
});

function predictRequest(
  target: FastifyInstance,
  image: { bytes: Buffer; type: string },
  tasks?: string,
  headers: Record<string, string> = {},
): Promise<LightMyRequestResponse> {
  return target.inject({
    method: 'POST',
    url: tasks === undefined ? '/v1/predict' : `/v1/predict?tasks=${tasks}`,
    headers: { 'content-type': image.type, ...headers },
    payload: image.bytes,
  });
}

function multipartBody(field: string, filename: string, bytes: Buffer, type: string) {
  const boundary = 'melo-test-boundary';
  const payload = Buffer.concat([
    Buffer.from(
      `--${boundary}\r\nContent-Disposition: form-data; name="${field}"; filename="${filename}"\r\nContent-Type: ${type}\r\n\r\n`,
    ),
    bytes,
    Buffer.from(`\r\n--${boundary}--\r\n`),
  ]);
  return { payload, headers: { 'content-type': `multipart/form-data; boundary=${boundary}` } };
}

/** What `melo predict --adapter` gives for these files and adapter directories. */
async function reference(dirs: readonly string[], files: readonly string[]): Promise<Prediction[]> {
  const tasks = await loadTasks(
    backbone,
    dirs.map((dir) => join(root, dir)),
  );
  return predictTasks(backbone, tasks, files, { threads: 1 });
}

function assertMatches(body: PredictBody, expected: readonly Prediction[], what: string): void {
  assert.equal(body.results.length, expected.length, what);
  body.results.forEach((result, i) => {
    const want = expected[i]!;
    assert.equal(result.task, want.task, what);
    assert.deepEqual(result.labels, want.labels, `${what} ${want.task} labels`);
    assertClose(result.probabilities, want.probabilities, 1e-5, `${what} ${want.task}`);
    assert.equal(result.prediction, want.prediction, `${what} ${want.task}`);
  });
}

const TASK_DIRS = ['alpha', 'fixture', 'multi', 'probe', 'twin', 'wide'];

test('every image format, every task: the server gives `melo predict --adapter` numbers (raw and multipart)', async () => {
  const names = [...images.keys()];
  const expected = await reference(
    TASK_DIRS,
    names.map((name) => images.get(name)!.file),
  );
  for (const [index, name] of names.entries()) {
    const image = images.get(name)!;
    const perImage = expected.slice(index * TASK_DIRS.length, (index + 1) * TASK_DIRS.length);
    const all = await predictRequest(app, image);
    assert.equal(all.statusCode, 200, all.body);
    assertMatches(all.json<PredictBody>(), perImage, `${name} tasks=all`);
    // A subset, in the order asked, with a repeated name answered once.
    const some = await predictRequest(app, image, 'wide,probe,wide');
    assert.equal(some.statusCode, 200, some.body);
    assertMatches(some.json<PredictBody>(), [perImage[5]!, perImage[3]!], `${name} tasks=wide,probe`);
    const form = multipartBody('image', name, image.bytes, image.type);
    const viaForm = await app.inject({ method: 'POST', url: '/v1/predict?tasks=multi', ...form });
    assert.equal(viaForm.statusCode, 200, viaForm.body);
    assertMatches(viaForm.json<PredictBody>(), [perImage[2]!], `${name} multipart`);
  }
  // application/octet-stream: the format is read from the content.
  const octet = await predictRequest(
    app,
    { ...images.get('rgb.png')!, type: 'application/octet-stream' },
    'alpha',
  );
  assert.equal(octet.statusCode, 200, octet.body);
  assertMatches(octet.json<PredictBody>(), [expected[names.indexOf('rgb.png') * TASK_DIRS.length]!], 'octet');
});

test('concurrent requests for different tasks run as one mixed batch and still match each task alone', async () => {
  const mixedApp = await buildApp({
    backbone,
    adapters: root,
    threads: 1,
    watch: false,
    rescanMs: 0,
    maxWaitMs: 1000,
    maxBatch: 16,
    logger: false,
  });
  try {
    const asks: [string, string][] = [
      ['rgb.png', 'wide'],
      ['grey16.png', 'alpha,probe'],
      ['rgb.jpg', 'twin'],
      ['rgb.png', 'multi,fixture'],
      ['rgb.tif', 'alpha'],
    ];
    const responses = await Promise.all(
      asks.map(([name, tasks]) => predictRequest(mixedApp, images.get(name)!, tasks)),
    );
    for (const [i, [name, tasks]] of asks.entries()) {
      assert.equal(responses[i]!.statusCode, 200, responses[i]!.body);
      const expected = await reference(tasks.split(','), [images.get(name)!.file]);
      assertMatches(responses[i]!.json<PredictBody>(), expected, `${name} ${tasks}`);
    }
    // All seven rows went through one model call with six distinct tasks.
    const metrics = (await mixedApp.inject({ method: 'GET', url: '/metrics' })).body;
    assert.match(metrics, /^melo_batch_rows_count 1$/m);
    assert.match(metrics, /^melo_batch_rows_sum 7$/m);
    assert.match(metrics, /^melo_batch_tasks_sum 6$/m);
  } finally {
    await mixedApp.close();
  }
});

test('GET /v1/tasks lists each task with labels, type, rank and bytes; /healthz and /docs answer', async () => {
  const response = await app.inject({ method: 'GET', url: '/v1/tasks' });
  assert.equal(response.statusCode, 200);
  const body = response.json<{ tasks: Record<string, unknown>[]; errors: unknown[] }>();
  assert.deepEqual(
    body.tasks.map((task) => task.name),
    TASK_DIRS,
  );
  const wide = body.tasks.find((task) => task.name === 'wide')!;
  assert.deepEqual(wide, {
    name: 'wide',
    labels: ['w0', 'w1', 'w2', 'w3', 'w4'],
    taskType: 'multiclass',
    method: 'lora',
    rank: 4,
    targets: ['query', 'key', 'output', 'fc1', 'fc2'],
    // Layer 1 only: q, k, o are 4·32 + 32·4 each, fc1 4·32 + 64·4, fc2 4·64 + 32·4; head 5·32 + 5.
    bytes: 4 * (3 * 256 + 384 + 384 + 165),
    adapter: 'wide',
  });
  const probe = body.tasks.find((task) => task.name === 'probe')!;
  assert.equal(probe.method, 'linear');
  assert.equal(probe.rank, 0);
  // No melo metadata: named after its directory, labels from the backbone's id2label.
  assert.deepEqual(body.tasks.find((task) => task.name === 'fixture')!.labels, [
    'normal',
    'benign',
    'malignant',
  ]);
  assert.deepEqual(body.errors, []);
  const health = await app.inject({ method: 'GET', url: '/healthz' });
  assert.deepEqual(health.json(), { status: 'ok', tasks: 6 });
  const openapi = (await app.inject({ method: 'GET', url: '/docs/json' })).json<{
    paths: Record<string, unknown>;
  }>();
  assert.deepEqual(Object.keys(openapi.paths).sort(), [
    '/healthz',
    '/metrics',
    '/readyz',
    '/v1/explain',
    '/v1/predict',
    '/v1/preview',
    '/v1/tasks',
  ]);
  const ui = await app.inject({ method: 'GET', url: '/docs' });
  assert.ok(ui.statusCode === 200 || ui.statusCode === 302, `docs UI answered ${ui.statusCode}`);
});

test('task names: unknown → 404 naming it, path-like or malformed → 400', async () => {
  const image = images.get('rgb.png')!;
  const unknown = await predictRequest(app, image, 'alpha,nosuch');
  assert.equal(unknown.statusCode, 404);
  assert.equal(unknown.json<ErrorBody>().code, 'MELO_ERR_UNKNOWN_TASK');
  assert.match(unknown.json<ErrorBody>().message, /'nosuch'/);
  for (const bad of ['..%2Fetc', 'a%2Fb', 'a%5Cb', '.hidden', 'a,,b']) {
    const response = await predictRequest(app, image, bad);
    assert.equal(response.statusCode, 400, `${bad}: ${response.body}`);
    assert.equal(response.json<ErrorBody>().code, 'MELO_ERR_BAD_TASK_NAME');
  }
});

test('malformed uploads get 4xx with a reason, and the server keeps serving', async () => {
  const png = images.get('rgb.png')!.bytes;
  const cases: {
    what: string;
    status: number;
    code: string;
    request: InjectOptions;
  }[] = [
    {
      what: 'empty body',
      status: 400,
      code: 'MELO_ERR_NO_IMAGE',
      request: { method: 'POST', url: '/v1/predict', headers: { 'content-type': 'image/png' }, payload: '' },
    },
    {
      what: 'no body at all',
      status: 400,
      code: 'MELO_ERR_NO_IMAGE',
      request: { method: 'POST', url: '/v1/predict' },
    },
    {
      what: 'random bytes',
      status: 415,
      code: 'MELO_ERR_UNSUPPORTED_IMAGE',
      request: {
        method: 'POST',
        url: '/v1/predict',
        headers: { 'content-type': 'application/octet-stream' },
        payload: Buffer.from('this is not an image at all, just text'),
      },
    },
    {
      what: 'truncated PNG',
      status: 400,
      code: 'MELO_ERR_BAD_IMAGE',
      request: {
        method: 'POST',
        url: '/v1/predict',
        headers: { 'content-type': 'image/png' },
        payload: png.subarray(0, Math.floor(png.length / 2)),
      },
    },
    {
      what: 'PNG header only',
      status: 400,
      code: 'MELO_ERR_BAD_IMAGE',
      request: {
        method: 'POST',
        url: '/v1/predict',
        headers: { 'content-type': 'image/png' },
        payload: png.subarray(0, 40),
      },
    },
    {
      what: 'GIF',
      status: 415,
      code: 'MELO_ERR_UNSUPPORTED_IMAGE',
      request: {
        method: 'POST',
        url: '/v1/predict',
        headers: { 'content-type': 'image/gif' },
        payload: Buffer.from('R0lGODlhAQABAIAAAP///wAAACwAAAAAAQABAAACAkQBADs=', 'base64'),
      },
    },
    {
      what: 'JSON body',
      status: 415,
      code: 'FST_ERR_CTP_INVALID_MEDIA_TYPE',
      request: {
        method: 'POST',
        url: '/v1/predict',
        headers: { 'content-type': 'application/json' },
        payload: '{"image":"x"}',
      },
    },
    {
      what: 'multipart with another field name',
      status: 400,
      code: 'MELO_ERR_NO_IMAGE',
      request: { method: 'POST', url: '/v1/predict', ...multipartBody('file', 'x.png', png, 'image/png') },
    },
    {
      what: 'multipart cut short',
      status: 400,
      code: 'MELO_ERR_BAD_MULTIPART',
      request: {
        method: 'POST',
        url: '/v1/predict',
        headers: { 'content-type': 'multipart/form-data; boundary=zz' },
        payload: Buffer.concat([
          Buffer.from('--zz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'),
          png.subarray(0, 30),
        ]),
      },
    },
  ];
  for (const { what, status, code, request } of cases) {
    const response = await app.inject(request);
    assert.equal(response.statusCode, status, `${what}: ${response.body}`);
    const body = response.json<ErrorBody>();
    assert.equal(body.code, code, `${what}: ${response.body}`);
    assert.ok(body.message.length > 0 && !body.message.includes('\n'), what);
  }
  const still = await predictRequest(app, images.get('rgb.png')!, 'alpha');
  assert.equal(still.statusCode, 200);
});

test('corrupted images (seeded byte flips and cuts of every format) never get a 5xx', async () => {
  const random = new Random(99);
  const statuses = new Map<number, number>();
  for (const image of images.values()) {
    for (let trial = 0; trial < 12; trial++) {
      const bytes = Buffer.from(image.bytes);
      const flips = 1 + random.int(20);
      for (let i = 0; i < flips; i++) bytes[random.int(bytes.length)] = random.int(256);
      const cut = trial % 3 === 0 ? bytes.subarray(0, random.int(bytes.length)) : bytes;
      const response = await predictRequest(app, { bytes: cut, type: image.type }, 'alpha');
      statuses.set(response.statusCode, (statuses.get(response.statusCode) ?? 0) + 1);
      assert.ok(response.statusCode < 500, `${image.file} trial ${trial}: ${response.body}`);
      if (response.statusCode !== 200) assert.match(response.json<ErrorBody>().code, /^MELO_ERR_/);
    }
  }
  assert.ok((statuses.get(200) ?? 0) > 0 && statuses.size > 1, `statuses ${[...statuses]}`);
});

test('DICOM: patient tags never reach the log; unsupported and truncated files get 415 and 400', {
  skip: noDicom,
}, async () => {
  const before = logLines.length;
  const ct = images.get('ct.dcm')!;
  const response = await predictRequest(app, ct, 'alpha');
  assert.equal(response.statusCode, 200);
  const lossy = await predictRequest(
    app,
    { bytes: await readFile(join(DICOM_DIR, 'JPEG-lossy.dcm')), type: 'application/dicom' },
    'alpha',
  );
  assert.equal(lossy.statusCode, 415, lossy.body);
  assert.match(lossy.json<ErrorBody>().message, /transfer syntax .* is not supported/);
  const truncated = await predictRequest(
    app,
    { bytes: await readFile(join(DICOM_DIR, 'MR_truncated.dcm')), type: 'application/dicom' },
    'alpha',
  );
  assert.equal(truncated.statusCode, 400, truncated.body);
  const written = logLines.slice(before).join('');
  for (const secret of ['CompressedSamples', 'CT1', 'DICM']) assert.ok(!written.includes(secret), secret);
  const lines = logLines.slice(before).map((line) => JSON.parse(line) as Record<string, unknown>);
  const requestLines = lines.filter((line) => line.msg === 'request');
  assert.equal(requestLines.length, 3, 'one line per request');
  assert.deepEqual(
    requestLines.map((line) => line.status),
    [200, 415, 400],
  );
  assert.deepEqual(requestLines[0]!.tasks, ['alpha']);
  assert.deepEqual(requestLines[0]!.batchRows, [1]);
  assert.equal(requestLines[0]!.route, '/v1/predict');
  assert.equal(typeof requestLines[0]!.latencyMs, 'number');
});

test('/metrics speaks Prometheus text: requests, latency, batch sizes, queue depth, adapters', async () => {
  const response = await app.inject({ method: 'GET', url: '/metrics' });
  assert.equal(response.statusCode, 200);
  assert.match(String(response.headers['content-type']), /^text\/plain; version=0\.0\.4/);
  const text = response.body;
  assert.match(text, /^melo_http_requests_total\{route="\/v1\/predict",method="POST",status="200"\} \d+$/m);
  assert.match(text, /^melo_http_request_duration_seconds_bucket\{le="0\.05",route="\/v1\/predict"\} \d+$/m);
  assert.match(text, /^melo_batch_rows_count \d+$/m);
  assert.match(text, /^melo_queue_rows 0$/m);
  assert.match(text, /^melo_adapters_loaded 6$/m);
  assert.match(text, /^melo_process_resident_memory_bytes \d+/m);
});

test('bearer token: every route but /healthz needs it; body and pixel limits answer 413', async () => {
  const guarded = await buildApp({
    backbone,
    adapters: root,
    threads: 1,
    watch: false,
    rescanMs: 0,
    token: 'correct horse',
    bodyLimitBytes: 64 * 1024,
    maxPixels: 100 * 100,
    logger: false,
  });
  try {
    const image = images.get('rgb.png')!;
    for (const url of ['/v1/tasks', '/metrics', '/docs/json', '/nowhere']) {
      const response = await guarded.inject({ method: 'GET', url });
      assert.equal(response.statusCode, 401, url);
      assert.equal(response.headers['www-authenticate'], 'Bearer');
    }
    assert.equal((await predictRequest(guarded, image, 'alpha')).statusCode, 401);
    assert.equal(
      (await predictRequest(guarded, image, 'alpha', { authorization: 'Bearer wrong horse' })).statusCode,
      401,
    );
    assert.equal(
      (await predictRequest(guarded, image, 'alpha', { authorization: 'correct horse' })).statusCode,
      401,
    );
    const ok = await predictRequest(guarded, image, 'alpha', { authorization: 'Bearer correct horse' });
    assert.equal(ok.statusCode, 200);
    assert.equal((await guarded.inject({ method: 'GET', url: '/healthz' })).statusCode, 200);
    const auth = { authorization: 'Bearer correct horse' };
    const big = await sharp({ create: { width: 200, height: 120, channels: 3, background: '#808080' } })
      .png()
      .toBuffer();
    const tooManyPixels = await predictRequest(guarded, { bytes: big, type: 'image/png' }, 'alpha', auth);
    assert.equal(tooManyPixels.statusCode, 413, tooManyPixels.body);
    assert.match(tooManyPixels.json<ErrorBody>().message, /200x120 pixels exceeds the limit of 10000/);
    const tooLarge = await predictRequest(
      guarded,
      { bytes: Buffer.alloc(70 * 1024, 1), type: 'image/png' },
      'alpha',
      auth,
    );
    assert.equal(tooLarge.statusCode, 413, tooLarge.body);
    const form = multipartBody('image', 'big.bin', Buffer.alloc(70 * 1024, 1), 'image/png');
    const tooLargeForm = await guarded.inject({
      method: 'POST',
      url: '/v1/predict',
      ...form,
      headers: { ...form.headers, ...auth },
    });
    assert.equal(tooLargeForm.statusCode, 413, tooLargeForm.body);
  } finally {
    await guarded.close();
  }
});

test('a full queue answers 503 with Retry-After at once; accepted requests all complete; hang-ups and time-outs leave the queue', async () => {
  const busy = await buildApp({
    backbone,
    adapters: root,
    threads: 1,
    watch: false,
    rescanMs: 0,
    maxBatch: 2,
    maxWaitMs: 0,
    maxQueueRows: 3,
    requestTimeoutMs: 1500,
    logger: false,
  });
  try {
    // Hold the model: the first batch blocks until released, so later rows stay queued.
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const engine = busy.engine;
    const run = engine.run.bind(engine);
    let entered = 0;
    engine.run = async (rows) => {
      entered++;
      await gate;
      return run(rows);
    };
    const image = images.get('rgb.png')!;
    const first = predictRequest(busy, image, 'alpha');
    // Generous waits: these only wait for work to reach the gate, on a possibly loaded machine.
    await waitFor(() => entered === 1, 15_000);
    const queued = [predictRequest(busy, image, 'wide,probe'), predictRequest(busy, image, 'twin')];
    await waitFor(() => busy.batcher.queuedRows === 3, 15_000);
    const started = performance.now();
    const refused = await predictRequest(busy, image, 'multi');
    const refusedMs = performance.now() - started;
    assert.equal(refused.statusCode, 503, refused.body);
    assert.equal(refused.json<ErrorBody>().code, 'MELO_ERR_QUEUE_FULL');
    assert.equal(refused.headers['retry-after'], '1');
    assert.ok(refusedMs < 200, `refused after ${refusedMs} ms`);
    release();
    const answers = await Promise.all([first, ...queued]);
    const expected = await reference(['alpha', 'wide', 'probe', 'twin'], [image.file]);
    assert.deepEqual(
      answers.map((answer) => answer.statusCode),
      [200, 200, 200],
    );
    assertMatches(answers[0]!.json<PredictBody>(), [expected[0]!], 'first');
    assertMatches(answers[1]!.json<PredictBody>(), [expected[1]!, expected[2]!], 'queued');
    assertMatches(answers[2]!.json<PredictBody>(), [expected[3]!], 'queued');
    const metrics = (await busy.inject({ method: 'GET', url: '/metrics' })).body;
    assert.match(metrics, /^melo_rejected_total\{reason="queue_full"\} 1$/m);

    // A request the model does not get to in time: 503 timeout, and it leaves the queue.
    let releaseSlow: () => void = () => {};
    const slowGate = new Promise<void>((resolve) => {
      releaseSlow = resolve;
    });
    engine.run = async (rows) => {
      await slowGate;
      return run(rows);
    };
    const blocked = predictRequest(busy, image, 'alpha');
    await new Promise((resolve) => setTimeout(resolve, 50));
    // A client that hangs up while queued: its row is withdrawn, not run for nobody.
    await busy.listen({ host: '127.0.0.1', port: 0 });
    const { port } = busy.server.address() as AddressInfo;
    const hangUp = httpRequest({
      host: '127.0.0.1',
      port,
      method: 'POST',
      path: '/v1/predict?tasks=twin',
      headers: { 'content-type': 'image/png' },
    });
    hangUp.on('error', () => {});
    hangUp.end(image.bytes);
    await waitFor(() => busy.batcher.queuedRows === 1, 1000);
    hangUp.destroy();
    await waitFor(() => busy.batcher.queuedRows === 0, 1000);
    assert.match(
      (await busy.inject({ method: 'GET', url: '/metrics' })).body,
      /^melo_rejected_total\{reason="client_closed"\} 1$/m,
    );
    const late = await predictRequest(busy, image, 'twin');
    assert.equal(late.statusCode, 503, late.body);
    assert.equal(late.json<ErrorBody>().code, 'MELO_ERR_TIMEOUT');
    assert.equal(busy.batcher.queuedRows, 0);
    releaseSlow();
    assert.equal((await blocked).statusCode, 503);
  } finally {
    await busy.close();
  }
});

async function waitFor(condition: () => boolean, timeoutMs: number): Promise<number> {
  const started = performance.now();
  while (!condition()) {
    if (performance.now() - started > timeoutMs) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return performance.now() - started;
}

test('adapters are picked up without a restart: added, changed, removed, half-copied, corrupt, conflicting', async () => {
  const liveRoot = join(work, 'live');
  await mkdir(liveRoot);
  await writeAdapter(liveRoot, 'alpha', adapters.alpha!);
  const live = await buildApp({ backbone, adapters: liveRoot, threads: 1, logger: false });
  const image = images.get('rgb.png')!;
  const ask = (tasks: string) => predictRequest(live, image, tasks);
  const referenceIn = async (dir: string) =>
    (await predictTasks(backbone, await loadTasks(backbone, [dir]), [image.file], { threads: 1 }))[0]!;
  const tasksBody = async () =>
    (await live.inject({ method: 'GET', url: '/v1/tasks' })).json<{
      tasks: { name: string }[];
      errors: { adapter: string; message: string; servingPrevious: boolean }[];
    }>();
  try {
    assert.equal((await ask('fresh')).statusCode, 404);

    // Added (saveAdapter moves complete files into place): answers within 2 s.
    const fresh = makeAdapter(backbone, { task: 'fresh', labels: ['x', 'y', 'z', 'w'], rank: 3, seed: 11 });
    const freshDir = await writeAdapter(liveRoot, 'fresh-dir', fresh);
    const added = performance.now();
    await waitForStatus(() => ask('fresh'), 200, 2000);
    const addedMs = performance.now() - added;
    assert.ok(addedMs < 2000, `took ${addedMs} ms`);
    assertMatches((await ask('fresh')).json<PredictBody>(), [await referenceIn(freshDir)], 'added');

    // Changed: new weights under the same name give the new numbers.
    const changed = makeAdapter(backbone, { task: 'fresh', labels: ['x', 'y', 'z', 'w'], rank: 2, seed: 12 });
    await writeAdapter(liveRoot, 'fresh-dir', changed);
    const want = await referenceIn(freshDir);
    const started = performance.now();
    while (true) {
      const body = (await ask('fresh')).json<PredictBody>();
      if (Math.abs(body.results[0]!.probabilities[0]! - want.probabilities[0]!) < 1e-6) break;
      assert.ok(performance.now() - started < 2000, 'changed adapter not picked up within 2 s');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    assertMatches((await ask('fresh')).json<PredictBody>(), [want], 'changed');

    // Copied by hand, one file at a time, the weights half-written for a while: reported, never served
    // half, and alpha keeps answering; once complete it serves.
    const copyDir = join(work, 'copy-source');
    const copied = makeAdapter(backbone, { task: 'copied', labels: ['p', 'q'], rank: 2, seed: 13 });
    await writeAdapter(work, 'copy-source', copied);
    const target = join(liveRoot, 'copied');
    await mkdir(target);
    await writeFile(
      join(target, 'adapter_config.json'),
      await readFile(join(copyDir, 'adapter_config.json')),
    );
    const weights = await readFile(join(copyDir, 'adapter_model.safetensors'));
    await writeFile(join(target, 'adapter_model.safetensors'), weights.subarray(0, weights.length >> 1));
    await waitFor(() => live.registry.problems().some((problem) => problem.adapter === 'copied'), 2000);
    assert.equal((await ask('alpha')).statusCode, 200);
    assert.equal((await ask('copied')).statusCode, 404);
    await writeFile(join(target, 'adapter_model.safetensors'), weights);
    await waitForStatus(() => ask('copied'), 200, 2000);
    assertMatches((await ask('copied')).json<PredictBody>(), [await referenceIn(copyDir)], 'copied');
    assert.ok(!(await tasksBody()).errors.some((problem) => problem.adapter === 'copied'));

    // Corrupt weights in a new directory, and an adapter for another backbone: reported by name.
    await mkdir(join(liveRoot, 'broken'));
    await writeFile(
      join(liveRoot, 'broken', 'adapter_config.json'),
      await readFile(join(copyDir, 'adapter_config.json')),
    );
    await writeFile(
      join(liveRoot, 'broken', 'adapter_model.safetensors'),
      Buffer.from('definitely not safetensors'),
    );
    const otherBackbone = { ...backbone, fingerprint: 'sha256:another' };
    await writeAdapter(
      liveRoot,
      'foreign',
      makeAdapter(otherBackbone, { task: 'foreign', labels: ['a', 'b'], seed: 14 }),
    );
    // The same task name as an adapter already served.
    await writeAdapter(
      liveRoot,
      'zz-duplicate',
      makeAdapter(backbone, { task: 'alpha', labels: ['a', 'b'], seed: 15 }),
    );
    // Each directory is created before its files are moved in: one seen empty is reported as such until
    // the files are there, so wait for the three final verdicts.
    await waitFor(() => {
      const problems = live.registry.problems();
      return (
        problems.length === 3 && !problems.some((problem) => problem.message.includes('no adapter_config'))
      );
    }, 2000);
    const { tasks, errors } = await tasksBody();
    assert.deepEqual(
      tasks.map((task) => task.name),
      ['alpha', 'copied', 'fresh'],
    );
    assert.deepEqual(
      errors.map((problem) => problem.adapter),
      ['broken', 'foreign', 'zz-duplicate'],
    );
    assert.match(errors[0]!.message, /^broken\/adapter_model\.safetensors: /);
    assert.match(errors[1]!.message, /was trained on another backbone/);
    assert.match(errors[2]!.message, /task 'alpha' is already served from alpha/);
    assert.ok(!errors.some((problem) => problem.message.includes(work)), 'no server paths in messages');
    assert.equal((await ask('alpha,copied,fresh')).statusCode, 200);

    // A served adapter overwritten with garbage keeps serving its last good version, flagged as such.
    await writeFile(join(freshDir, 'adapter_model.safetensors'), Buffer.from('garbage'));
    await waitFor(() => live.registry.problems().some((problem) => problem.adapter === 'fresh-dir'), 2000);
    const stale = (await tasksBody()).errors.find((problem) => problem.adapter === 'fresh-dir')!;
    assert.equal(stale.servingPrevious, true);
    assertMatches((await ask('fresh')).json<PredictBody>(), [want], 'previous version still served');

    // Removed: 404 within 2 s.
    await rm(freshDir, { recursive: true });
    await waitForStatus(() => ask('fresh'), 404, 2000);
    assert.equal((await ask('alpha')).statusCode, 200);
  } finally {
    await live.close();
  }
});

async function waitForStatus(
  send: () => Promise<LightMyRequestResponse>,
  status: number,
  timeoutMs: number,
): Promise<void> {
  const started = performance.now();
  while (true) {
    const response = await send();
    if (response.statusCode === status) return;
    if (performance.now() - started > timeoutMs)
      throw new Error(`still ${response.statusCode} after ${timeoutMs} ms: ${response.body}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

test('with no adapters: empty task list, 503 with Retry-After; the first one added serves, removing it empties again', async () => {
  const emptyRoot = join(work, 'empty');
  await mkdir(emptyRoot);
  const bare = await buildApp({ backbone, adapters: emptyRoot, threads: 1, logger: false });
  try {
    assert.deepEqual((await bare.inject({ method: 'GET', url: '/v1/tasks' })).json(), {
      tasks: [],
      errors: [],
    });
    assert.deepEqual((await bare.inject({ method: 'GET', url: '/healthz' })).json(), {
      status: 'ok',
      tasks: 0,
    });
    const image = images.get('rgb.png')!;
    const none = await predictRequest(bare, image);
    assert.equal(none.statusCode, 503);
    assert.equal(none.json<ErrorBody>().code, 'MELO_ERR_NO_TASKS');
    assert.equal(none.headers['retry-after'], '1');
    assert.equal((await predictRequest(bare, image, 'alpha')).statusCode, 404);
    const dir = await writeAdapter(emptyRoot, 'alpha', adapters.alpha!);
    await waitForStatus(() => predictRequest(bare, image, 'alpha'), 200, 2000);
    assertMatches(
      (await predictRequest(bare, image)).json<PredictBody>(),
      await predictTasks(backbone, await loadTasks(backbone, [dir]), [image.file], { threads: 1 }),
      'first adapter',
    );
    await rm(dir, { recursive: true });
    await waitForStatus(() => predictRequest(bare, image), 503, 2000);
  } finally {
    await bare.close();
  }
});

test('buildApp fails with one line naming a missing adapters directory', async () => {
  await assert.rejects(
    buildApp({ backbone, adapters: join(work, 'nowhere'), logger: false } satisfies ServeOptions),
    /nowhere: adapters directory does not exist/,
  );
});
