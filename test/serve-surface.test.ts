/**
 * The server's surface against a hostile user and a hostile web page (issue 12, item 8): Host allow-list,
 * Origin check, the page with --token, no server paths in client messages, tasks=all beyond --max-queue,
 * admission before decoding, explanations and previews that decode once, log lines when tasks change,
 * Retry-After on shutdown. In-process (fastify inject); the load figures are in serve-hostile.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { FastifyInstance, InjectOptions } from 'fastify';
import sharp from 'sharp';
import { type Backbone, loadBackbone } from '../src/checkpoints/load.ts';
import { buildApp } from '../src/serve/app.ts';
import { workerExecArgv } from '../src/serve/engine/upload-decoder.ts';
import type { ServeOptions } from '../src/serve/options.ts';
import { LOOPBACK_HOSTS } from '../src/serve/plugins/request-guard.ts';
import { WEB_DIST } from '../src/serve/web/static.ts';
import { deflatedBomb, nativeDicom } from './helpers/hostile-dicom.ts';
import { adapterSet, FIXTURES, makeAdapter, writeAdapter } from './serve-fixtures.ts';

let backbone: Backbone;
let work = '';
let root = '';
let png: Buffer;

before(async () => {
  backbone = await loadBackbone(join(FIXTURES, 'hf'));
  work = await mkdtemp(join(tmpdir(), 'melo-surface-'));
  root = join(work, 'adapters');
  await mkdir(root);
  for (const [name, adapter] of Object.entries(adapterSet(backbone))) await writeAdapter(root, name, adapter);
  png = await sharp({ create: { width: 40, height: 30, channels: 3, background: '#4080c0' } })
    .png()
    .toBuffer();
});
after(() => rm(work, { recursive: true, force: true }));

async function withApp(options: Partial<ServeOptions>, body: (app: FastifyInstance) => Promise<void>) {
  const app = await buildApp({
    backbone,
    adapters: root,
    threads: 1,
    decodeThreads: 1,
    watch: false,
    rescanMs: 0,
    logger: false,
    ...options,
  });
  try {
    await body(app);
  } finally {
    await app.close();
  }
}

function predict(
  headers: Record<string, string> = {},
  tasks = 'alpha',
  payload: Buffer = png,
): InjectOptions {
  return {
    method: 'POST',
    url: `/v1/predict?tasks=${tasks}`,
    headers: { 'content-type': 'image/png', ...headers },
    payload,
  };
}

test('Host allow-list: a rebound DNS name is refused, loopback names and probes answer', async () => {
  await withApp({ allowedHosts: LOOPBACK_HOSTS }, async (app) => {
    const rebound = await app.inject({
      method: 'GET',
      url: '/v1/tasks',
      headers: { host: 'rebind.attacker.example:8080' },
    });
    assert.equal(rebound.statusCode, 403, rebound.body);
    assert.equal(rebound.json<{ code: string }>().code, 'MELO_ERR_FORBIDDEN_HOST');
    const viaPredict = await app.inject(predict({ host: 'attacker.example' }));
    assert.equal(viaPredict.statusCode, 403);
    for (const host of ['localhost:8080', '127.0.0.1:8080', '[::1]:8080', 'LOCALHOST']) {
      assert.equal(
        (await app.inject({ method: 'GET', url: '/v1/tasks', headers: { host } })).statusCode,
        200,
        host,
      );
    }
    assert.equal(
      (await app.inject({ method: 'GET', url: '/healthz', headers: { host: 'kube-probe.internal' } }))
        .statusCode,
      200,
    );
  });
});

test('Origin: cross-origin POSTs are refused, same-origin and non-browser POSTs answer', async () => {
  await withApp({}, async (app) => {
    const cross = await app.inject(predict({ host: 'localhost:8080', origin: 'http://attacker.example' }));
    assert.equal(cross.statusCode, 403, cross.body);
    assert.equal(cross.json<{ code: string }>().code, 'MELO_ERR_CROSS_ORIGIN');
    const nullOrigin = await app.inject(predict({ host: 'localhost:8080', origin: 'null' }));
    assert.equal(nullOrigin.statusCode, 403);
    const otherPort = await app.inject(predict({ host: 'localhost:8080', origin: 'http://localhost:9999' }));
    assert.equal(otherPort.statusCode, 403);
    const fetchMeta = await app.inject(predict({ host: 'localhost:8080', 'sec-fetch-site': 'cross-site' }));
    assert.equal(fetchMeta.statusCode, 403);
    const same = await app.inject(predict({ host: 'localhost:8080', origin: 'http://localhost:8080' }));
    assert.equal(same.statusCode, 200, same.body);
    assert.equal((await app.inject(predict({ host: 'localhost:8080' }))).statusCode, 200);
  });
});

test('with --token the page and its assets load; the API and unknown routes still need the token', async () => {
  const assets = await readdir(join(WEB_DIST, 'assets'));
  await withApp({ token: 'correct horse' }, async (app) => {
    const page = await app.inject({ method: 'GET', url: '/' });
    assert.equal(page.statusCode, 200);
    assert.match(page.body, /<html/i);
    for (const asset of assets) {
      assert.equal((await app.inject({ method: 'GET', url: `/assets/${asset}` })).statusCode, 200, asset);
    }
    for (const url of ['/v1/tasks', '/metrics', '/nowhere', '/assets/../v1/tasks']) {
      assert.equal((await app.inject({ method: 'GET', url })).statusCode, 401, url);
    }
    assert.equal((await app.inject(predict())).statusCode, 401);
    assert.equal((await app.inject(predict({ authorization: 'Bearer correct horse' }))).statusCode, 200);
  });
});

test('/v1/tasks errors name files relative to the adapters root, never the server directories', async () => {
  const liveRoot = join(work, 'paths');
  await mkdir(liveRoot);
  await writeAdapter(liveRoot, 'good', adapterSet(backbone).alpha);
  // Trained on another backbone: its error names the backbone, whose directory the client must not learn.
  const foreign = makeAdapter(
    { ...backbone, fingerprint: 'f'.repeat(64) },
    { task: 'foreign', labels: ['a', 'b'], seed: 9 },
  );
  await writeAdapter(liveRoot, 'foreign', foreign);
  await withApp({ adapters: liveRoot }, async (app) => {
    const body = (await app.inject({ method: 'GET', url: '/v1/tasks' })).json<{
      errors: { adapter: string; message: string }[];
    }>();
    assert.equal(body.errors.length, 1);
    const [problem] = body.errors;
    assert.equal(problem!.adapter, 'foreign');
    assert.match(problem!.message, /another backbone/);
    for (const secret of [backbone.dir, liveRoot, work, tmpdir()]) {
      assert.ok(!problem!.message.includes(secret), `${problem!.message} names ${secret}`);
    }
    assert.doesNotMatch(problem!.message, /(^|[\s(])\/\w/, problem!.message);
  });
});

test('tasks=all answers with more tasks than --max-queue rows', async () => {
  await withApp({ maxQueueRows: 2 }, async (app) => {
    const tasks = (await app.inject({ method: 'GET', url: '/v1/tasks' })).json<{ tasks: unknown[] }>().tasks;
    assert.ok(tasks.length > 2);
    const all = await app.inject(predict({}, 'all'));
    assert.equal(all.statusCode, 200, all.body);
    assert.equal(all.json<{ results: unknown[] }>().results.length, tasks.length);
  });
});

test('a burst of 16 concurrent uploads on one decode thread is answered, not turned away', async () => {
  await withApp({}, async (app) => {
    const replies = await Promise.all(Array.from({ length: 16 }, () => app.inject(predict())));
    assert.deepEqual(
      replies.map((reply) => reply.statusCode),
      Array.from({ length: 16 }, () => 200),
    );
  });
});

test('a full queue answers 503 before the upload is decoded; explain and preview decode once', async () => {
  await withApp({ maxQueueRows: 1, maxBatch: 1, maxWaitMs: 0 }, async (app) => {
    let decodes = 0;
    const decode = app.uploads.decode.bind(app.uploads);
    app.uploads.decode = (...args) => {
      decodes++;
      return decode(...args);
    };
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const run = app.engine.run.bind(app.engine);
    let entered = 0;
    app.engine.run = async (rows) => {
      entered++;
      await gate;
      return run(rows);
    };
    const first = app.inject(predict());
    while (entered === 0) await new Promise((resolve) => setTimeout(resolve, 10));
    const queued = app.inject(predict());
    while (app.batcher.queuedRows === 0) await new Promise((resolve) => setTimeout(resolve, 10));
    const before = decodes;
    const refused = await app.inject(predict({}, 'alpha', Buffer.alloc(1 << 20, 7)));
    assert.equal(refused.statusCode, 503, refused.body);
    assert.equal(refused.headers['retry-after'], '1');
    assert.equal(decodes, before, 'the refused upload was never decoded');
    release();
    assert.deepEqual([(await first).statusCode, (await queued).statusCode], [200, 200]);
    app.engine.run = run;

    decodes = 0;
    const preview = await app.inject({
      method: 'POST',
      url: '/v1/preview',
      headers: { 'content-type': 'image/png' },
      payload: png,
    });
    assert.equal(preview.statusCode, 200);
    assert.equal(preview.headers['content-type'], 'image/png');
    assert.deepEqual(
      await sharp(preview.rawPayload)
        .metadata()
        .then((m) => [m.width, m.height]),
      [40, 30],
    );
    assert.equal(decodes, 1);
    const explain = await app.inject({
      method: 'POST',
      url: '/v1/explain?task=alpha',
      headers: { 'content-type': 'image/png' },
      payload: png,
    });
    assert.equal(explain.statusCode, 200, explain.body);
    assert.deepEqual(explain.json<{ image: unknown }>().image, { width: 40, height: 30 });
    assert.equal(decodes, 2);
  });
});

test('a log line when tasks disappear (the adapters directory removed) and reappear', async () => {
  const liveRoot = join(work, 'vanishing');
  await mkdir(liveRoot);
  await writeAdapter(liveRoot, 'alpha', adapterSet(backbone).alpha);
  const lines: Record<string, unknown>[] = [];
  await withApp(
    {
      adapters: liveRoot,
      logger: { level: 'info', stream: { write: (line: string) => lines.push(JSON.parse(line)) } },
    },
    async (app) => {
      await rm(liveRoot, { recursive: true });
      await app.registry.rescan();
      const gone = lines.find((line) => line.msg === 'no tasks are served');
      assert.ok(gone, JSON.stringify(lines));
      assert.deepEqual(gone.removed, ['alpha']);
      assert.equal(gone.level, 40);
      await mkdir(liveRoot);
      await writeAdapter(liveRoot, 'alpha', adapterSet(backbone).alpha);
      await app.registry.rescan();
      const back = lines.find((line) => line.msg === 'served tasks changed');
      assert.ok(back, JSON.stringify(lines));
      assert.deepEqual(back.added, ['alpha']);
    },
  );
});

test('requests while the server shuts down get 503 with Retry-After', async () => {
  const app = await buildApp({
    backbone,
    adapters: root,
    threads: 1,
    decodeThreads: 1,
    watch: false,
    rescanMs: 0,
    logger: false,
  });
  // Hold the close: a preClose hook registered after the app's own runs while requests still arrive.
  let releaseClose: () => void = () => {};
  const held = new Promise<void>((resolve) => {
    releaseClose = resolve;
  });
  app.addHook('preClose', async () => {
    await held;
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as { port: number };
  const closing = app.close();
  await new Promise((resolve) => setTimeout(resolve, 50));
  try {
    const response = await fetch(`http://127.0.0.1:${port}/v1/tasks`);
    assert.equal(response.status, 503);
    assert.equal(response.headers.get('retry-after'), '1');
    assert.equal(((await response.json()) as { code: string }).code, 'MELO_ERR_SHUTTING_DOWN');
  } finally {
    releaseClose();
    await closing;
  }
});

test('tasks=auto reads a DICOM routing header on the upload thread: a deflated bomb gets 413, a DICOM predicts', async () => {
  const lying = await deflatedBomb(64, 64, 64 * 2 ** 20);
  await withApp({}, async (app) => {
    const bomb = await app.inject({
      method: 'POST',
      url: '/v1/predict',
      headers: { 'content-type': 'application/dicom' },
      payload: lying,
    });
    assert.equal(bomb.statusCode, 413, bomb.body);
    assert.match(bomb.json<{ message: string }>().message, /inflates past the size its header declares/);
    const ok = await app.inject({
      method: 'POST',
      url: '/v1/predict',
      headers: { 'content-type': 'application/dicom' },
      payload: nativeDicom(16, 16),
    });
    assert.equal(ok.statusCode, 200, ok.body);
    assert.ok(ok.json<{ results: unknown[] }>().results.length > 0);
  });
});

test('every 503 carries Retry-After: /readyz and /v1/predict with no task loaded', async () => {
  const empty = join(work, 'empty');
  await mkdir(empty);
  await withApp({ adapters: empty }, async (app) => {
    const ready = await app.inject({ method: 'GET', url: '/readyz' });
    assert.equal(ready.statusCode, 503);
    assert.equal(ready.headers['retry-after'], '1');
    const predicted = await app.inject(predict({}, 'all'));
    assert.equal(predicted.statusCode, 503, predicted.body);
    assert.equal(predicted.headers['retry-after'], '1');
  });
});

test('decode threads get only the loader flags of the parent (a worker refuses --eval, --expose-gc, …)', () => {
  assert.deepEqual(
    workerExecArgv([
      '--expose-gc',
      '--import',
      'tsx',
      '--input-type=module',
      '--eval',
      'await 0',
      '--max-old-space-size=100',
      '--require=./hook.cjs',
      '--no-warnings',
    ]),
    ['--import', 'tsx', '--require=./hook.cjs', '--no-warnings'],
  );
});
