import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import Fastify, { type FastifyContextConfig, type FastifyInstance } from 'fastify';
import type { BrowserContext } from 'playwright-core';
import sharp from 'sharp';
import { type Backbone, loadBackbone } from '../src/checkpoints/load.ts';
import { readSafetensors } from '../src/checkpoints/safetensors.ts';
import type { PreprocessConfig } from '../src/imaging/image.ts';
import { decodeAnyImage } from '../src/imaging/read.ts';
import { loadAdapter } from '../src/io/peft.ts';
import { withPrecision } from '../src/model/backbone.ts';
import { Session } from '../src/runtime/session.ts';
import { AdapterStack, stackedWeightsOf } from '../src/serve/engine/adapter-stack.ts';
import { MULTI_TASK_INPUTS } from '../src/serve/engine/multi-task-graph.ts';
import { MultiTaskModel } from '../src/serve/engine/multi-task-model.ts';
import { startServer } from '../src/serve/server.ts';
import {
  attentionOutputName,
  attentionValues,
  buildExplainGraph,
  runExplainGraph,
} from '../src/serve/web/attention-model.ts';
import explainJob from '../src/serve/web/explain-task.ts';
import { AttentionExplainer, EXPLAIN_MAX_QUEUE } from '../src/serve/web/explainer.ts';
import { modelRegion } from '../src/serve/web/model-region.ts';
import { attentionRolloutRow, clsHeatmap } from '../src/serve/web/rollout.ts';
import staticPage, { WEB_DIST } from '../src/serve/web/static.ts';
import type { HostTensor } from '../src/tensor.ts';
import { assertClose } from './helpers/graph.ts';
import { FIXTURES, makeAdapter, writeAdapter } from './serve-fixtures.ts';

const REPO = resolve(FIXTURES, '../../..');
const ROLLOUT_REFERENCE = join(REPO, 'test/fixtures/rollout/reference.safetensors');
const DATA = resolve(REPO, '../shared/data');
const BCCD_JPEG = join(
  process.env.MELO_BCCD_DIR ?? join(DATA, 'bccd'),
  'BCCD/JPEGImages/BloodImage_00000.jpg',
);
const CT_DICOM = join(process.env.MELO_DICOM_DIR ?? join(DATA, 'dicom/pydicom-test-files'), 'CT_small.dcm');
const CHROMIUM = process.env.MELO_CHROMIUM ?? '/usr/bin/chromium';
const noChromium = existsSync(CHROMIUM)
  ? false
  : `no chromium at ${CHROMIUM} (apt-get install -y chromium, or set MELO_CHROMIUM)`;
/** Set to a directory to keep the browser test's screenshots. */
const SCREENSHOTS = process.env.MELO_SCREENSHOTS;

let backbone: Backbone;
let work = '';
let adaptersDir = '';
let app: FastifyInstance;
/** The same adapters behind a bearer token. */
let guarded: FastifyInstance;
const TOKEN = 'open-sesame';
/** A real picture when the shared data is there (it is in CI), else a synthesized JPEG. */
let photo: { file: string; bytes: Buffer };

interface ExplainBody {
  task: string;
  labels: string[];
  probabilities: number[];
  prediction: string;
  grid: [number, number];
  heatmap: number[];
  image: { width: number; height: number };
  region: { x: number; y: number; width: number; height: number };
}
interface PredictBody {
  results: { task: string; labels: string[]; probabilities: number[]; prediction: string }[];
}

before(async () => {
  backbone = await loadBackbone(join(FIXTURES, 'hf'));
  work = await mkdtemp(join(tmpdir(), 'melo-serve-web-'));
  adaptersDir = join(work, 'adapters');
  await mkdir(adaptersDir);
  // Adapters as `melo train` writes them: A as initialised, B random and nonzero, saved with saveAdapter.
  const adapters = [
    makeAdapter(backbone, {
      task: 'blood-cell',
      labels: ['RBC', 'WBC', 'Platelets'],
      rank: 2,
      alpha: 4,
      seed: 11,
    }),
    makeAdapter(backbone, { task: 'abnormal', labels: ['normal', 'abnormal'], linear: true, seed: 12 }),
    makeAdapter(backbone, {
      task: 'findings',
      labels: ['clumping', 'blasts', 'parasites'],
      taskType: 'multilabel',
      rank: 1,
      targets: ['value'],
      seed: 13,
    }),
  ];
  // 'findings' applies to MR only: a dropped CT selects the other two tasks (routing, src/pacs/routing.ts).
  adapters[2] = { ...adapters[2]!, metadata: { ...adapters[2]!.metadata, routing: { modalities: ['MR'] } } };
  for (const adapter of adapters) await writeAdapter(adaptersDir, adapter.metadata.task, adapter);

  if (existsSync(BCCD_JPEG)) {
    photo = { file: BCCD_JPEG, bytes: await readFile(BCCD_JPEG) };
  } else {
    const raw = Buffer.alloc(160 * 120 * 3);
    for (let i = 0; i < raw.length; i++) raw[i] = (i * 29 + (i >> 9) * 7) % 256;
    const bytes = await sharp(raw, { raw: { width: 160, height: 120, channels: 3 } })
      .jpeg()
      .toBuffer();
    photo = { file: join(work, 'synthetic.jpg'), bytes };
    await writeFile(photo.file, bytes);
  }
  // Real servers on a free loopback port: the browser loads from them, the other tests inject into them.
  const serve = {
    backbone,
    adapters: adaptersDir,
    threads: 1,
    watch: false,
    rescanMs: 0,
    host: '127.0.0.1',
    port: 0,
  };
  // One after the other: each starts an inference thread, and fastify gives a plugin 10 s to start.
  app = await startServer(serve);
  guarded = await startServer({ ...serve, token: TOKEN });
});

