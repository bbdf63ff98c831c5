import assert from 'node:assert/strict';
import { test } from 'node:test';
import { tunedPeerSlower } from '../bench/lib/peer-tuning.ts';

// bench:train and bench:infer give every ratio against the tuned PyTorch; they must say when the tuned
// configuration ran slower than the defaults, since those ratios would then flatter melo.
test('the benches flag a tuned peer that ran slower than its defaults, and only then', () => {
  assert.equal(
    tunedPeerSlower('full step', 1.2, 1.5),
    "full step: the tuned PyTorch (1.200 images/s) ran slower than its defaults (1.500); ratios against the tuned peer overstate melo here, use the default peer's",
  );
  assert.equal(tunedPeerSlower('full step', 1.5, 1.5), undefined);
  assert.equal(tunedPeerSlower('LoRA step', 2.54, 1.69), undefined);
  assert.equal(tunedPeerSlower('LoRA step', undefined, 1.69), undefined);
  assert.equal(tunedPeerSlower('LoRA step', 2.54, undefined), undefined);
});
