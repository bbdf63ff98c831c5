import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { runCli } from './helpers/cli.ts';

// The model card of the shipped backbone (models/melo-vit-tiny-fmnist/README.md) states its Fashion-MNIST
// test metrics as measured by `melo eval`; this reruns that command and holds the card to it.
const REPO = join(import.meta.dirname, '..');
const SHARED = process.env.MELO_SHARED_DATA ?? join(REPO, '..', 'shared', 'data');
const FASHION_DIR = process.env.MELO_FASHION_DIR ?? join(SHARED, 'fashion-mnist');
const noData = !existsSync(join(FASHION_DIR, 't10k-images-idx3-ubyte.gz')) && 'Fashion-MNIST not available';

test('the shipped backbone reproduces its model card on the 10,000 Fashion-MNIST test images', {
  skip: noData,
}, async () => {
  const result = await runCli(
    [
      'eval',
      '--backbone',
      join(REPO, 'models', 'melo-vit-tiny-fmnist'),
      '--data',
      `${FASHION_DIR}:test`,
      '--bootstrap',
      '0',
      '--json',
    ],
    { cwd: REPO, timeoutMs: 600_000 },
  );
  assert.equal(result.code, 0, result.stderr);
  const json = JSON.parse(result.stdout) as { n: number; metrics: Record<string, number> };
  assert.equal(json.n, 10_000);
  const card = { accuracy: 0.797, rocAuc: 0.977, macroF1: 0.788, ece: 0.081 };
  for (const [name, value] of Object.entries(card)) {
    assert.equal(
      json.metrics[name]!.toFixed(3),
      value.toFixed(3),
      `${name}: card ${value}, measured ${json.metrics[name]}`,
    );
  }
});
