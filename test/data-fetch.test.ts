import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { Command, CommanderError } from 'commander';
import { registerDataCommand } from '../src/cli/commands/data.ts';
import { fetchMedmnist, medmnistCacheDir, medmnistFileName } from '../src/data/medmnist-fetch.ts';

const SHARED = process.env.MELO_SHARED_DATA ?? join(import.meta.dirname, '..', '..', 'shared', 'data');
const RETINA = join(SHARED, 'medmnist', 'retinamnist.npz');

/** A local stand-in for the Zenodo record: serves `files` and records every request path. */
const files = new Map<string, Uint8Array>();
const requests: string[] = [];
let server: Server;
let baseUrl: string;

before(async () => {
  server = createServer((request, response) => {
    requests.push(request.url ?? '');
    const url = new URL(request.url ?? '/', 'http://localhost');
    const body = files.get(url.pathname.replace(/^\/files\//, ''));
    if (body === undefined || url.searchParams.get('download') !== '1') {
      response.writeHead(404, 'Not Found').end();
      return;
    }
    response.writeHead(200, { 'content-length': body.length, 'content-type': 'application/octet-stream' });
    // Two writes, so the client sees more than one chunk.
    response.write(body.subarray(0, body.length >> 1));
    response.end(body.subarray(body.length >> 1));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/files`;
});

after(() => server.close());

const md5 = (bytes: Uint8Array) => createHash('md5').update(bytes).digest('hex');

test('file names and cache directory', () => {
  assert.equal(medmnistFileName('retinamnist'), 'retinamnist.npz');
  assert.equal(medmnistFileName('breastmnist', 64), 'breastmnist_64.npz');
  assert.throws(() => medmnistFileName('breastmnist', 32), /size must be one of 28, 64, 128, 224, got 32/);
  assert.throws(() => medmnistFileName('../x'), /must be lower-case letters and digits/);
  assert.equal(medmnistCacheDir({ MELO_DATA_DIR: '/data/mm' }), '/data/mm');
  assert.match(medmnistCacheDir({}), /\.cache[\\/]melo[\\/]medmnist$/);
});

test('downloads the official file, verifies the published md5, then uses the cache without network', {
  skip: !existsSync(RETINA) && 'no retinamnist.npz',
}, async () => {
  const bytes = new Uint8Array(await readFile(RETINA));
  files.set('retinamnist.npz', bytes);
  const cacheDir = await mkdtemp(join(tmpdir(), 'melo-fetch-'));
  const progress: number[] = [];
  const before = requests.length;
  const first = await fetchMedmnist('retinamnist', {
    cacheDir,
    baseUrl,
    onProgress: (received) => progress.push(received),
  });
  assert.deepEqual(first, {
    path: join(cacheDir, 'retinamnist.npz'),
    md5: 'bd4c0672f1bba3e3a89f0e4e876791e4',
    downloaded: true,
    verified: true,
  });
  assert.deepEqual(requests.slice(before), ['/files/retinamnist.npz?download=1']);
  assert.equal(progress.at(-1), bytes.length);
  assert.deepEqual(new Uint8Array(await readFile(first.path)), bytes);
  assert.deepEqual(await readdir(cacheDir), ['retinamnist.npz'], 'no temporary files left');

  const second = await fetchMedmnist('retinamnist', { cacheDir, baseUrl });
  assert.equal(second.downloaded, false);
  assert.equal(second.verified, true);
  assert.equal(requests.length, before + 1, 'a verified cached copy needs no network');
});

test('an md5 mismatch keeps no file and says so in one line', async () => {
  files.set('breastmnist_64.npz', randomBytes(5000));
  const cacheDir = await mkdtemp(join(tmpdir(), 'melo-fetch-'));
  await assert.rejects(fetchMedmnist('breastmnist', { size: 64, cacheDir, baseUrl }), (error: Error) => {
    assert.match(
      error.message,
      /^download of http:\/\/127\.0\.0\.1:\d+\/files\/breastmnist_64\.npz\?download=1 has md5 [0-9a-f]{32}, expected 742edef2a1fd1524b2efff4bd7ba9364; the file was not kept$/,
    );
    return true;
  });
  assert.deepEqual(await readdir(cacheDir), []);
});

test('unknown md5 (a file the record does not list): refused before any request unless --md5 or --no-verify', async () => {
  const body = randomBytes(3000);
  files.set('fakemnist_128.npz', body);
  const cacheDir = await mkdtemp(join(tmpdir(), 'melo-fetch-'));
  const before = requests.length;
  await assert.rejects(
    fetchMedmnist('fakemnist', { size: 128, cacheDir, baseUrl }),
    /melo has no verified md5 for fakemnist_128\.npz; pass --md5 <sum> from https:\/\/zenodo\.org\/records\/10519652 or --no-verify/,
  );
  assert.equal(requests.length, before);

  const withSum = await fetchMedmnist('fakemnist', {
    size: 128,
    cacheDir,
    baseUrl,
    md5: md5(body).toUpperCase(),
  });
  assert.deepEqual([withSum.downloaded, withSum.verified, withSum.md5], [true, true, md5(body)]);

  const unverifiedDir = await mkdtemp(join(tmpdir(), 'melo-fetch-'));
  const unverified = await fetchMedmnist('fakemnist', {
    size: 128,
    cacheDir: unverifiedDir,
    baseUrl,
    verify: false,
  });
  assert.deepEqual([unverified.downloaded, unverified.verified, unverified.md5], [true, false, md5(body)]);
  await assert.rejects(
    fetchMedmnist('fakemnist', { size: 128, cacheDir, baseUrl, md5: 'abc' }),
    /md5 'abc' is not 32 hexadecimal digits/,
  );
});

test('a damaged cached copy is replaced; HTTP errors and the env base URL', async () => {
  const body = randomBytes(2048);
  files.set('octmnist.npz', body);
  const cacheDir = await mkdtemp(join(tmpdir(), 'melo-fetch-'));
  await writeFile(join(cacheDir, 'octmnist.npz'), 'truncated');
  const saved = process.env.MELO_MEDMNIST_URL;
  process.env.MELO_MEDMNIST_URL = `${baseUrl}/`;
  try {
    const result = await fetchMedmnist('octmnist', { cacheDir, md5: md5(body) });
    assert.equal(result.downloaded, true);
    assert.deepEqual(new Uint8Array(await readFile(result.path)), new Uint8Array(body));
    await assert.rejects(
      fetchMedmnist('tissuemnist', { cacheDir, verify: false }),
      /^MeloError: cannot download http:\/\/127\.0\.0\.1:\d+\/files\/tissuemnist\.npz\?download=1: HTTP 404 Not Found$/,
    );
  } finally {
    if (saved === undefined) delete process.env.MELO_MEDMNIST_URL;
    else process.env.MELO_MEDMNIST_URL = saved;
  }
  assert.deepEqual(await readdir(cacheDir), ['octmnist.npz']);
  await assert.rejects(
    fetchMedmnist('octmnist', {
      cacheDir: await mkdtemp(join(tmpdir(), 'melo-fetch-')),
      md5: md5(body),
      baseUrl: 'http://127.0.0.1:9/files',
    }),
    /cannot download http:\/\/127\.0\.0\.1:9\/files\/octmnist\.npz\?download=1: /,
  );
});

test('melo data fetch medmnist prints where the file is', async () => {
  const body = randomBytes(1000);
  files.set('bloodmnist_224.npz', body);
  const cacheDir = await mkdtemp(join(tmpdir(), 'melo-fetch-'));
  const out: string[] = [];
  const program = new Command().exitOverride().configureOutput({ writeErr: () => undefined });
  registerDataCommand(program, { stdout: (text) => out.push(text), stderr: () => undefined });
  for (const command of program.commands) command.exitOverride();
  await program.parseAsync(
    [
      'data',
      'fetch',
      'medmnist',
      'bloodmnist',
      '--size',
      '224',
      '--dir',
      cacheDir,
      '--url',
      baseUrl,
      '--md5',
      md5(body),
      '--json',
    ],
    { from: 'user' },
  );
  assert.deepEqual(JSON.parse(out.join('')), {
    path: join(cacheDir, 'bloodmnist_224.npz'),
    md5: md5(body),
    downloaded: true,
    verified: true,
  });
  out.length = 0;
  await program.parseAsync(
    ['data', 'fetch', 'medmnist', 'bloodmnist', '--size', '224', '--dir', cacheDir, '--md5', md5(body)],
    { from: 'user' },
  );
  assert.equal(
    out.join(''),
    `${join(cacheDir, 'bloodmnist_224.npz')} (already cached; md5 ${md5(body)} verified)\n`,
  );
  await assert.rejects(
    program.parseAsync(['data', 'fetch', 'kaggle', 'x'], { from: 'user' }),
    /unknown dataset source 'kaggle'/,
  );
  await assert.rejects(
    program.parseAsync(['data', 'fetch', 'medmnist', 'x', '--size', '100'], { from: 'user' }),
    (error: unknown) => error instanceof CommanderError,
  );
});
