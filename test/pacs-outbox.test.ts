import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { PacsError } from '../src/pacs/dicomweb.ts';
import { type InstanceHeader, readInstanceHeader } from '../src/pacs/instance.ts';
import { isRetryable, Outbox, type OutboxHandlers } from '../src/pacs/outbox.ts';
import { buildApp } from '../src/serve/app.ts';
import { sourcePath, TINY, writeRoutedAdapters } from './pacs-fixtures.ts';

let dir = '';
let ct: { bytes: Uint8Array; header: InstanceHeader };
let mr: { bytes: Uint8Array; header: InstanceHeader };

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-outbox-'));
  const read = async (file: string) => {
    const bytes = await readFile(sourcePath(file));
    return { bytes, header: readInstanceHeader(bytes, file) };
  };
  ct = await read('CT_small.dcm');
  mr = await read('MR_small.dcm');
});
after(() => rm(dir, { recursive: true, force: true }));

/** A fake SR per instance: its source UID as bytes, so deliveries can be told apart. */
const srOf = (header: InstanceHeader) => new TextEncoder().encode(`sr-of-${header.sopInstanceUid}`);
const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

async function until(check: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

test('retryable: no answer, 408, 429, 5xx; not 400, 409 or other errors', () => {
  for (const status of [0, 408, 429, 500, 503])
    assert.equal(isRetryable(new PacsError(status, 'x', 'u')), true);
  for (const status of [400, 401, 409]) assert.equal(isRetryable(new PacsError(status, 'x', 'u')), false);
  assert.equal(isRetryable(new Error('x')), false);
});

test('outbox: retries with doubling delays while the PACS is down, then delivers each SR once', async () => {
  const box = join(dir, 'retry');
  const attempts: number[] = [];
  const delivered: string[] = [];
  let down = 3;
  const handlers: OutboxHandlers = {
    classify: async (_bytes, header) => srOf(header),
    deliver: async (sr) => {
      attempts.push(performance.now());
      if (down > 0) {
        down -= 1;
        throw new PacsError(0, 'STOW-RS store', 'http://pacs');
      }
      delivered.push(text(sr));
    },
  };
  const outbox = await Outbox.open(box, handlers, { retryBaseMs: 40, retryMaxMs: 1000, concurrency: 1 });
  await outbox.enqueue(ct.bytes, ct.header);
  // Acknowledged means on disk, before anything ran.
  assert.deepEqual(await readdir(join(box, 'jobs')), [`${ct.header.sopInstanceUid}.dcm`]);
  outbox.start();
  await until(() => delivered.length === 1, 'delivery');
  await outbox.close();
  assert.deepEqual(delivered, [`sr-of-${ct.header.sopInstanceUid}`]);
  assert.equal(outbox.counts.retries, 3);
  const gaps = attempts.slice(1).map((at, i) => at - attempts[i]!);
  // 40, 80, 160 ms (timers fire late, never early).
  for (const [i, gap] of gaps.entries()) assert.ok(gap >= 40 * 2 ** i - 5, `gap ${i}: ${gap.toFixed(0)} ms`);
  assert.ok(gaps[2]! > gaps[0]!, 'the delay grows');
  assert.deepEqual(await readdir(join(box, 'jobs')), []);
  assert.deepEqual(await readdir(join(box, 'results')), []);
});

test('outbox: a closed outbox keeps its work on disk; reopened, it delivers results without classifying again', async () => {
  const box = join(dir, 'restart');
  let classified = 0;
  const first = await Outbox.open(box, {
    classify: async (_bytes, header) => {
      classified += 1;
      return srOf(header);
    },
    deliver: async () => {
      throw new PacsError(503, 'STOW-RS store', 'http://pacs');
    },
  });
  await first.enqueue(ct.bytes, ct.header);
  await first.enqueue(mr.bytes, mr.header);
  first.start();
  await until(async () => (await readdir(join(box, 'results'))).length === 2, 'two results');
  await first.close();
  assert.equal(classified, 2);
  assert.deepEqual(await readdir(join(box, 'jobs')), [], 'jobs are removed once their SR is on disk');
  assert.equal(await first.pending(), 2);

  const delivered: string[] = [];
  const second = await Outbox.open(box, {
    classify: async () => {
      throw new Error('must not classify again');
    },
    deliver: async (sr) => {
      delivered.push(text(sr));
    },
  });
  second.start();
  await until(() => delivered.length === 2, 'both delivered');
  await second.close();
  assert.deepEqual(delivered.sort(), [srOf(ct.header), srOf(mr.header)].map(text).sort());
  assert.equal(await second.pending(), 0);
});

test('outbox: a refusal is final (failed/ with the reason); no task means no SR; other jobs go on', async () => {
  const box = join(dir, 'refused');
  const delivered: string[] = [];
  const outbox = await Outbox.open(box, {
    classify: async (_bytes, header) => (header.modality === 'MR' ? undefined : srOf(header)),
    deliver: async (sr) => {
      if (text(sr).includes(ct.header.sopInstanceUid))
        throw new PacsError(400, 'STOW-RS store', 'http://pacs');
      delivered.push(text(sr));
    },
  });
  await outbox.enqueue(ct.bytes, ct.header);
  await outbox.enqueue(mr.bytes, mr.header);
  outbox.start();
  await until(async () => (await outbox.pending()) === 0, 'an empty queue');
  await outbox.close();
  assert.deepEqual(delivered, []);
  assert.equal(outbox.counts.failed, 1);
  assert.equal(outbox.counts.noTask, 1);
  const uid = ct.header.sopInstanceUid;
  assert.deepEqual((await readdir(join(box, 'failed'))).sort(), [`${uid}.json`, `${uid}.sr.dcm`]);
  const reason = JSON.parse(await readFile(join(box, 'failed', `${uid}.json`), 'utf8'));
  assert.deepEqual(reason, {
    sopInstanceUid: uid,
    reason: 'http://pacs: STOW-RS store: the PACS answered HTTP 400',
  });
});

test('STOW-RS route: streamed into the outbox; a preamble is skipped; an instance over the limit gets 413', async () => {
  const backbone = await loadBackbone(TINY);
  const adapters = join(dir, 'stow-adapters');
  await writeRoutedAdapters(backbone, adapters);
  const outbox = join(dir, 'stow-outbox');
  const app = await buildApp({
    backbone,
    adapters,
    threads: 1,
    watch: false,
    rescanMs: 0,
    logger: false,
    // Nothing listens there: deliveries wait in the outbox, which is what this test looks at.
    dicomweb: { outbox, resultsUrl: 'http://127.0.0.1:9/dicom-web', retryBaseMs: 60_000 },
    bodyLimitBytes: 5000,
  });
  try {
    const boundary = 'b0undary';
    const body = (parts: Uint8Array[], preamble = '') =>
      Buffer.concat([
        Buffer.from(preamble),
        ...parts.flatMap((part) => [
          Buffer.from(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`),
          part,
          Buffer.from('\r\n'),
        ]),
        Buffer.from(`--${boundary}--`),
      ]);
    const post = (payload: Buffer, study = '') =>
      app.inject({
        method: 'POST',
        url: `/dicom-web/studies${study}`,
        headers: { 'content-type': `multipart/related; type="application/dicom"; boundary="${boundary}"` },
        payload,
      });
    // MR_small (9 KB) is over the 5000-byte limit; a short part is not, but is no DICOM instance.
    const small = await post(body([Buffer.from('not a DICOM instance')], '\r\n'));
    assert.equal(small.statusCode, 409);
    assert.deepEqual(small.json()['00081198'].Value[0]['00081197'].Value, [0xc000]);
    const large = await post(body([mr.bytes], 'a preamble\r\n'));
    assert.equal(large.statusCode, 413, large.body);
    assert.equal(large.json().code, 'MELO_ERR_IMAGE_TOO_LARGE');
    const noBoundary = await app.inject({
      method: 'POST',
      url: '/dicom-web/studies',
      headers: { 'content-type': 'multipart/related; type="application/dicom"' },
      payload: 'x',
    });
    assert.equal(noBoundary.statusCode, 400);
    const wrongType = await app.inject({
      method: 'POST',
      url: '/dicom-web/studies',
      headers: { 'content-type': `multipart/related; type="application/dicom+xml"; boundary=${boundary}` },
      payload: 'x',
    });
    assert.equal(wrongType.statusCode, 415);
    assert.deepEqual(await readdir(join(outbox, 'jobs')), []);
  } finally {
    await app.close();
  }
});
