import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  adjustBrightness,
  adjustContrast,
  augmentAndPreprocess,
  DEFAULT_AUGMENT,
  flipHorizontal,
  NO_AUGMENT,
  randomResizedCropRect,
  resolveAugmentConfig,
  rotate,
} from '../src/imaging/augment.ts';
import type { DecodedImage, PreprocessConfig } from '../src/imaging/image.ts';
import { preprocess } from '../src/imaging/preprocess.ts';
import { resample } from '../src/imaging/resize.ts';
import { Random } from '../src/util/random.ts';

function syntheticRgb(width: number, height: number): DecodedImage {
  const data = new Float32Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 3;
      data[i] = x / (width - 1);
      data[i + 1] = 0.5 + 0.4 * Math.sin(x / 3 + y / 5);
      data[i + 2] = ((x * 7 + y * 13) % 17) / 16;
    }
  }
  return { width, height, channels: 3, data };
}

const image = syntheticRgb(50, 40);
const config: PreprocessConfig = {
  inputSize: [24, 24],
  resizeMode: 'shortest',
  resizeSize: [28, 28],
  interpolation: 'bicubic',
  mean: [0.485, 0.456, 0.406],
  std: [0.229, 0.224, 0.225],
};
/** Same geometry, identity normalisation: exposes the [0, 1] pixels before (x - mean) / std. */
const unnormalised: PreprocessConfig = { ...config, mean: [0, 0, 0], std: [1, 1, 1] };

describe('augmentAndPreprocess', () => {
  test('is deterministic for a seed and differs between seeds', () => {
    const a = augmentAndPreprocess(image, config, {}, new Random(5));
    const b = augmentAndPreprocess(image, config, {}, new Random(5));
    const c = augmentAndPreprocess(image, config, {}, new Random(6));
    assert.equal(a.length, 3 * 24 * 24);
    assert.deepEqual(a, b);
    assert.notDeepEqual(a, c);
    // One stream over several samples also replays exactly.
    const first = new Random(9);
    const second = new Random(9);
    for (let i = 0; i < 3; i++) {
      assert.deepEqual(
        augmentAndPreprocess(image, config, {}, first),
        augmentAndPreprocess(image, config, {}, second),
      );
    }
    assert.deepEqual(first.getState(), second.getState());
  });

  test('with every step off it equals preprocess', () => {
    assert.deepEqual(
      augmentAndPreprocess(image, config, NO_AUGMENT, new Random(1)),
      preprocess(image, config),
    );
    assert.deepEqual(
      augmentAndPreprocess(
        image,
        config,
        { ...NO_AUGMENT, horizontalFlip: 0, rotationDegrees: 0 },
        new Random(1),
      ),
      preprocess(image, config),
    );
  });

  test('flip with probability 1 mirrors every plane exactly', () => {
    const plain = preprocess(image, config);
    const flipped = augmentAndPreprocess(image, config, { ...NO_AUGMENT, horizontalFlip: 1 }, new Random(3));
    const [h, w] = config.inputSize;
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) {
          assert.equal(flipped[(c * h + y) * w + x], plain[(c * h + y) * w + (w - 1 - x)]);
        }
      }
    }
  });

  test('a full-image crop (scale 1, the image aspect) is a plain resize to the input size', () => {
    const crop = { scale: [1, 1], ratio: [1.25, 1.25] } as const;
    const out = augmentAndPreprocess(
      image,
      unnormalised,
      { ...NO_AUGMENT, randomResizedCrop: crop },
      new Random(2),
    );
    const resized = resample(image, 24, 24, 'bicubic');
    const [h, w] = config.inputSize;
    for (let i = 0; i < h * w; i++) {
      for (let c = 0; c < 3; c++) assert.equal(out[c * h * w + i], resized.data[i * 3 + c]);
    }
  });

  test('brightness and contrast draw their factors in that order from the stream', () => {
    const seed = 11;
    const out = augmentAndPreprocess(
      image,
      unnormalised,
      { ...NO_AUGMENT, brightness: 0.3, contrast: 0.2 },
      new Random(seed),
    );
    const replay = new Random(seed);
    const brightness = replay.uniform(0.7, 1.3);
    const contrast = replay.uniform(0.8, 1.2);
    const base = preprocess(image, unnormalised);
    const [h, w] = config.inputSize;
    const plane = h * w;
    const bright = Array.from(base, (x) => Math.min(1, Math.max(0, Math.fround(brightness * x))));
    let greySum = 0;
    for (let i = 0; i < plane; i++)
      greySum += 0.2989 * bright[i] + 0.587 * bright[plane + i] + 0.114 * bright[2 * plane + i];
    const mean = greySum / plane;
    for (let i = 0; i < base.length; i++) {
      const expected = Math.min(1, Math.max(0, contrast * bright[i] + (1 - contrast) * mean));
      assert.ok(Math.abs(out[i] - expected) < 1e-6, `${i}: ${out[i]} vs ${expected}`);
    }
  });

  test('16-bit grey keeps its precision through augmentation until normalisation', () => {
    const level = 12465 / 65535; // 48.502 in 8-bit units: halfway between two 8-bit levels
    const grey: DecodedImage = {
      width: 40,
      height: 30,
      channels: 1,
      data: new Float32Array(1200).fill(level),
    };
    const out = augmentAndPreprocess(
      grey,
      unnormalised,
      { ...DEFAULT_AUGMENT, rotationDegrees: false, brightness: false, contrast: false },
      new Random(4),
    );
    for (const value of out) assert.ok(Math.abs(value - level) < 1e-6);
    // The nearest 8-bit level is 1.9e-3 away, far outside the tolerance: nothing was quantised.
    assert.ok(Math.abs(Math.round(level * 255) / 255 - level) > 1.5e-3);
    const one = augmentAndPreprocess(grey, unnormalised, DEFAULT_AUGMENT, new Random(4), 1);
    assert.equal(one.length, 24 * 24);
  });
});

