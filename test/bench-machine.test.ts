import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseCpuTimes, readCpuTimes, stealShare } from '../bench/lib/machine.ts';
import { stealWarning, writeBenchReport } from '../bench/lib/results.ts';

// Two readings of /proc/stat from a 2-core guest, 10 s apart: 2000 ticks in all, 150 of them stolen.
const BEFORE = 'cpu  44734 0 13104 90445 508 0 241 8914 0 0\ncpu0 21742 0 5978 46680 51 0 28 4414 0 0\n';
const AFTER = 'cpu  45934 0 13304 90895 508 0 241 9064 0 0\ncpu0 22342 0 6078 47000 51 0 28 4489 0 0\n';

test('steal is read from the aggregate cpu line of /proc/stat', () => {
  assert.deepEqual(parseCpuTimes(BEFORE), { total: 157946, steal: 8914 });
  const start = parseCpuTimes(BEFORE)!;
  const end = parseCpuTimes(AFTER)!;
  assert.equal(end.total - start.total, 2000);
  assert.equal(stealShare(start, end), 0.075);
  assert.equal(stealShare(start, start), null);
  // Kernels before 2.6.11 had no steal column; a missing or garbled line is unknown, not zero.
  assert.equal(parseCpuTimes('cpu  1 2 3 4 5 6 7\n'), null);
  assert.equal(parseCpuTimes('cpu  1 2 3 4 5 6 7 x\n'), null);
  assert.equal(parseCpuTimes('intr 5 6\n'), null);
});

test('a bench report records the steal share, and warns only above 3%', async () => {
  assert.equal(stealWarning(null), undefined);
  assert.equal(stealWarning(0.03), undefined);
  assert.match(stealWarning(0.075) ?? '', /^the hypervisor took 7\.5% of this machine's CPU time/);
  const dir = await mkdtemp(join(tmpdir(), 'melo-bench-report-'));
  try {
    await sleep(50); // a few clock ticks (100 per second per core) since the module read its start
    await writeBenchReport(join(dir, 'r.json'), { results: [] });
    const written = JSON.parse(await readFile(join(dir, 'r.json'), 'utf8')) as { cpuStealShare: unknown };
    if (readCpuTimes() === null) assert.equal(written.cpuStealShare, null);
    else {
      assert.equal(typeof written.cpuStealShare, 'number');
      const share = written.cpuStealShare as number;
      assert.ok(share >= 0 && share <= 1, `steal share ${share}`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