after(async () => {
  await (await browserContext)?.close();
  await app?.close();
  await guarded?.close();
  await rm(work, { recursive: true, force: true });
});

const baseUrl = (server: FastifyInstance) =>
  `http://127.0.0.1:${(server.server.address() as AddressInfo).port}`;

/** One Chromium for the browser tests, with a fresh profile, started by the first one that needs it. */
let browserContext: Promise<BrowserContext> | undefined;

function browser(): Promise<BrowserContext> {
  browserContext ??= (async () => {
    const { chromium } = await import('playwright-core');
    const profile = await mkdtemp(join(work, 'chromium-profile-'));
    return chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      locale: 'en-US',
      viewport: { width: 1280, height: 860 },
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  })();
  return browserContext;
}

// ----- attention rollout: the math --------------------------------------------------------------------

/** Block attentions of the hand-worked example below, one head each. */
const A1 = [0.5, 0.3, 0.2, 0.1, 0.6, 0.3, 0.2, 0.2, 0.6];
const A2 = [0.2, 0.4, 0.4, 0.3, 0.3, 0.4, 0.5, 0.25, 0.25];
const oneHead = (values: number[]) => ({ heads: 1, tokens: 3, data: Float32Array.from(values) });

test('rollout: 2 blocks, 1 head, 3 tokens, worked by hand', () => {
  // Ã1 = (A1 + I)/2 = [.75 .15 .1; .05 .8 .15; .1 .1 .8]; Ã2 = (A2 + I)/2 = [.6 .2 .2; .15 .65 .2; .25 .125 .625].
  // R = Ã2·Ã1: row 0 = .6·[.75 .15 .1] + .2·[.05 .8 .15] + .2·[.1 .1 .8] = [.48 .27 .25];
  // row 1 = [.165 .5625 .2725]; row 2 = [.25625 .2 .54375]. (The other order, Ã1·Ã2, gives row 0 = [.4975 …].)
  const blocks = [oneHead(A1), oneHead(A2)];
  assertClose(attentionRolloutRow(blocks, 0), [0.48, 0.27, 0.25], 1e-7, 'row 0');
  assertClose(attentionRolloutRow(blocks, 1), [0.165, 0.5625, 0.2725], 1e-7, 'row 1');
  assertClose(attentionRolloutRow(blocks, 2), [0.25625, 0.2, 0.54375], 1e-7, 'row 2');
  // The CLS row over a 1×2 patch grid: [.27, .25] scaled by min and max.
  assert.deepEqual(clsHeatmap(attentionRolloutRow(blocks), [1, 2]), [1, 0]);
  // One block: just Ã1's row.
  assertClose(attentionRolloutRow([oneHead(A1)]), [0.75, 0.15, 0.1], 1e-7, 'one block');
});

test('rollout: a last block run for the CLS token only gives the same CLS row; only the last block may', () => {
  const blocks = [oneHead(A1), oneHead(A2)];
  const clsOnly = { heads: 1, tokens: 3, queries: 1, data: Float32Array.from(A2.slice(0, 3)) };
  assertClose(
    attentionRolloutRow([oneHead(A1), clsOnly], 0),
    attentionRolloutRow(blocks, 0),
    1e-12,
    'CLS row',
  );
  assert.throws(() => attentionRolloutRow([oneHead(A1), clsOnly], 1), /block 1/);
  assert.throws(() => attentionRolloutRow([clsOnly, oneHead(A2)], 0), /block 0/);
});

test('rollout: heads are averaged before the identity is added', () => {
  // Two heads whose mean is A1: the same flow as the one-head block.
  const h2 = [0.4, 0.4, 0.2, 0.2, 0.4, 0.4, 0.3, 0.3, 0.4];
  const h1 = A1.map((value, i) => 2 * value - h2[i]!);
  const twoHeads = { heads: 2, tokens: 3, data: Float32Array.from([...h1, ...h2]) };
  assertClose(attentionRolloutRow([twoHeads, oneHead(A2)]), [0.48, 0.27, 0.25], 1e-7, 'two heads');
});