describe('augmentation steps', () => {
  test('default configuration and validation', () => {
    assert.deepEqual(resolveAugmentConfig(), {
      randomResizedCrop: { scale: [0.8, 1], ratio: [3 / 4, 4 / 3] },
      horizontalFlip: 0.5,
      rotationDegrees: 10,
      brightness: 0.1,
      contrast: 0.1,
    });
    assert.equal(resolveAugmentConfig({ rotationDegrees: false }).rotationDegrees, false);
    assert.throws(() => resolveAugmentConfig({ horizontalFlip: 1.5 }), RangeError);
    assert.throws(
      () => resolveAugmentConfig({ randomResizedCrop: { scale: [0.5, 1.2], ratio: [1, 1] } }),
      RangeError,
    );
    assert.throws(() => resolveAugmentConfig({ brightness: -0.1 }), RangeError);
  });

  test('random resized crops stay inside the image with area and aspect near the requested ranges', () => {
    const random = new Random(21);
    const scale = [0.3, 0.9] as const;
    const ratio = [0.5, 2] as const;
    for (let i = 0; i < 500; i++) {
      const width = 20 + random.int(200);
      const height = 20 + random.int(200);
      const rect = randomResizedCropRect(width, height, { scale, ratio }, random);
      assert.ok(rect.x >= 0 && rect.y >= 0 && rect.width >= 1 && rect.height >= 1);
      assert.ok(rect.x + rect.width <= width && rect.y + rect.height <= height);
      assert.ok(Number.isInteger(rect.x) && Number.isInteger(rect.y));
      assert.ok(Number.isInteger(rect.width) && Number.isInteger(rect.height));
    }
    // A square image always fits on the first try: check the sampled area and aspect (± rounding).
    for (let i = 0; i < 200; i++) {
      const rect = randomResizedCropRect(200, 200, { scale, ratio }, random);
      const area = (rect.width * rect.height) / 40000;
      assert.ok(area > scale[0] - 0.03 && area < scale[1] + 0.03, `area ${area}`);
      const aspect = rect.width / rect.height;
      assert.ok(aspect > ratio[0] * 0.97 && aspect < ratio[1] * 1.03, `aspect ${aspect}`);
    }
  });

  test('random resized crop falls back to the central crop of the allowed aspect', () => {
    // 100×2 cannot hold 90% of its area at aspect ≤ 4/3: torchvision's fallback is h = 2, w = round(2 · 4/3).
    const rect = randomResizedCropRect(100, 2, { scale: [0.9, 1], ratio: [3 / 4, 4 / 3] }, new Random(0));
    assert.deepEqual(rect, { x: 48, y: 0, width: 3, height: 2 });
    const tall = randomResizedCropRect(2, 100, { scale: [0.9, 1], ratio: [3 / 4, 4 / 3] }, new Random(0));
    assert.deepEqual(tall, { x: 0, y: 48, width: 2, height: 3 });
  });

  test('flip is exact and an involution', () => {
    const small = syntheticRgb(5, 3);
    const flipped = flipHorizontal(small);
    assert.deepEqual(Array.from(flipped.data.subarray(0, 3)), Array.from(small.data.subarray(12, 15)));
    assert.deepEqual(flipHorizontal(flipped).data, small.data);
  });

  test('rotation by 0 is the identity; 90° and 180° move pixels where expected', () => {
    const square = syntheticRgb(9, 9);
    assert.deepEqual(rotate(square, 0).data, square.data);
    const quarter = rotate(square, 90);
    const half = rotate(square, 180);
    for (let y = 0; y < 9; y++) {
      for (let x = 0; x < 9; x++) {
        for (let c = 0; c < 3; c++) {
          // Counter-clockwise: the output's top-left pixel comes from the source's top-right.
          const fromQuarter = square.data[(x * 9 + (8 - y)) * 3 + c];
          assert.ok(Math.abs(quarter.data[(y * 9 + x) * 3 + c] - fromQuarter) < 1e-6);
          const fromHalf = square.data[((8 - y) * 9 + (8 - x)) * 3 + c];
          assert.ok(Math.abs(half.data[(y * 9 + x) * 3 + c] - fromHalf) < 1e-6);
        }
      }
    }
  });

  test('rotation interpolates bilinearly and fills outside with black', () => {
    // 2×1 grey [0.2, 0.6] rotated 180° about its centre swaps the pixels.
    const pair: DecodedImage = { width: 2, height: 1, channels: 1, data: Float32Array.of(0.2, 0.6) };
    const swapped = rotate(pair, 180);
    assert.ok(Math.abs(swapped.data[0] - 0.6) < 1e-7 && Math.abs(swapped.data[1] - 0.2) < 1e-7);
    // 3×3 constant at 45°: the centre stays; corner (0, 0) samples source (1, 1 − √2), between row −1
    // (outside, black) and row 0, so its value is the in-image row's weight 1 − (√2 − 1) = 2 − √2.
    const flat: DecodedImage = { width: 3, height: 3, channels: 1, data: new Float32Array(9).fill(1) };
    const turned = rotate(flat, 45);
    assert.ok(Math.abs(turned.data[4] - 1) < 1e-7);
    assert.ok(Math.abs(turned.data[0] - (2 - Math.SQRT2)) < 1e-6, `${turned.data[0]}`);
  });

  test('brightness and contrast arithmetic, hand-checked', () => {
    const grey: DecodedImage = { width: 3, height: 1, channels: 1, data: Float32Array.of(0.2, 0.6, 0.9) };
    const brighter = adjustBrightness(grey, 1.5).data;
    assert.ok(Math.abs(brighter[0] - 0.3) < 1e-7 && Math.abs(brighter[1] - 0.9) < 1e-7);
    assert.equal(brighter[2], 1, '1.35 clamps to 1');
    assert.deepEqual(Array.from(adjustBrightness(grey, 0).data), [0, 0, 0]);
    // mean 0.5666…; factor 2: 2x − 0.5666… → [−0.1667 → 0, 0.6333, 1.2333 → 1]
    const contrasted = adjustContrast(grey, 2).data;
    assert.equal(contrasted[0], 0);
    assert.ok(Math.abs(contrasted[1] - (1.2 - 1.7 / 3)) < 1e-6);
    assert.equal(contrasted[2], 1);
    // factor 0 collapses to the mean; colour uses the 0.2989/0.587/0.114 grey.
    const rgb: DecodedImage = { width: 2, height: 1, channels: 3, data: Float32Array.of(1, 0, 0, 0, 1, 0) };
    const mean = (0.2989 + 0.587) / 2;
    for (const value of adjustContrast(rgb, 0).data) assert.ok(Math.abs(value - mean) < 1e-7);
  });
});
