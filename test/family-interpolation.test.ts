import { join } from 'node:path';
import { test } from 'node:test';
import { resamplePositionEmbedding } from '../src/checkpoints/resample.ts';
import { readSafetensors } from '../src/checkpoints/safetensors.ts';
import { assertClose } from './helpers/graph.ts';

// PyTorch's F.interpolate(bicubic, align_corners=False) with and without antialias, from
// scripts/fixtures/make_family_fixtures.py: upsampling 4→7, downsampling 5→3 and a non-square 4×4→6×3.
const reference = await readSafetensors(
  join(new URL('./fixtures/families/references/', import.meta.url).pathname, 'interpolation.safetensors'),
);
const ref = (name: string) => reference.tensors.get(name)!;

for (const [old, [h, w]] of [
  [4, [7, 7]],
  [5, [3, 3]],
  [4, [6, 3]],
] as const) {
  for (const [mode, suffix] of [
    ['bicubic', 'bicubic'],
    ['bicubic-antialias', 'bicubic-aa'],
  ] as const) {
    test(`position embeddings ${old}×${old} → ${h}×${w}, ${mode}, match PyTorch`, () => {
      const grid = ref(`grid${old}_to_${h}x${w}`);
      const out = resamplePositionEmbedding(grid, [old, old], [h, w], 0, mode);
      assertClose(out.data, ref(`grid${old}_to_${h}x${w}_${suffix}`).data, 2e-6, `${mode} ${h}x${w}`);
    });
  }
}

test('the two interpolations differ (the fixtures can tell HF from timm)', () => {
  const grid = ref('grid4_to_7x7');
  const plain = resamplePositionEmbedding(grid, [4, 4], [7, 7], 0, 'bicubic');
  const aa = resamplePositionEmbedding(grid, [4, 4], [7, 7], 0, 'bicubic-antialias');
  let diff = 0;
  for (let i = 0; i < plain.data.length; i++) diff = Math.max(diff, Math.abs(plain.data[i]! - aa.data[i]!));
  if (diff < 1e-2) throw new Error(`expected a visible difference, got ${diff}`);
});