test('rollout: a flat map is all zeros; shapes that do not fit are refused', () => {
  const uniform = { heads: 1, tokens: 5, data: new Float32Array(25).fill(0.2) };
  assert.deepEqual(clsHeatmap(attentionRolloutRow([uniform]), [2, 2]), [0, 0, 0, 0]);
  assert.throws(() => attentionRolloutRow([]), /at least one block/);
  assert.throws(
    () => attentionRolloutRow([oneHead(A1), { heads: 1, tokens: 2, data: new Float32Array(4) }]),
    /block 1/,
  );
  assert.throws(() => attentionRolloutRow([oneHead(A1)], 3), /token 3/);
  assert.throws(() => clsHeatmap(new Float64Array(3), [2, 2]), /1 \+ 2×2/);
});

// ----- the explanation graph against PyTorch --------------------------------------------------------

test('explain graph: attention outputs are the softmax of each block (rows sum to 1) and match PyTorch; logits and heatmap too', async () => {
  const reference = (await readSafetensors(ROLLOUT_REFERENCE)).tensors;
  const ref = (name: string) => reference.get(name)!;
  const adapter = await loadAdapter(join(FIXTURES, 'lora_adapter'));
  const stack = AdapterStack.build(backbone.config, [
    { name: 'fixture', weights: stackedWeightsOf(adapter) },
  ]);
  const graph = buildExplainGraph(backbone, stack);
  assert.equal(attentionValues(graph, backbone.config.depth).length, 2);
  const session = await Session.fromGraph(graph, { threads: 1 });
  try {
    const input = ref('input').data;
    const perImage = 3 * 32 * 32;
    const tokens = 17;
    const heads = backbone.config.heads;
    for (let b = 0; b < 2; b++) {
      const pixels = input.slice(b * perImage, (b + 1) * perImage);
      const feeds: Record<string, HostTensor | { shape: number[]; data: BigInt64Array }> = {
        [MULTI_TASK_INPUTS.pixels]: { shape: [1, 3, 32, 32], data: pixels },
        [MULTI_TASK_INPUTS.taskIndex]: { shape: [1], data: BigInt64Array.of(0n) },
      };
      for (const [name, tensor] of stack.feeds()) feeds[name] = tensor;
      const out = await session.run(feeds);
      for (let layer = 0; layer < 2; layer++) {
        // The last block runs for the CLS token only, as in serving: its attention is the CLS row.
        const queries = layer === 1 ? 1 : tokens;
        const attention = out[attentionOutputName(layer)]!;
        assert.deepEqual(attention.shape, [1, heads, queries, tokens]);
        for (let row = 0; row < heads * queries; row++) {
          const sum = attention.data.subarray(row * tokens, (row + 1) * tokens).reduce((s, v) => s + v, 0);
          assert.ok(Math.abs(sum - 1) < 1e-5, `block ${layer} row ${row} sums to ${sum}`);
        }
        const size = heads * tokens * tokens;
        const full = ref(`attention.${layer}`).data.subarray(b * size, (b + 1) * size);
        const expected = Float32Array.from({ length: heads * queries * tokens }, (_, i) => {
          const [head, rest] = [Math.floor(i / (queries * tokens)), i % (queries * tokens)];
          return full[head * tokens * tokens + rest]!;
        });
        assertClose(attention.data, expected, 2e-5, `image ${b} block ${layer} attention`);
      }
      const explained = await runExplainGraph(
        session,
        { config: backbone.config, inputSize: [32, 32] },
        stack,
        0,
        3,
        pixels,
      );
      assertClose(explained.logits, ref('logits').data.subarray(b * 3, b * 3 + 3), 1e-4, `image ${b} logits`);
      assert.deepEqual(explained.grid, [4, 4]);
      assertClose(
        explained.heatmap,
        ref('heatmap').data.subarray(b * 16, b * 16 + 16),
        1e-4,
        `image ${b} heatmap`,
      );
      // The rollout row itself, before scaling, against PyTorch's full R[0, :].
      const blocks = [0, 1].map((layer) => ({
        heads,
        tokens,
        ...(layer === 1 ? { queries: 1 } : {}),
        data: out[attentionOutputName(layer)]!.data,
      }));
      assertClose(
        attentionRolloutRow(blocks),
        ref('rollout').data.subarray(b * 289, b * 289 + 17),
        1e-5,
        'R[0]',
      );
    }
  } finally {
    await session.release();
  }
});

