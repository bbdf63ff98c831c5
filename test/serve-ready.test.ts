import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { type Backbone, loadBackbone } from '../src/checkpoints/load.ts';
import { buildApp } from '../src/serve/app.ts';
import { copyFixtureAdapter, FIXTURES } from './serve-fixtures.ts';

let root = '';
let backbone: Backbone;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'melo-ready-'));
  backbone = await loadBackbone(join(FIXTURES, 'hf'));
});
after(() => rm(root, { recursive: true, force: true }));

async function waitFor(check: () => Promise<boolean>, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

test('/readyz: 503 not-ready with no task, 200 ready once one is loaded; /healthz is ok throughout; neither needs the token', async () => {
  const adapters = join(root, 'adapters');
  await mkdir(adapters);
  const app = await buildApp({
    backbone,
    adapters,
    threads: 1,
    token: 'secret',
    rescanMs: 50,
    logger: false,
  });
  try {
    const before = await app.inject({ method: 'GET', url: '/readyz' });
    assert.equal(before.statusCode, 503);
    assert.deepEqual(before.json(), { status: 'not-ready', tasks: 0, loading: false });
    assert.deepEqual((await app.inject({ method: 'GET', url: '/healthz' })).json(), {
      status: 'ok',
      tasks: 0,
    });
    await copyFixtureAdapter(adapters, 'fixture');
    await waitFor(
      async () => (await app.inject({ method: 'GET', url: '/readyz' })).statusCode === 200,
      10_000,
    );
    assert.deepEqual((await app.inject({ method: 'GET', url: '/readyz' })).json(), {
      status: 'ready',
      tasks: 1,
      loading: false,
    });
    assert.equal((await app.inject({ method: 'GET', url: '/v1/tasks' })).statusCode, 401);
  } finally {
    await app.close();
  }
});

test("OpenAPI: the predict route's tasks parameter is optional with its default; /readyz is documented", async () => {
  const app = await buildApp({
    backbone,
    adapters: root,
    threads: 1,
    watch: false,
    rescanMs: 0,
    logger: false,
  });
  try {
    const openapi = (await app.inject({ method: 'GET', url: '/docs/json' })).json<{
      paths: Record<
        string,
        Record<
          string,
          {
            parameters?: { name: string; in: string; required?: boolean; schema: { default?: unknown } }[];
            responses: Record<string, unknown>;
          }
        >
      >;
    }>();
    const tasks = openapi.paths['/v1/predict']!.post!.parameters!.find((p) => p.name === 'tasks')!;
    assert.equal(tasks.in, 'query');
    assert.notEqual(tasks.required, true);
    assert.equal(tasks.schema.default, 'auto');
    assert.deepEqual(Object.keys(openapi.paths['/readyz']!.get!.responses).sort(), ['200', '503']);
  } finally {
    await app.close();
  }
});
