import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

// The docs tell readers to `git apply` these experiments to rerun their numbers: each must still apply to
// the tree it ships with (the 7-bit one stopped applying once and nothing noticed).
const root = new URL('..', import.meta.url).pathname;
const experiments = join(root, 'bench', 'experiments');
const patches = readdirSync(experiments).filter((name) => name.endsWith('.patch'));

test('every experiment patch in bench/experiments still applies to this tree', {
  skip: existsSync(join(root, '.git')) ? undefined : 'not a git checkout',
}, () => {
  assert.ok(patches.length > 0);
  for (const patch of patches) {
    const check = spawnSync('git', ['apply', '--check', join(experiments, patch)], {
      cwd: root,
      encoding: 'utf8',
    });
    assert.equal(check.status, 0, `${patch}: ${check.stderr.trim()}`);
  }
});
