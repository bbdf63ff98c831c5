import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { MeloError } from '../src/errors.ts';
import { decodeImage, readImageFile } from '../src/imaging/decode.ts';
import type { DecodedImage, PreprocessConfig } from '../src/imaging/image.ts';
import {
  centerCropRect,
  preprocess,
  preprocessConfigFromHF,
  preprocessConfigFromTimm,
  resizedSize,
  roundHalfEven,
} from '../src/imaging/preprocess.ts';
import { type FloatImage, resample } from '../src/imaging/resize.ts';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const fixtureDir = join(root, 'test', 'fixtures', 'imaging');
const sharedData = process.env.MELO_SHARED_DATA ?? resolve(root, '..', 'shared', 'data');
const bccdDir = join(sharedData, 'bccd', 'BCCD', 'JPEGImages');

interface ReferenceImage {
  width: number;
  height: number;
  channels: 1 | 3;
  bits: 8 | 16;
  values: number[];
}
interface Reference {
  images: Record<string, ReferenceImage>;
  resize: {
    image: string;
    interpolation: 'nearest' | 'bilinear' | 'bicubic';
    width: number;
    height: number;
    values: number[];
  }[];
  resize8bit: {
    image: string;
    interpolation: 'bilinear' | 'bicubic';
    width: number;
    height: number;
    values: number[];
  }[];
  preprocess: { image: string; config: PreprocessConfig; channels: 1 | 3; values: number[] }[];
  decode: Record<
    string,
    { width: number; height: number; sums: number[]; samples: [number, number, number[]][] }
  >;
}

const reference = JSON.parse(readFileSync(join(fixtureDir, 'reference.json'), 'utf8')) as Reference;

function referenceImage(name: string): DecodedImage {
  const image = reference.images[name];
  const scale = image.bits === 16 ? 65535 : 255;
  return {
    width: image.width,
    height: image.height,
    channels: image.channels,
    data: Float32Array.from(image.values, (v) => v / scale),
  };
}

function maxAbsDiff(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  assert.equal(actual.length, expected.length, 'length');
  let max = 0;
  for (let i = 0; i < actual.length; i++) max = Math.max(max, Math.abs(actual[i] - expected[i]));
  return max;
}

function assertOneLineError(error: unknown, code: string, file: string): true {
  assert.ok(error instanceof MeloError, `expected MeloError, got ${error}`);
  assert.equal(error.code, code);
  assert.equal(error.file, file);
  assert.ok(error.message.startsWith(`${file}: `), error.message);
  assert.ok(!error.message.includes('\n'), `one line: ${JSON.stringify(error.message)}`);
  return true;
}