test('explain worker task: the same answer in-process as the graph; refuses a backbone that changed', async () => {
  const reference = (await readSafetensors(ROLLOUT_REFERENCE)).tensors;
  const adapter = await loadAdapter(join(FIXTURES, 'lora_adapter'));
  const job = {
    backboneDir: backbone.dir,
    fingerprint: backbone.fingerprint,
    precision: 'fp32' as const,
    config: backbone.config,
    inputSize: backbone.preprocess.inputSize,
    threads: 1,
    task: 'fixture',
    weights: stackedWeightsOf(adapter),
    pixels: reference.get('input')!.data.slice(0, 3 * 32 * 32),
  };
  const result = await explainJob(job);
  assertClose(result.heatmap, reference.get('heatmap')!.data.subarray(0, 16), 1e-4, 'heatmap');
  assertClose(result.logits, reference.get('logits')!.data.subarray(0, 3), 1e-4, 'logits');
  await assert.rejects(explainJob({ ...job, fingerprint: 'another' }), /changed since the server started/);

  // An int8 server explains through its own int8 products: the logits /v1/predict's graph gives on the
  // int8 backbone (the same graph, last block on CLS included), not the fp32 ones.
  const explainedInt8 = await explainJob({ ...job, precision: 'int8' });
  const stack = AdapterStack.build(backbone.config, [{ name: 'fixture', weights: job.weights }]);
  const served = await MultiTaskModel.create(withPrecision(backbone, 'int8'), stack.slots, { threads: 1 });
  try {
    const logits = await served.run(job.pixels, [1, 3, 32, 32], [0], stack);
    assertClose(explainedInt8.logits, logits.subarray(0, 3), 1e-5, 'int8 explanation vs int8 serving');
    assert.ok(
      explainedInt8.logits.some((value, i) => Math.abs(value - result.logits[i]!) > 1e-4),
      'int8 explanation logits equal the fp32 ones',
    );
  } finally {
    await served.release();
  }
});

test('explanation thread: a flood beyond the queue is refused with 503 queue-full, the rest answered', async () => {
  const adapter = await loadAdapter(join(FIXTURES, 'lora_adapter'));
  const explainer = new AttentionExplainer(backbone, { threads: 1 });
  const pixels = new Float32Array(3 * 32 * 32).fill(0.25);
  try {
    const outcomes = await Promise.allSettled(
      Array.from({ length: EXPLAIN_MAX_QUEUE + 4 }, () =>
        explainer.explain('fixture', stackedWeightsOf(adapter), pixels),
      ),
    );
    const refused = outcomes.filter((outcome) => outcome.status === 'rejected');
    assert.ok(refused.length >= 3 && refused.length <= 4, `${refused.length} refused`);
    for (const outcome of refused)
      assert.equal((outcome.reason as { code: string }).code, 'MELO_ERR_QUEUE_FULL');
    const answers = outcomes.flatMap((outcome) =>
      outcome.status === 'fulfilled' ? [outcome.value.heatmap] : [],
    );
    for (const heatmap of answers) assert.deepEqual(heatmap, answers[0]);
  } finally {
    await explainer.close();
  }
});

test('modelRegion: the crop the model sees, as fractions of the picture', () => {
  const exact: PreprocessConfig = backbone.preprocess;
  assert.deepEqual(modelRegion(640, 480, exact), { x: 0, y: 0, width: 1, height: 1 });
  // timm eval: shorter side to 256 (300×200 → 384×256), center crop 224 at x = (384−224)/2 = 80, y = 16.
  const shortest: PreprocessConfig = {
    ...exact,
    resizeMode: 'shortest',
    resizeSize: [256, 256],
    inputSize: [224, 224],
  };
  assert.deepEqual(modelRegion(300, 200, shortest), {
    x: 80 / 384,
    y: 16 / 256,
    width: 224 / 384,
    height: 224 / 256,
  });
});

// ----- HTTP ----------------------------------------------------------------------------------------

function post(
  target: FastifyInstance,
  url: string,
  bytes: Buffer,
  type: string,
  headers: Record<string, string> = {},
) {
  return target.inject({
    method: 'POST',
    url,
    payload: bytes,
    headers: { 'content-type': type, ...headers },
  });
}

test('POST /v1/explain: each task’s answer equals /v1/predict; heatmap over the 4×4 grid in [0, 1]; LoRA changes it', async () => {
  const predicted = (await post(app, '/v1/predict?tasks=all', photo.bytes, 'image/jpeg')).json<PredictBody>();
  const heatmaps = new Map<string, number[]>();
  for (const expected of predicted.results) {
    const response = await post(app, `/v1/explain?task=${expected.task}`, photo.bytes, 'image/jpeg');
    assert.equal(response.statusCode, 200, response.body);
    const body = response.json<ExplainBody>();
    assert.equal(body.task, expected.task);
    assert.deepEqual(body.labels, expected.labels);
    assertClose(body.probabilities, expected.probabilities, 1e-6, `${expected.task} probabilities`);
    assert.equal(body.prediction, expected.prediction);
    assert.deepEqual(body.grid, [4, 4]);
    assert.equal(body.heatmap.length, 16);
    assert.equal(Math.min(...body.heatmap), 0);
    assert.equal(Math.max(...body.heatmap), 1);
    const decoded = await decodeAnyImage(photo.bytes, 'photo');
    assert.deepEqual(body.image, { width: decoded.width, height: decoded.height });
    assert.deepEqual(body.region, { x: 0, y: 0, width: 1, height: 1 });
    heatmaps.set(body.task, body.heatmap);
  }
  // 'blood-cell' adapts query and value: its attention differs from the backbone's (the linear probe's).
  const difference = heatmaps
    .get('blood-cell')!
    .reduce((s, v, i) => s + Math.abs(v - heatmaps.get('abnormal')![i]!), 0);
  assert.ok(difference > 0.05, `LoRA left the heatmap unchanged (${difference})`);
});

