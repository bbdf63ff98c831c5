import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { Command } from 'commander';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { registerPullCommand } from '../src/cli/commands/pull.ts';
import { buildProgram } from '../src/cli/main.ts';
import { isNonCommercialLicense, PULL_RECORD_FILE, pullBackbone } from '../src/io/hub.ts';

const ROOT = new URL('..', import.meta.url).pathname;
const VIT = join(ROOT, 'test/fixtures/vit');
const FAMILIES = join(ROOT, 'test/fixtures/families');

/** A file as the mock Hub serves it; `served` differs from `content` to emulate corruption in transit. */
interface HubFile {
  readonly content: Buffer;
  readonly served?: Buffer;
}
interface HubRepo {
  readonly revisions: readonly string[];
  readonly files: Map<string, HubFile>;
  /** What /api/models/{repo}/revision/{rev} answers (the model card's metadata and tags). */
  readonly card?: { readonly cardData?: Record<string, unknown>; readonly tags?: readonly string[] };
}

const repos = new Map<string, HubRepo>();
const requests: string[] = [];
let server: Server;
let hubUrl = '';
let dir = '';

const PAGE = 3;

function isLfs(path: string): boolean {
  return /\.(safetensors|bin|h5|msgpack)$/.test(path);
}

function gitBlobId(content: Buffer): string {
  return createHash('sha1').update(`blob ${content.length}\0`).update(content).digest('hex');
}

/** The tree endpoint's entry for a file, shaped like huggingface.co's /api/models/{repo}/tree answer. */
function treeEntry(path: string, content: Buffer) {
  if (!isLfs(path)) return { type: 'file', oid: gitBlobId(content), size: content.length, path };
  const sha256 = createHash('sha256').update(content).digest('hex');
  const pointer = Buffer.from(
    `version https://git-lfs.github.com/spec/v1\noid sha256:${sha256}\nsize ${content.length}\n`,
  );
  return {
    type: 'file',
    oid: gitBlobId(pointer),
    size: content.length,
    path,
    lfs: { oid: sha256, size: content.length, pointerSize: pointer.length },
  };
}

/**
 * Emulates the two Hub endpoints @huggingface/hub calls for listFiles and downloadFile:
 * GET /api/models/{repo}/tree/{rev}?recursive=…&expand=… (JSON, paginated with a Link header) and
 * GET /{repo}/resolve/{rev}/{path} (honouring a Range header: the library probes with bytes=0-0).
 */
function handle(url: URL, range: string | undefined) {
  const notFound = (code: string, error: string) => ({
    status: 404,
    headers: { 'Content-Type': 'application/json', 'X-Error-Code': code },
    body: Buffer.from(JSON.stringify({ error })),
  });
  const info = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
  if (info) {
    const repo = repos.get(info[1]!);
    if (!repo?.card) return notFound('RepoNotFound', 'Repository not found');
    const body = {
      _id: 'x',
      id: info[1],
      private: false,
      downloads: 0,
      gated: false,
      likes: 0,
      ...repo.card,
    };
    return {
      status: 200,
      headers: { 'Content-Type': 'application/json' },
      body: Buffer.from(JSON.stringify(body)),
    };
  }
  const tree = /^\/api\/models\/([^/]+\/[^/]+)\/tree\/([^/]+)$/.exec(url.pathname);
  const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
  const match = tree ?? resolve;
  if (!match) return notFound('NotFound', 'Not Found');
  const repo = repos.get(match[1]!);
  if (!repo) return notFound('RepoNotFound', 'Repository not found');
  if (!repo.revisions.includes(decodeURIComponent(match[2]!)))
    return notFound('RevisionNotFound', `Invalid rev id: ${match[2]}`);
  if (tree) {
    const entries = [...repo.files].map(([path, file]) => treeEntry(path, file.content));
    const cursor = Number(url.searchParams.get('cursor') ?? 0);
    const page = entries.slice(cursor, cursor + PAGE);
    const headers: Record<string, string> = { 'Content-Type': 'application/json' };
    if (cursor + PAGE < entries.length) {
      const next = new URL(url);
      next.searchParams.set('cursor', String(cursor + PAGE));
      headers.Link = `<${next.href}>; rel="next"`;
    }
    return { status: 200, headers, body: Buffer.from(JSON.stringify(page)) };
  }
  const file = repo.files.get(decodeURIComponent(resolve![3]!));
  if (!file) return notFound('EntryNotFound', 'Entry not found');
  const body = file.served ?? file.content;
  const headers: Record<string, string> = {
    'Content-Type': 'application/octet-stream',
    ETag: `"${createHash('sha256').update(file.content).digest('hex')}"`,
    'Accept-Ranges': 'bytes',
  };
  const bytes = range ? /^bytes=(\d+)-(\d*)$/.exec(range) : null;
  if (bytes) {
    const start = Number(bytes[1]);
    const end = bytes[2] ? Math.min(Number(bytes[2]), body.length - 1) : body.length - 1;
    headers['Content-Range'] = `bytes ${start}-${end}/${body.length}`;
    return { status: 206, headers, body: body.subarray(start, end + 1) };
  }
  return { status: 200, headers, body };
}