describe('resample (Pillow filter semantics on float data)', () => {
  // The fixture holds Pillow 'F'-mode results rounded to 7 decimals (±5e-8); both sides keep float32
  // intermediates, so a few float32 ulps (6e-8 near 1) on top of that is all the difference allowed.
  for (const c of reference.resize) {
    test(`${c.image} ${c.interpolation} to ${c.width}x${c.height} matches Pillow within 2e-7`, () => {
      const out = resample(referenceImage(c.image), c.width, c.height, c.interpolation);
      assert.equal(out.width, c.width);
      assert.equal(out.height, c.height);
      assert.ok(maxAbsDiff(out.data, c.values) < 2e-7);
    });
  }

  test("8-bit inputs match Pillow's own uint8 resize within its rounding", () => {
    // Pillow's 8-bit path has 22-bit fixed-point taps, rounds the horizontal pass to uint8 (≤ 0.5 step,
    // amplified by the bicubic taps' |w| sum, ≤ 1.25) and rounds the result (≤ 0.5 step).
    for (const c of reference.resize8bit) {
      const out = resample(referenceImage(c.image), c.width, c.height, c.interpolation);
      let max = 0;
      let sum = 0;
      for (let i = 0; i < out.data.length; i++) {
        const diff = Math.abs(out.data[i] * 255 - c.values[i]);
        max = Math.max(max, diff);
        sum += diff;
      }
      assert.ok(max <= 1.25, `${c.interpolation} ${c.width}x${c.height}: max ${max} steps`);
      assert.ok(sum / out.data.length < 0.35, `mean ${sum / out.data.length} steps`);
    }
  });

  test('a source rect resamples the crop, and an output window crops and zero-pads the result', () => {
    const image = referenceImage('rgb8');
    const rect = { x: 7, y: 5, width: 30, height: 22 };
    const cropData = new Float32Array(rect.width * rect.height * 3);
    for (let y = 0; y < rect.height; y++) {
      const start = ((rect.y + y) * image.width + rect.x) * 3;
      cropData.set(image.data.subarray(start, start + rect.width * 3), y * rect.width * 3);
    }
    const crop: FloatImage = { width: rect.width, height: rect.height, channels: 3, data: cropData };
    const viaRect = resample(image, 17, 13, 'bicubic', { sourceRect: rect });
    assert.deepEqual(viaRect.data, resample(crop, 17, 13, 'bicubic').data);

    const full = resample(image, 23, 19, 'bilinear');
    const window = resample(image, 23, 19, 'bilinear', {
      outputWindow: { x: -2, y: 3, width: 10, height: 20 },
    });
    for (let y = 0; y < 20; y++) {
      for (let x = 0; x < 10; x++) {
        for (let c = 0; c < 3; c++) {
          const fx = x - 2;
          const fy = y + 3;
          const expected = fx >= 0 && fy < 19 ? full.data[(fy * 23 + fx) * 3 + c] : 0;
          assert.equal(window.data[(y * 10 + x) * 3 + c], expected);
        }
      }
    }
  });

  test('same-size resampling is the identity and bad targets are rejected', () => {
    const image = referenceImage('grey16');
    assert.deepEqual(resample(image, image.width, image.height, 'bicubic').data, image.data);
    assert.throws(() => resample(image, 0, 5, 'bilinear'), RangeError);
    assert.throws(
      () => resample(image, 5, 5, 'bilinear', { sourceRect: { x: 30, y: 0, width: 10, height: 5 } }),
      RangeError,
    );
  });
});

describe('preprocess', () => {
  test('center crop offsets follow torchvision (Python round, zero padding split low side first)', () => {
    assert.deepEqual([0.5, 1.5, 2.5, 3.5, -0.5, 2.4, 2.6].map(roundHalfEven), [0, 2, 2, 4, 0, 2, 3]);
    assert.deepEqual(centerCropRect(256, 256, 224, 224), { x: 16, y: 16, width: 224, height: 224 });
    assert.deepEqual(centerCropRect(32, 20, 15, 17), { x: 8, y: 2, width: 17, height: 15 });
    assert.deepEqual(centerCropRect(12, 10, 13, 14), { x: -1, y: -1, width: 14, height: 13 });
    assert.deepEqual(centerCropRect(12, 10, 14, 15), { x: -1, y: -2, width: 15, height: 14 });
    // Hugging Face's image_transforms.center_crop floors instead: (32 - 17) / 2 = 7.5 → 7, (20 - 15) / 2 → 2.
    assert.deepEqual(centerCropRect(32, 20, 15, 17, 'floor'), { x: 7, y: 2, width: 17, height: 15 });
    assert.deepEqual(centerCropRect(19, 16, 16, 16, 'floor'), { x: 1, y: 0, width: 16, height: 16 });
    assert.deepEqual(centerCropRect(19, 16, 16, 16), { x: 2, y: 0, width: 16, height: 16 });
  });

  test("'shortest' resize is torchvision Resize(int): long side int(size * long / short)", () => {
    const config: PreprocessConfig = {
      inputSize: [224, 224],
      resizeMode: 'shortest',
      resizeSize: [256, 256],
      interpolation: 'bicubic',
      mean: [0, 0, 0],
      std: [1, 1, 1],
    };
    assert.deepEqual(resizedSize(640, 480, config), [341, 256]);
    assert.deepEqual(resizedSize(480, 640, config), [256, 341]);
    assert.deepEqual(resizedSize(37, 23, { ...config, resizeSize: [20, 20] }), [32, 20]);
    assert.deepEqual(
      resizedSize(640, 480, { ...config, resizeMode: 'exact', resizeSize: [200, 300] }),
      [300, 200],
    );
  });

  // Normalisation divides by std ≥ 0.224, amplifying the 2e-7 resize tolerance ~4.5×.
  for (const c of reference.preprocess) {
    const { config } = c;
    test(`${c.image} ${config.resizeMode} ${config.resizeSize} ${config.interpolation} crop ${config.inputSize} → ${c.channels} channels matches the Pillow/torchvision reference within 1e-6`, () => {
      const out = preprocess(referenceImage(c.image), config, c.channels);
      assert.equal(out.length, c.channels * config.inputSize[0] * config.inputSize[1]);
      assert.ok(maxAbsDiff(out, c.values) < 1e-6);
    });
  }

  test('grey is repeated into three planes, each with its own mean and std', () => {
    const grey: DecodedImage = { width: 2, height: 1, channels: 1, data: Float32Array.of(0.25, 1) };
    const config: PreprocessConfig = {
      inputSize: [1, 2],
      resizeMode: 'exact',
      resizeSize: [1, 2],
      interpolation: 'bilinear',
      mean: [0.5, 0.25, 0],
      std: [0.5, 0.25, 2],
    };
    assert.deepEqual(Array.from(preprocess(grey, config)), [-0.5, 1, 0, 3, 0.125, 0.5]);
    assert.deepEqual(Array.from(preprocess(grey, config, 1)), [-0.5, 1]);
  });
});