test('POST /v1/explain and /v1/preview: errors name the problem', async () => {
  const png = await sharp(Buffer.alloc(12 * 10 * 3, 90), { raw: { width: 12, height: 10, channels: 3 } })
    .png()
    .toBuffer();
  const cases = [
    {
      url: '/v1/explain?task=nope',
      bytes: png,
      type: 'image/png',
      status: 404,
      code: 'MELO_ERR_UNKNOWN_TASK',
    },
    {
      url: '/v1/explain?task=..%2Fetc',
      bytes: png,
      type: 'image/png',
      status: 400,
      code: 'MELO_ERR_BAD_TASK_NAME',
    },
    { url: '/v1/explain', bytes: png, type: 'image/png', status: 400, code: 'FST_ERR_VALIDATION' },
    {
      url: '/v1/explain?task=abnormal',
      bytes: png.subarray(0, 40),
      type: 'image/png',
      status: 400,
      code: 'MELO_ERR_BAD_IMAGE',
    },
    {
      url: '/v1/explain?task=abnormal',
      bytes: Buffer.from('hello'),
      type: 'text/plain',
      status: 415,
      code: 'FST_ERR_CTP_INVALID_MEDIA_TYPE',
    },
    {
      url: '/v1/preview',
      bytes: Buffer.from('GIF89a....'),
      type: 'image/gif',
      status: 415,
      code: 'MELO_ERR_UNSUPPORTED_IMAGE',
    },
    { url: '/v1/preview', bytes: Buffer.alloc(0), type: 'image/png', status: 400, code: 'MELO_ERR_NO_IMAGE' },
  ];
  for (const { url, bytes, type, status, code } of cases) {
    const response = await post(app, url, bytes, type);
    assert.equal(response.statusCode, status, `${url}: ${response.body}`);
    assert.equal(response.json<{ code: string }>().code, code, `${url}: ${response.body}`);
  }
});

test('POST /v1/preview: the displayed pixels as PNG (exact for 8-bit), DICOM in grey, large images scaled to 1024', async () => {
  const raw = Buffer.alloc(30 * 20 * 3);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 53) % 256;
  const png = await sharp(raw, { raw: { width: 30, height: 20, channels: 3 } })
    .png()
    .toBuffer();
  const response = await post(app, '/v1/preview', png, 'image/png');
  assert.equal(response.statusCode, 200, response.body);
  assert.equal(response.headers['content-type'], 'image/png');
  const shown = await sharp(response.rawPayload).raw().toBuffer({ resolveWithObject: true });
  assert.deepEqual([shown.info.width, shown.info.height, shown.info.channels], [30, 20, 3]);
  assert.ok(shown.data.equals(raw), '8-bit pixels come back unchanged');

  const big = await sharp({ create: { width: 1500, height: 1000, channels: 3, background: '#336699' } })
    .jpeg()
    .toBuffer();
  const scaled = await sharp((await post(app, '/v1/preview', big, 'image/jpeg')).rawPayload).metadata();
  assert.deepEqual([scaled.width, scaled.height], [1024, 683]);

  if (existsSync(CT_DICOM)) {
    const dicom = await readFile(CT_DICOM);
    const preview = await post(app, '/v1/preview', dicom, 'application/dicom');
    assert.equal(preview.statusCode, 200, preview.body);
    assert.equal((await sharp(preview.rawPayload).metadata()).channels, 1, 'a one-channel PNG');
    // sharp's raw output is sRGB unless told otherwise.
    const grey = await sharp(preview.rawPayload)
      .toColourspace('b-w')
      .raw()
      .toBuffer({ resolveWithObject: true });
    const decoded = await decodeAnyImage(dicom, 'CT_small.dcm');
    assert.deepEqual(
      [grey.info.width, grey.info.height, grey.info.channels],
      [decoded.width, decoded.height, 1],
    );
    const expected = Uint8Array.from(decoded.data, (v) => Math.round(Math.min(1, Math.max(0, v)) * 255));
    assert.ok(grey.data.equals(expected), 'DICOM preview = the decoded (windowed) pixels in 8 bits');
  }
});

test('a token guards /v1/explain and /v1/preview; the page and its assets load without it', async () => {
  const without = await post(guarded, '/v1/explain?task=abnormal', photo.bytes, 'image/jpeg');
  assert.equal(without.statusCode, 401);
  assert.equal((await post(guarded, '/v1/preview', photo.bytes, 'image/jpeg')).statusCode, 401);
  const withToken = await post(guarded, '/v1/explain?task=abnormal', photo.bytes, 'image/jpeg', {
    authorization: `Bearer ${TOKEN}`,
  });
  assert.equal(withToken.statusCode, 200, withToken.body);
  // The page and its assets load without the token; the page then asks for it.
  const pageHtml = await guarded.inject({ method: 'GET', url: '/' });
  assert.equal(pageHtml.statusCode, 200);
  const asset = /src="(\/assets\/[^"]+\.js)"/.exec(pageHtml.body)![1]!;
  assert.equal((await guarded.inject({ method: 'GET', url: asset })).statusCode, 200);
  // What an auth hook sees for the page: config.public on every route of the page plugin.
  const plain = Fastify();
  const seen: FastifyContextConfig[] = [];
  plain.addHook('onRequest', async (request) => {
    seen.push(request.routeOptions.config);
  });
  await plain.register(staticPage);
  const html = await plain.inject({ method: 'GET', url: '/' });
  const script = /src="(\/assets\/[^"]+\.js)"/.exec(html.body)![1]!;
  await plain.inject({ method: 'GET', url: script });
  await plain.close();
  assert.equal(seen.length, 2);
  assert.ok(seen.every((config) => config.public === true));
});

