import assert from 'node:assert/strict';
import { test } from 'node:test';
import { collectGarbage } from '../src/util/gc.ts';

test('collectGarbage frees a dropped ArrayBuffer at once (a full GC without --expose-gc)', () => {
  const size = 64 * 2 ** 20;
  let buffer: Uint8Array | undefined = new Uint8Array(size).fill(1);
  const held = process.memoryUsage().arrayBuffers;
  assert.ok(held >= size, `${held} bytes of ArrayBuffers while holding ${size}`);
  assert.equal(buffer[size - 1], 1);
  buffer = undefined;
  collectGarbage();
  const after = process.memoryUsage().arrayBuffers;
  assert.ok(held - after >= size, `freed ${held - after} of ${size} bytes`);
  assert.equal(typeof globalThis.gc, 'undefined', 'gc is not left on the global object');
});