describe('preprocess config builders', () => {
  test('HF ViT preprocessor_config.json (google/vit-base-patch16-224)', () => {
    const config = preprocessConfigFromHF({
      do_normalize: true,
      do_resize: true,
      image_processor_type: 'ViTImageProcessor',
      image_mean: [0.5, 0.5, 0.5],
      image_std: [0.5, 0.5, 0.5],
      resample: 2,
      size: 224,
    });
    assert.deepEqual(config, {
      inputSize: [224, 224],
      resizeMode: 'exact',
      resizeSize: [224, 224],
      interpolation: 'bilinear',
      cropOffset: 'floor',
      mean: [0.5, 0.5, 0.5],
      std: [0.5, 0.5, 0.5],
    });
    assert.deepEqual(preprocessConfigFromHF({}), config, 'ViTImageProcessor defaults');
  });

  test('HF shortest_edge + crop_size, integer size for CLIP, ConvNeXt crop_pct', () => {
    const clipMean = [0.48145466, 0.4578275, 0.40821073];
    const clipStd = [0.26862954, 0.26130258, 0.27577711];
    const expected = {
      inputSize: [224, 224],
      resizeMode: 'shortest',
      resizeSize: [224, 224],
      interpolation: 'bicubic',
      cropOffset: 'floor',
      mean: clipMean,
      std: clipStd,
    };
    assert.deepEqual(
      preprocessConfigFromHF({
        crop_size: { height: 224, width: 224 },
        do_center_crop: true,
        image_mean: clipMean,
        image_std: clipStd,
        resample: 3,
        size: { shortest_edge: 224 },
      }),
      expected,
    );
    assert.deepEqual(
      preprocessConfigFromHF({
        feature_extractor_type: 'CLIPFeatureExtractor',
        crop_size: 224,
        do_center_crop: true,
        image_mean: clipMean,
        image_std: clipStd,
        resample: 3,
        size: 224,
      }),
      expected,
    );
    const convnext = preprocessConfigFromHF({
      image_processor_type: 'ConvNextImageProcessor',
      crop_pct: 0.875,
      resample: 3,
      size: { shortest_edge: 224 },
      image_mean: [0.485, 0.456, 0.406],
      image_std: [0.229, 0.224, 0.225],
    });
    assert.deepEqual(
      [convnext.resizeMode, convnext.resizeSize, convnext.inputSize],
      ['shortest', [256, 256], [224, 224]],
    );
  });

  test('HF rescale_factor and do_normalize are folded into mean and std for [0, 1] inputs', () => {
    // do_rescale false: the model sees 255·x, so (255x - 127.5) / 127.5 = (x - 0.5) / 0.5.
    const noRescale = preprocessConfigFromHF({
      do_rescale: false,
      image_mean: [127.5, 127.5, 127.5],
      image_std: 127.5,
    });
    assert.deepEqual(noRescale.mean, [0.5, 0.5, 0.5]);
    assert.deepEqual(noRescale.std, [0.5, 0.5, 0.5]);
    // No normalisation, rescale 1/127.5: the model sees 2x, i.e. (x - 0) / 0.5.
    const twice = preprocessConfigFromHF({ do_normalize: false, rescale_factor: 1 / 127.5 });
    assert.deepEqual(twice.mean, [0, 0, 0]);
    for (const s of twice.std) assert.ok(Math.abs(s - 0.5) < 1e-15);
  });

  test('HF configs that cannot be honoured fail with one line naming the file', () => {
    const file = 'ckpt/preprocessor_config.json';
    assert.throws(
      () => preprocessConfigFromHF({ resample: 1 }, file),
      (e) => assertOneLineError(e, 'UNSUPPORTED', file),
    );
    assert.throws(
      () => preprocessConfigFromHF({ size: { shortest_edge: 224 } }, file),
      (e) => assertOneLineError(e, 'UNSUPPORTED', file),
    );
    assert.throws(
      () => preprocessConfigFromHF({ size: 'big' }, file),
      (e) => assertOneLineError(e, 'BAD_CHECKPOINT', file),
    );
    assert.throws(
      () => preprocessConfigFromHF({ image_mean: [0.5, 0.5] }, file),
      (e) => assertOneLineError(e, 'BAD_CHECKPOINT', file),
    );
    assert.throws(
      () => preprocessConfigFromHF([1, 2], file),
      (e) => assertOneLineError(e, 'BAD_CHECKPOINT', file),
    );
  });

  test('timm pretrained_cfg: resize floor(size / crop_pct) on the short side, then center crop', () => {
    const vit = preprocessConfigFromTimm({
      architecture: 'vit_base_patch16_224',
      pretrained_cfg: {
        input_size: [3, 224, 224],
        interpolation: 'bicubic',
        crop_pct: 0.9,
        crop_mode: 'center',
        mean: [0.5, 0.5, 0.5],
        std: [0.5, 0.5, 0.5],
      },
    });
    assert.deepEqual(vit, {
      inputSize: [224, 224],
      resizeMode: 'shortest',
      resizeSize: [248, 248],
      interpolation: 'bicubic',
      mean: [0.5, 0.5, 0.5],
      std: [0.5, 0.5, 0.5],
    });
    const defaults = preprocessConfigFromTimm({ architecture: 'resnet50' });
    assert.deepEqual(defaults, {
      inputSize: [224, 224],
      resizeMode: 'shortest',
      resizeSize: [256, 256],
      interpolation: 'bicubic',
      mean: [0.485, 0.456, 0.406],
      std: [0.229, 0.224, 0.225],
    });
    assert.deepEqual(
      preprocessConfigFromTimm({
        architecture: 'vit_small_patch16_384',
        input_size: [3, 384, 384],
        crop_pct: 1,
      }),
      {
        inputSize: [384, 384],
        resizeMode: 'shortest',
        resizeSize: [384, 384],
        interpolation: 'bicubic',
        mean: [0.5, 0.5, 0.5],
        std: [0.5, 0.5, 0.5],
      },
    );
    const squash = preprocessConfigFromTimm({
      input_size: [1, 192, 256],
      crop_mode: 'squash',
      crop_pct: 0.95,
      mean: [0.3],
      std: [0.2],
    });
    assert.deepEqual(squash, {
      inputSize: [192, 256],
      resizeMode: 'exact',
      resizeSize: [202, 269],
      interpolation: 'bicubic',
      mean: [0.3, 0.3, 0.3],
      std: [0.2, 0.2, 0.2],
    });
    const file = 'model/config.json';
    assert.throws(
      () => preprocessConfigFromTimm({ crop_mode: 'border' }, file),
      (e) => assertOneLineError(e, 'UNSUPPORTED', file),
    );
    assert.throws(
      () => preprocessConfigFromTimm({ input_size: [3, 224, 320] }, file),
      (e) => assertOneLineError(e, 'UNSUPPORTED', file),
    );
    assert.throws(
      () => preprocessConfigFromTimm({ input_size: [224, 224] }, file),
      (e) => assertOneLineError(e, 'BAD_CHECKPOINT', file),
    );
  });
});