test('GET /: the built page with a strict CSP; hashed assets cached for good; unknown paths 404; an unbuilt page says so', async () => {
  const page = await app.inject({ method: 'GET', url: '/' });
  assert.equal(page.statusCode, 200);
  assert.match(String(page.headers['content-type']), /^text\/html/);
  assert.equal(page.headers['cache-control'], 'no-cache');
  assert.match(
    String(page.headers['content-security-policy']),
    /default-src 'self'; img-src 'self' blob: data:/,
  );
  assert.match(page.body, /<input id="file" type="file"/);
  const assets = [...page.body.matchAll(/(?:src|href)="(\/assets\/[^"]+)"/g)].map((match) => match[1]!);
  assert.equal(assets.length, 2, page.body);
  for (const asset of assets) {
    const response = await app.inject({ method: 'GET', url: asset });
    assert.equal(response.statusCode, 200, asset);
    assert.equal(response.headers['cache-control'], 'public, max-age=31536000, immutable');
    assert.match(
      String(response.headers['content-type']),
      asset.endsWith('.js') ? /javascript/ : /text\/css/,
    );
  }
  assert.equal((await app.inject({ method: 'GET', url: '/assets/nothing.js' })).statusCode, 404);
  assert.equal((await app.inject({ method: 'GET', url: '/../package.json' })).statusCode, 404);

  const unbuilt = Fastify();
  await unbuilt.register(staticPage, { root: join(work, 'no-such-dist') });
  const missing = await unbuilt.inject({ method: 'GET', url: '/' });
  assert.equal(missing.statusCode, 503);
  assert.match(missing.body, /npm run build:web/);
  await unbuilt.close();
});

test('web/dist is the build of web/ (rebuild with `npm run build:web` after editing the page)', async () => {
  const { build } = await import('vite');
  const outDir = join(work, 'dist');
  await build({
    configFile: join(REPO, 'web/vite.config.ts'),
    logLevel: 'silent',
    build: { outDir, emptyOutDir: true },
  });
  const list = async (dir: string, prefix = ''): Promise<string[]> => {
    const entries = await readdir(dir, { withFileTypes: true });
    const files = await Promise.all(
      entries.map((entry) =>
        entry.isDirectory()
          ? list(join(dir, entry.name), `${prefix}${entry.name}/`)
          : [`${prefix}${entry.name}`],
      ),
    );
    return files.flat().sort();
  };
  const committed = await list(WEB_DIST);
  assert.deepEqual(await list(outDir), committed, 'file names differ: run npm run build:web');
  for (const file of committed) {
    assert.ok(
      (await readFile(join(outDir, file))).equals(await readFile(join(WEB_DIST, file))),
      `${file} is stale`,
    );
  }
});

// ----- the page in a real browser -------------------------------------------------------------------

interface ShownResult {
  task: string;
  prediction: string;
  rows: { label: string; probability: number; text: string; predicted: boolean }[];
}