async function filesOf(directory: string, names: string[]): Promise<Map<string, HubFile>> {
  const files = new Map<string, HubFile>();
  for (const name of names) files.set(name, { content: await readFile(join(directory, name)) });
  return files;
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-interop-hub-'));
  const sharded = await filesOf(join(VIT, 'hf-sharded'), [
    'config.json',
    'model-00001-of-00002.safetensors',
    'model-00002-of-00002.safetensors',
    'model.safetensors.index.json',
    'preprocessor_config.json',
  ]);
  sharded.set('pytorch_model.bin', { content: Buffer.from('PK\x03\x04 a pickle would be here') });
  sharded.set('README.md', { content: Buffer.from('# tiny vit\n') });
  sharded.set('onnx/model.onnx', { content: Buffer.from('not downloaded either') });
  repos.set('melo/tiny-vit', {
    revisions: ['main', 'v1'],
    files: sharded,
    card: { cardData: { license: 'apache-2.0' }, tags: ['vision', 'license:apache-2.0'] },
  });
  repos.set('melo/tiny-timm', {
    revisions: ['main'],
    files: await filesOf(join(VIT, 'timm'), ['config.json', 'model.safetensors']),
  });
  // Backbone families: an open_clip repository laid out as BiomedCLIP's, and a RAD-DINO-like Dinov2Model.
  const openClip = await filesOf(join(FAMILIES, 'openclip-timm'), [
    'open_clip_config.json',
    'open_clip_model.safetensors',
  ]);
  openClip.set('open_clip_pytorch_model.bin', { content: Buffer.from('pickle') });
  repos.set('melo/biomedclip-tiny', {
    revisions: ['main'],
    files: openClip,
    card: { cardData: { license: 'mit' }, tags: ['open_clip', 'license:mit'] },
  });
  repos.set('melo/rad-dino-tiny', {
    revisions: ['main'],
    files: await filesOf(join(FAMILIES, 'dinov2-hf-model'), [
      'config.json',
      'model.safetensors',
      'preprocessor_config.json',
    ]),
    card: { cardData: { license: 'mit' }, tags: [] },
  });
  // RETFound's weights are CC BY-NC: the licence comes from a tag here (no cardData.license).
  repos.set('melo/noncommercial', {
    revisions: ['main'],
    files: await filesOf(join(VIT, 'timm'), ['config.json', 'model.safetensors']),
    card: { cardData: {}, tags: ['timm', 'license:cc-by-nc-4.0'] },
  });
  const config = await readFile(join(VIT, 'hf', 'config.json'));
  repos.set('melo/pickle-only', {
    revisions: ['main'],
    files: new Map([
      ['config.json', { content: config }],
      ['pytorch_model.bin', { content: Buffer.from('pickle') }],
    ]),
  });
  const corrupt = await filesOf(join(VIT, 'hf'), [
    'config.json',
    'model.safetensors',
    'preprocessor_config.json',
  ]);
  const good = corrupt.get('model.safetensors')!.content;
  const flipped = Buffer.from(good);
  flipped[flipped.length - 1]! ^= 0x01;
  corrupt.set('model.safetensors', { content: good, served: flipped });
  repos.set('melo/corrupt', { revisions: ['main'], files: corrupt });
  const notVit = await filesOf(join(VIT, 'hf'), ['model.safetensors']);
  notVit.set('config.json', { content: Buffer.from(JSON.stringify({ model_type: 'bert' })) });
  repos.set('melo/not-a-vit', { revisions: ['main'], files: notVit });

  server = createServer((request, response) => {
    requests.push(request.url ?? '');
    const result = handle(
      new URL(request.url ?? '/', `http://${request.headers.host}`),
      request.headers.range,
    );
    response.writeHead(result.status, result.headers);
    response.end(request.method === 'HEAD' ? undefined : result.body);
  });
  await new Promise<void>((ready) => server.listen(0, '127.0.0.1', ready));
  hubUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(async () => {
  server.closeAllConnections();
  await new Promise((closed) => server.close(closed));
  await rm(dir, { recursive: true, force: true });
});

async function pullWithCli(args: string[]): Promise<{ stdout: string; stderr: string }> {
  const program = buildProgram();
  let stdout = '';
  let stderr = '';
  const commands = program.commands as Command[];
  const wired = commands.findIndex((command) => command.name() === 'pull');
  if (wired >= 0) commands.splice(wired, 1);
  registerPullCommand(program, {
    stdout: (text) => {
      stdout += text;
    },
    stderr: (text) => {
      stderr += text;
    },
  });
  await program.parseAsync(['pull', ...args], { from: 'user' });
  return { stdout, stderr };
}

test('melo pull fetches a sharded safetensors backbone, skips pickle, and the result loads', async () => {
  requests.length = 0;
  const out = join(dir, 'tiny-vit');
  const { stdout, stderr } = await pullWithCli(['melo/tiny-vit', '--hub-url', hubUrl, '--out', out]);
  assert.match(stderr, /skipped pytorch_model\.bin: pickle \(never downloaded/);
  assert.match(stdout, /melo\/tiny-vit@main, hf layout, 3-class head, licence apache-2\.0, backbone sha256:/);
  assert.doesNotMatch(stderr, /warning/);
  assert.deepEqual((await readdir(out)).sort(), [
    'config.json',
    'melo_pull.json',
    'model-00001-of-00002.safetensors',
    'model-00002-of-00002.safetensors',
    'model.safetensors.index.json',
    'preprocessor_config.json',
  ]);
  for (const name of [
    'model-00001-of-00002.safetensors',
    'model-00002-of-00002.safetensors',
    'config.json',
  ]) {
    assert.deepEqual(await readFile(join(out, name)), await readFile(join(VIT, 'hf-sharded', name)), name);
  }
  const pulled = await loadBackbone(out);
  const reference = await loadBackbone(join(VIT, 'hf'));
  assert.equal(pulled.fingerprint, reference.fingerprint);
  assert.deepEqual(pulled.labels, ['normal', 'benign', 'malignant']);
  // Only the endpoints the library needs were called; the pickle, README and ONNX file were never requested.
  assert.ok(
    requests.some((url) => url.includes('/api/models/melo/tiny-vit/tree/main') && url.includes('cursor=')),
  );
  assert.ok(
    requests.every(
      (url) =>
        url.startsWith('/api/models/melo/tiny-vit/tree/main') ||
        url.startsWith('/api/models/melo/tiny-vit/revision/main') ||
        url.startsWith('/melo/tiny-vit/resolve/main/'),
    ),
  );
  assert.ok(!requests.some((url) => /pytorch_model|README|onnx/.test(url)), requests.join('\n'));
  const record = JSON.parse(await readFile(join(out, PULL_RECORD_FILE), 'utf8')) as {
    files: { path: string; sha256: string }[];
  };
  const shard = record.files.find((file) => file.path === 'model-00002-of-00002.safetensors')!;
  assert.equal(
    shard.sha256,
    createHash('sha256')
      .update(await readFile(join(VIT, 'hf-sharded', shard.path)))
      .digest('hex'),
  );
});

test('a non-commercial licence is printed with a warning; a card without one says so', async () => {
  const { stdout, stderr } = await pullWithCli([
    'melo/noncommercial',
    '--hub-url',
    hubUrl,
    '--out',
    join(dir, 'noncommercial'),
  ]);
  assert.match(stdout, /timm layout, 3-class head, licence cc-by-nc-4\.0, backbone/);
  assert.match(
    stderr,
    /^warning: melo\/noncommercial is licensed cc-by-nc-4\.0, which forbids commercial use/m,
  );
  const record = JSON.parse(await readFile(join(dir, 'noncommercial', PULL_RECORD_FILE), 'utf8'));
  assert.equal(record.license, 'cc-by-nc-4.0');
  const lines: string[] = [];
  const silent = await pullBackbone('melo/tiny-timm', {
    out: join(dir, 'no-card'),
    hubUrl,
    log: (line) => lines.push(line),
  });
  assert.equal(silent.license, undefined);
  assert.equal(silent.nonCommercial, false);
  assert.ok(
    lines.some((line) => /^licence: unknown/.test(line)),
    lines.join('\n'),
  );
  for (const [id, nc] of [
    ['cc-by-nc-4.0', true],
    ['cc-by-nc-sa-4.0', true],
    ['cc-by-nc-nd-3.0', true],
    ['other (research-only)', true],
    ['mit', false],
    ['apache-2.0', false],
    ['cc-by-4.0', false],
    ['openrail', false],
  ] as const) {
    assert.equal(isNonCommercialLicense(id), nc, id);
  }
});

test('melo pull recognises the backbone families: open_clip (BiomedCLIP layout) and HF DINOv2', async () => {
  const out = join(dir, 'biomedclip');
  const { stdout, stderr } = await pullWithCli(['melo/biomedclip-tiny', '--hub-url', hubUrl, '--out', out]);
  assert.match(stderr, /skipped open_clip_pytorch_model\.bin: pickle/);
  assert.match(stdout, /open_clip layout, no head, licence mit, backbone sha256:/);
  assert.deepEqual((await readdir(out)).sort(), [
    'melo_pull.json',
    'open_clip_config.json',
    'open_clip_model.safetensors',
  ]);
  const pulled = await loadBackbone(out);
  assert.equal(pulled.fingerprint, (await loadBackbone(join(FAMILIES, 'openclip-timm'))).fingerprint);
  assert.equal(pulled.config.projectionSize, 12);
  const dino = await pullBackbone('melo/rad-dino-tiny', { out: join(dir, 'rad-dino'), hubUrl });
  assert.equal(dino.layout, 'hf');
  assert.equal(dino.license, 'mit');
  assert.equal(dino.nonCommercial, false);
  assert.equal((await loadBackbone(dino.dir)).config.family, 'dinov2');
});

test('MELO_HUB_URL, a revision and a single-file timm checkpoint', async () => {
  const out = join(dir, 'nested', 'timm');
  const result = await pullBackbone('melo/tiny-timm', { out, env: { MELO_HUB_URL: hubUrl } });
  assert.equal(result.layout, 'timm');
  assert.equal(result.hubUrl, hubUrl);
  assert.deepEqual(
    result.files.map((file) => file.path),
    ['config.json', 'model.safetensors'],
  );
  assert.equal(result.fingerprint, (await loadBackbone(join(VIT, 'timm'))).fingerprint);
  const v1 = await pullBackbone('melo/tiny-vit', { out: join(dir, 'v1'), revision: 'v1', hubUrl });
  assert.equal(v1.revision, 'v1');
  assert.equal(v1.numClasses, 3);
});

test('refusals leave nothing behind: pickle only, corrupt download, not a ViT, unknown repo or revision', async () => {
  const cases: [string, string[], RegExp][] = [
    [
      'pickle',
      ['melo/pickle-only'],
      /only pickle weights \(pytorch_model\.bin\); melo reads safetensors only, never pickle/,
    ],
    [
      'corrupt',
      ['melo/corrupt'],
      /model\.safetensors: sha256 [0-9a-f]{64} does not match the listing's [0-9a-f]{64}/,
    ],
    ['notvit', ['melo/not-a-vit'], /do not load as a backbone: .*config\.json is not a supported backbone/],
    ['missing', ['melo/nothing-here'], /melo\/nothing-here@main: cannot list the repository: not found/],
    ['badrev', ['melo/tiny-vit', '--revision', 'v9'], /tiny-vit@v9: cannot list the repository: not found/],
    ['badid', ['../etc'], /'\.\.\/etc' is not a model repository id/],
  ];
  for (const [name, args, pattern] of cases) {
    const out = join(dir, 'refused', name);
    await assert.rejects(pullWithCli([...args, '--hub-url', hubUrl, '--out', out]), (error: Error) => {
      assert.match(error.message, pattern);
      assert.equal(error.message.split('\n').length, 1);
      return true;
    });
    assert.equal(existsSync(out), false, `${name}: no output directory`);
  }
  const leftovers = existsSync(join(dir, 'refused')) ? await readdir(join(dir, 'refused')) : [];
  assert.deepEqual(leftovers, [], 'no staging directories left');
});

test('an existing non-empty directory is kept unless --force', async () => {
  const out = join(dir, 'existing');
  await mkdir(out);
  await writeFile(join(out, 'keep.txt'), 'mine');
  await assert.rejects(
    pullWithCli(['melo/tiny-timm', '--hub-url', hubUrl, '--out', out]),
    /existing: directory exists and is not empty; choose another --out or pass --force/,
  );
  assert.equal(await readFile(join(out, 'keep.txt'), 'utf8'), 'mine');
  await pullWithCli(['melo/tiny-timm', '--hub-url', hubUrl, '--out', out, '--force', '--json']);
  assert.deepEqual((await readdir(out)).sort(), ['config.json', 'melo_pull.json', 'model.safetensors']);
  assert.deepEqual(
    (await readdir(dir)).filter((name) => name.startsWith('existing')),
    ['existing'],
  );
});