describe('decodeImage', () => {
  let dir = '';
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'melo-imaging-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  function raw16(values: number[]): Uint16Array {
    return Uint16Array.from(values);
  }

  test('16-bit grey PNG and TIFF written by Pillow decode to v / 65535 exactly', async () => {
    const expected = Float32Array.from(reference.images.grey16.values, (v) => v / 65535);
    for (const name of ['grey16.png', 'grey16.tif']) {
      const image = await readImageFile(join(fixtureDir, name));
      assert.equal(image.channels, 1, name);
      assert.equal(image.width, 37);
      assert.equal(image.height, 23);
      assert.deepEqual(image.data, expected, name);
    }
  });

  test('16-bit grey PNG from sharp keeps 1234 as 1234 / 65535', async () => {
    const values = [0, 1234, 65535, 1, 40000, 65534];
    const png = await sharp(raw16(values), { raw: { width: 3, height: 2, channels: 1 } })
      .toColourspace('grey16')
      .png()
      .toBuffer();
    const image = await decodeImage(png, 'grey16.png');
    assert.equal(image.channels, 1);
    assert.deepEqual(
      image.data,
      Float32Array.from(values, (v) => v / 65535),
    );
    assert.equal(image.data[1], Math.fround(1234 / 65535));
  });

  test('16-bit RGBA PNG: alpha dropped, colour kept at 16 bits', async () => {
    const rgba = Array.from({ length: 2 * 2 * 4 }, (_, i) => (i * 4099 + 7) % 65536);
    const png = await sharp(raw16(rgba), { raw: { width: 2, height: 2, channels: 4 } })
      .toColourspace('rgb16')
      .png()
      .toBuffer();
    const image = await decodeImage(png, 'rgba16.png');
    assert.equal(image.channels, 3);
    const rgb = rgba.filter((_, i) => i % 4 !== 3);
    assert.deepEqual(
      image.data,
      Float32Array.from(rgb, (v) => v / 65535),
    );
  });

  test('8-bit grey+alpha PNG stays one channel; RGBA PNG, TIFF and lossless WebP give exact RGB', async () => {
    const greyAlpha = Uint8Array.from({ length: 4 * 3 * 2 }, (_, i) => (i * 37) % 256);
    const gaPng = await sharp(greyAlpha, { raw: { width: 4, height: 3, channels: 2 } })
      .toColourspace('b-w')
      .png()
      .toBuffer();
    const ga = await decodeImage(gaPng, 'ga.png');
    assert.equal(ga.channels, 1);
    assert.deepEqual(
      ga.data,
      Float32Array.from(
        greyAlpha.filter((_, i) => i % 2 === 0),
        (v) => v / 255,
      ),
    );

    const rgba = Uint8Array.from({ length: 5 * 3 * 4 }, (_, i) => (i * 53 + 11) % 256);
    const rgb = Float32Array.from(
      rgba.filter((_, i) => i % 4 !== 3),
      (v) => v / 255,
    );
    const input = () => sharp(rgba, { raw: { width: 5, height: 3, channels: 4 } });
    const encoded = {
      'rgba.png': await input().png().toBuffer(),
      'rgba.tif': await input().tiff({ compression: 'lzw' }).toBuffer(),
      'rgba.webp': await input().webp({ lossless: true, exact: true }).toBuffer(),
    };
    for (const [name, bytes] of Object.entries(encoded)) {
      const path = join(dir, name);
      await writeFile(path, bytes);
      const image = await readImageFile(path);
      assert.deepEqual([image.width, image.height, image.channels], [5, 3, 3], name);
      assert.deepEqual(image.data, rgb, name);
    }
  });

  test('EXIF orientation is applied (6: rotate 90° clockwise)', async () => {
    const grey = Uint8Array.of(10, 20, 30, 40, 50, 60, 70, 80);
    const png = await sharp(grey, { raw: { width: 4, height: 2, channels: 1 } })
      .png()
      .withMetadata({ orientation: 6 })
      .toBuffer();
    const image = await decodeImage(png, 'rotated.png');
    assert.deepEqual([image.width, image.height], [2, 4]);
    const values = Array.from(image.data, (v, i) =>
      image.channels === 1 || i % 3 === 0 ? Math.round(v * 255) : -1,
    ).filter((v) => v >= 0);
    assert.deepEqual(values, [50, 10, 60, 20, 70, 30, 80, 40]);
  });

  test('BCCD JPEGs decode to the same pixels as Pillow', {
    skip: !existsSync(bccdDir) && `no ${bccdDir}`,
  }, async () => {
    for (const [file, expected] of Object.entries(reference.decode)) {
      const image = await readImageFile(join(bccdDir, file));
      assert.deepEqual([image.width, image.height, image.channels], [expected.width, expected.height, 3]);
      const sums = [0, 0, 0];
      for (let i = 0; i < image.data.length; i++) sums[i % 3] += Math.round(image.data[i] * 255);
      assert.deepEqual(sums, expected.sums, file);
      for (const [x, y, pixel] of expected.samples) {
        const at = (y * image.width + x) * 3;
        assert.deepEqual(
          [0, 1, 2].map((c) => image.data[at + c]),
          pixel.map((v) => Math.fround(v / 255)),
          `${file} (${x}, ${y})`,
        );
      }
    }
  });

  test('text, truncated and missing files fail with one line naming the file', async () => {
    const textPath = join(dir, 'notes.png');
    await writeFile(textPath, 'this is not an image\n');
    await assert.rejects(readImageFile(textPath), (e) => assertOneLineError(e, 'BAD_IMAGE', textPath));

    const png = await readFile16Png();
    const truncatedPath = join(dir, 'truncated.png');
    await writeFile(truncatedPath, png.subarray(0, Math.floor(png.length * 0.6)));
    await assert.rejects(readImageFile(truncatedPath), (e) =>
      assertOneLineError(e, 'BAD_IMAGE', truncatedPath),
    );
    await assert.rejects(decodeImage(png.subarray(0, 30), 'header-only.png'), (e) =>
      assertOneLineError(e, 'BAD_IMAGE', 'header-only.png'),
    );
    await assert.rejects(decodeImage(new Uint8Array(0), 'empty.png'), (e) =>
      assertOneLineError(e, 'BAD_IMAGE', 'empty.png'),
    );

    const missing = join(dir, 'missing.png');
    await assert.rejects(readImageFile(missing), (e) => assertOneLineError(e, 'NOT_FOUND', missing));
    await assert.rejects(readImageFile(dir), (e) => assertOneLineError(e, 'BAD_INPUT', dir));

    const gif = await sharp({ create: { width: 2, height: 2, channels: 3, background: '#808080' } })
      .gif()
      .toBuffer();
    await assert.rejects(
      decodeImage(gif, 'a.gif'),
      (e) => assertOneLineError(e, 'BAD_IMAGE', 'a.gif') && /gif/.test(String(e)),
    );
  });

  async function readFile16Png(): Promise<Uint8Array> {
    // A larger noisy image, so truncation cuts into the compressed pixel data.
    const values = Array.from({ length: 64 * 64 }, (_, i) => (i * 7919) % 65536);
    return sharp(raw16(values), { raw: { width: 64, height: 64, channels: 1 } })
      .toColourspace('grey16')
      .png()
      .toBuffer();
  }
});