test('browser: upload an image, the page shows each task’s probabilities and label as the API gives them, then a heatmap', {
  skip: noChromium,
  timeout: 180_000,
}, async (t) => {
  const base = baseUrl(app);
  const page = await (await browser()).newPage();
  // Generous: the explanation thread starts (TypeScript loader, graph) on first use, on a loaded 2-core CI box.
  page.setDefaultTimeout(60_000);
  const screenshot = async (name: string) => {
    if (SCREENSHOTS) await page.screenshot({ path: join(SCREENSHOTS, name), fullPage: true });
  };
  const problems: string[] = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console: ${message.text()}`);
  });
  try {
    t.diagnostic(`uploading ${photo.file}`);
    await page.goto(base);
    await page.waitForSelector('#tasks input[type=checkbox]');
    const boxes = await page.$$eval('#tasks input', (inputs) =>
      inputs.map((input) => [(input as HTMLInputElement).value, (input as HTMLInputElement).checked]),
    );
    assert.deepEqual(boxes, [
      ['abnormal', true],
      ['blood-cell', true],
      ['findings', true],
    ]);
    await screenshot('1-empty.png');

    await page.setInputFiles('#file', photo.file);
    await page.waitForSelector('#results[data-state=done] article.result');
    const shown = await page.$$eval('#results article.result', (cards) =>
      cards.map((card) => ({
        task: (card as HTMLElement).dataset.task!,
        prediction: (card as HTMLElement).dataset.prediction!,
        rows: [...card.querySelectorAll('li')].map((row) => ({
          label: (row as HTMLElement).dataset.label!,
          probability: Number((row as HTMLElement).dataset.probability),
          text: row.querySelector('.value')!.textContent!,
          predicted: row.classList.contains('predicted'),
        })),
      })),
    );
    const api = (await post(app, '/v1/predict?tasks=all', photo.bytes, 'image/jpeg')).json<PredictBody>();
    const percent = new Intl.NumberFormat('en-US', {
      style: 'percent',
      minimumFractionDigits: 1,
      maximumFractionDigits: 1,
    });
    assert.deepEqual(
      shown.map((result) => result.task),
      api.results.map((result) => result.task),
    );
    shown.forEach((result: ShownResult, i) => {
      const expected = api.results[i]!;
      assert.equal(result.prediction, expected.prediction, result.task);
      assert.deepEqual(
        result.rows.map((row) => row.label),
        expected.labels,
      );
      assertClose(
        result.rows.map((row) => row.probability),
        expected.probabilities,
        1e-6,
        `${result.task} shown probabilities`,
      );
      const predicted = new Set(expected.prediction.split('|'));
      result.rows.forEach((row, j) => {
        assert.equal(
          row.text,
          percent.format(expected.probabilities[j]!),
          `${result.task} ${row.label} text`,
        );
        assert.equal(row.predicted, predicted.has(row.label), `${result.task} ${row.label} highlighted`);
      });
    });
    assert.equal(await page.$eval('#image', (image) => (image as HTMLImageElement).naturalWidth > 0), true);

    // The heatmap for one task, drawn over the image: strongest where the rollout is highest.
    await page.selectOption('#explain-task', 'blood-cell');
    await page.waitForSelector('#overlay[data-state=drawn]');
    const explained = (
      await post(app, '/v1/explain?task=blood-cell', photo.bytes, 'image/jpeg')
    ).json<ExplainBody>();
    // No named functions inside: tsx would wrap them in a helper the browser does not have.
    const drawn = await page.$eval(
      '#overlay',
      (canvas, cells) => {
        const c = canvas as HTMLCanvasElement;
        const pixels = c.getContext('2d')!.getImageData(0, 0, c.width, c.height).data;
        let painted = 0;
        for (let i = 3; i < pixels.length; i += 4) if (pixels[i]! > 0) painted++;
        // Alpha at the centre of the hottest and the coldest patch (of the 4×4 grid over the whole image).
        const alpha = cells.map((cell) => {
          const x = Math.floor((((cell % 4) + 0.5) / 4) * c.width);
          const y = Math.floor(((Math.floor(cell / 4) + 0.5) / 4) * c.height);
          return pixels[(y * c.width + x) * 4 + 3]!;
        });
        return { painted, total: c.width * c.height, hot: alpha[0]!, cold: alpha[1]! };
      },
      [explained.heatmap.indexOf(1), explained.heatmap.indexOf(0)],
    );
    assert.ok(drawn.painted > drawn.total * 0.9, `only ${drawn.painted} of ${drawn.total} pixels drawn`);
    assert.ok(drawn.hot > drawn.cold + 60, `hot patch alpha ${drawn.hot} vs cold ${drawn.cold}`);
    assert.equal(await page.$eval('#legend', (legend) => (legend as HTMLElement).hidden), false);
    await screenshot('2-results-heatmap.png');

    // A DICOM file: the browser cannot show it, so the page asks the server for a preview.
    if (existsSync(CT_DICOM)) {
      await page.setInputFiles('#file', CT_DICOM);
      await page.waitForFunction(
        () => document.querySelector('#stage')?.getAttribute('data-ready') === 'true',
      );
      await page.waitForSelector('#results[data-state=done] article.result');
      assert.equal(await page.$eval('#image', (image) => (image as HTMLImageElement).naturalWidth), 128);
      assert.match(await page.$eval('#file-info', (info) => info.textContent!), /CT_small\.dcm · 128 × 128/);
      // The tasks whose routing matches the CT are preselected, and only they are shown.
      const routedBoxes = await page.$$eval('#tasks input', (inputs) =>
        inputs.map((input) => [(input as HTMLInputElement).value, (input as HTMLInputElement).checked]),
      );
      assert.deepEqual(routedBoxes, [
        ['abnormal', true],
        ['blood-cell', true],
        ['findings', false],
      ]);
      assert.deepEqual(
        await page.$$eval('#results article.result', (cards) =>
          cards.map((card) => (card as HTMLElement).dataset.task),
        ),
        ['abnormal', 'blood-cell'],
      );
      // Checking it again runs it too.
      await page.check('#tasks input[value=findings]');
      await page.waitForFunction(() => document.querySelectorAll('#results article.result').length === 3);
      await page.waitForSelector('#overlay[data-state=drawn]');
      await screenshot('3-dicom.png');
    }

    // Drag and drop onto the image area: the dropped file replaces the shown one and is classified.
    const dropped = await sharp(Buffer.alloc(64 * 48 * 3, 140), {
      raw: { width: 64, height: 48, channels: 3 },
    })
      .png()
      .toBuffer();
    const transfer = await page.evaluateHandle((base64) => {
      const bytes = Uint8Array.from(atob(base64), (char) => char.charCodeAt(0));
      const data = new DataTransfer();
      data.items.add(new File([bytes], 'dropped.png', { type: 'image/png' }));
      return data;
    }, dropped.toString('base64'));
    await page.dispatchEvent('#stage', 'drop', { dataTransfer: transfer });
    await page.waitForFunction(() =>
      document.querySelector('#file-info')?.textContent?.startsWith('dropped.png · 64 × 48'),
    );
    await page.waitForSelector('#results[data-state=done] article.result');
    const droppedApi = (await post(app, '/v1/predict?tasks=all', dropped, 'image/png')).json<PredictBody>();
    const droppedShown = await page.$$eval('#results article.result', (cards) =>
      cards.map((card) => (card as HTMLElement).dataset.prediction),
    );
    assert.deepEqual(
      droppedShown,
      droppedApi.results.map((result) => result.prediction),
    );
    assert.equal(await page.$eval('#error', (error) => (error as HTMLElement).hidden), true);
    assert.deepEqual(problems, []);
  } finally {
    await page.close();
  }
});

test('browser: a server with a token — the page asks for it, keeps it for the session and sends it', {
  skip: noChromium,
  timeout: 180_000,
}, async () => {
  const page = await (await browser()).newPage();
  // Generous: the explanation thread starts (TypeScript loader, graph) on first use, on a loaded 2-core CI box.
  page.setDefaultTimeout(60_000);
  const apiAuthorization: (string | undefined)[] = [];
  const pageFiles: { path: string; authorization: string | undefined }[] = [];
  // The page's own files load without a token (they hold no data); the API calls carry what the page sends.
  await page.route('**/*', async (route) => {
    const request = route.request();
    const path = new URL(request.url()).pathname;
    if (path.startsWith('/v1/')) apiAuthorization.push(request.headers().authorization);
    else pageFiles.push({ path, authorization: request.headers().authorization });
    return route.continue();
  });
  try {
    await page.goto(baseUrl(guarded));
    await page.waitForSelector('#auth:not([hidden])');
    assert.equal(apiAuthorization[0], undefined);
    assert.ok(pageFiles.some((file) => file.path === '/'));
    assert.ok(pageFiles.some((file) => file.path.startsWith('/assets/') && file.path.endsWith('.js')));
    assert.ok(pageFiles.every((file) => file.authorization === undefined));
    await page.fill('#token', 'wrong');
    await page.click('#auth-form button');
    await page.waitForFunction(() =>
      document.querySelector('#auth-message')?.textContent?.includes('not accepted'),
    );
    await page.fill('#token', TOKEN);
    await page.click('#auth-form button');
    await page.waitForSelector('#auth[hidden]', { state: 'attached' });
    await page.waitForSelector('#tasks input[type=checkbox]');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('melo.token')), TOKEN);
    await page.setInputFiles('#file', photo.file);
    await page.waitForSelector('#results[data-state=done] article.result');
    assert.equal(apiAuthorization.at(-1), `Bearer ${TOKEN}`);
  } finally {
    await page.close();
  }
});

test('browser: a file that is no image shows the error line and the drop area again, never a broken image', {
  skip: noChromium,
  timeout: 120_000,
}, async () => {
  const page = await (await browser()).newPage();
  page.setDefaultTimeout(60_000);
  try {
    await page.goto(baseUrl(app));
    await page.waitForSelector('#tasks input[type=checkbox]');
    await page.setInputFiles('#file', {
      name: 'notes.png',
      mimeType: 'image/png',
      buffer: Buffer.from('not an image'),
    });
    await page.waitForFunction(() => !(document.querySelector('#error') as HTMLElement).hidden);
    // The prediction's error can arrive before the image's own failure is handled: at no moment is the
    // image drawn (hidden until it loads), and once both are in, it is gone.
    assert.equal(
      await page.evaluate(() => getComputedStyle(document.querySelector('#image')!).visibility),
      'hidden',
    );
    await page.waitForFunction(() => !document.querySelector('#image')!.hasAttribute('src'));
    const state = await page.evaluate(() => {
      const image = document.querySelector('#image') as HTMLImageElement;
      return {
        src: image.getAttribute('src'),
        figureHidden: (document.querySelector('#figure') as HTMLElement).hidden,
        dropHidden: (document.querySelector('#drop') as HTMLElement).hidden,
        error: (document.querySelector('#error') as HTMLElement).textContent,
      };
    });
    assert.equal(state.src, null, 'no src left for the browser to draw as a broken image');
    assert.equal(state.figureHidden, true);
    assert.equal(state.dropHidden, false);
    assert.ok(state.error && state.error.length > 0);
  } finally {
    await page.close();
  }
});
