import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { runCli } from './helpers/cli.ts';

const REPO = new URL('..', import.meta.url).pathname;
const MEDMNIST_DIR = process.env.MELO_DATA_DIR ?? resolve(REPO, '../shared/data/medmnist');
let dir = '';
let home = '';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-demo-cli-'));
  // An empty home: no cached MedMNIST or BCCD copy to fall back on.
  home = join(dir, 'home');
  await mkdir(home);
});
after(() => rm(dir, { recursive: true, force: true }));

/** The demo with nothing reachable: downloads go to a closed port on this machine. */
function offlineDemo(args: string[]) {
  const env = {
    HOME: home,
    MELO_DATA_DIR: '',
    MELO_BCCD_DIR: '',
    MELO_MEDMNIST_URL: 'http://127.0.0.1:9/medmnist',
    MELO_BCCD_URL: 'http://127.0.0.1:9/bccd.zip',
  };
  return runCli(['demo', ...args], { env, cwd: dir, timeoutMs: 120_000 });
}

test('demo offline without MedMNIST: one line naming --data-dir and MELO_DATA_DIR, nothing trained', async () => {
  const out = join(dir, 'no-medmnist');
  const result = await offlineDemo(['--out', out, '--bccd', join(REPO, '../shared/data/bccd')]);
  assert.equal(result.code, 1);
  assert.match(
    result.stderr,
    /^melo: error: cannot download http:\/\/127\.0\.0\.1:9\/medmnist\/breastmnist\.npz\?download=1: .* \(offline\? pass --data-dir <dir> or set MELO_DATA_DIR to a directory holding breastmnist\.npz\)$/m,
  );
  assert.doesNotMatch(result.stderr, /epoch/);
  assert.ok(!existsSync(join(out, 'adapters', 'breast-ultrasound', 'adapter_model.safetensors')));
});

test('demo offline without BCCD: fails on BCCD before training the MedMNIST tasks, naming --bccd and MELO_BCCD_DIR', async () => {
  const out = join(dir, 'no-bccd');
  const result = await offlineDemo(['--out', out, '--data-dir', MEDMNIST_DIR]);
  assert.equal(result.code, 1);
  assert.match(result.stderr, /\(offline\? pass --bccd <dir> or set MELO_BCCD_DIR to a local copy\)\n$/);
  // The three MedMNIST tasks' data were opened from --data-dir, and none was trained.
  assert.match(result.stderr, new RegExp(`data: ${MEDMNIST_DIR}/breastmnist\\.npz`));
  assert.doesNotMatch(result.stderr, /epoch|\[1\/4\]/);
  assert.ok(!existsSync(join(out, 'adapters', 'breast-ultrasound', 'adapter_model.safetensors')));
});

test('demo --help names the data flags, their variables and the image cap', async () => {
  const help = await runCli(['demo', '--help']);
  assert.equal(help.code, 0);
  const text = help.stdout.replace(/\s+/g, ' ');
  assert.match(text, /--data-dir <dir> directory of MedMNIST \.npz files \(default: MELO_DATA_DIR/);
  assert.match(text, /--bccd <dir> BCCD dataset directory \(default: MELO_BCCD_DIR/);
  assert.match(text, /--train-limit <n> at most N training images per task .*\(default: 2000\)/);
});
