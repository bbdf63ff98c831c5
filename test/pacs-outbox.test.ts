import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { PacsError } from '../src/pacs/dicomweb.ts';
import { type InstanceHeader, readInstanceHeader } from '../src/pacs/instance.ts';
import { isRetryable, Outbox, type OutboxHandlers } from '../src/pacs/outbox.ts';
import { sourcePath } from './pacs-fixtures.ts';

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
  gaps.forEach((gap, i) => assert.ok(gap >= 40 * 2 ** i - 5, `gap ${i}: ${gap.toFixed(0)} ms`));
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
