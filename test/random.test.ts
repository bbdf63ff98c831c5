import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Random } from '../src/util/random.ts';

test('Random is reproducible from its seed and from a saved state', () => {
  const a = new Random(42);
  const b = new Random(42);
  const first = Array.from({ length: 5 }, () => a.nextUint32());
  assert.deepEqual(
    first,
    Array.from({ length: 5 }, () => b.nextUint32()),
  );
  const saved = a.getState();
  const next = Array.from({ length: 5 }, () => a.float());
  const restored = Random.fromState(saved);
  assert.deepEqual(
    next,
    Array.from({ length: 5 }, () => restored.float()),
  );
  assert.notDeepEqual(
    first,
    Array.from({ length: 5 }, () => new Random(43).nextUint32()),
  );
});

test('Random.float is uniform and normal has unit variance', () => {
  const random = new Random(7);
  let sum = 0;
  let sumSq = 0;
  const n = 200_000;
  for (let i = 0; i < n; i++) {
    const u = random.float();
    assert.ok(u >= 0 && u < 1);
    sum += u;
  }
  assert.ok(Math.abs(sum / n - 0.5) < 0.005);
  sum = 0;
  for (let i = 0; i < n; i++) {
    const z = random.normal();
    sum += z;
    sumSq += z * z;
  }
  assert.ok(Math.abs(sum / n) < 0.01);
  assert.ok(Math.abs(sumSq / n - 1) < 0.02);
});
