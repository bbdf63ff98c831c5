import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import sharp from 'sharp';

const REPO = new URL('..', import.meta.url).pathname;
const exec = promisify(execFile);
let dir = '';
let project = '';

/**
 * The setting a project that depends on melo adds to its package.json (README, "Use from TypeScript"):
 * onnxruntime-node's install script fetches CUDA providers from a host outside the npm registry and fails
 * the install where only the registry is reachable; npm 11.19 runs a dependency's install script unless
 * package.json's allowScripts denies it (and prints a notice for each one not listed). This test installs
 * with exactly this setting.
 */
const DEPENDENT_ALLOW_SCRIPTS = { 'onnxruntime-node': false, protobufjs: false, 'core-js-pure': false };

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-pack-'));
  project = join(dir, 'app');
  await mkdir(project);
});
after(() => rm(dir, { recursive: true, force: true }));

test('npm pack, install into a new project, use melo through import … from "melo"', {
  timeout: 600_000,
}, async () => {
  // `npm pack` runs the prepare script (the build) first.
  const packed = await exec('npm', ['pack', '--silent', '--pack-destination', dir], {
    cwd: REPO,
    maxBuffer: 16 << 20,
  });
  const tarball = packed.stdout.trim().split('\n').pop()!;
  assert.match(tarball, /^melo-\d+\.\d+\.\d+\.tgz$/);

  await writeFile(
    join(project, 'package.json'),
    JSON.stringify({
      name: 'uses-melo',
      private: true,
      type: 'module',
      dependencies: { melo: `file:../${tarball}` },
      // From a tarball (a non-registry source, named by its path) npm also lists melo's own prepare script
      // (the build, which an installed package does not need: it ships dist/); from the registry it is not
      // an install script, and this entry is not needed.
      allowScripts: { ...DEPENDENT_ALLOW_SCRIPTS, [`file:${join(dir, tarball)}`]: false },
    }),
  );
  const installed = await exec('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund'], {
    cwd: project,
    maxBuffer: 16 << 20,
  });
  // No warning of any kind: no EBADENGINE, no install-scripts notice, no unknown config.
  assert.doesNotMatch(`${installed.stdout}${installed.stderr}`, /npm warn|npm error/i);
  const shipped = await readdir(join(project, 'node_modules', 'melo'));
  assert.deepEqual(shipped.sort(), ['README.md', 'bin', 'dist', 'models', 'package.json', 'web']);

  // The command, from the compiled build (an installed package has no src/).
  const version = await exec(process.execPath, [join(project, 'node_modules', '.bin', 'melo'), '--version']);
  assert.match(version.stdout, /^\d+\.\d+\.\d+\n$/);

  // Tiny data: an ImageFolder with dark and bright 28×28 images.
  for (const [label, level] of [
    ['dark', 40],
    ['bright', 210],
  ] as const) {
    for (const split of ['train', 'test']) {
      await mkdir(join(project, 'data', split, label), { recursive: true });
      for (let i = 0; i < 4; i++) {
        await sharp(Buffer.alloc(28 * 28, level + i * 5), { raw: { width: 28, height: 28, channels: 1 } })
          .png()
          .toFile(join(project, 'data', split, label, `${i}.png`));
      }
    }
  }

  // The library's typed surface, type-checked as a user's TypeScript project would see it.
  const program = `import {
  buildApp,
  evaluateTask,
  loadBackbone,
  loadTasks,
  MELO_VERSION,
  openDataSplits,
  predictTasks,
  type Prediction,
  type TaskEvaluation,
  trainAdapter,
} from 'melo';

const backbone = await loadBackbone('node_modules/melo/models/melo-vit-tiny-fmnist');
const data = await openDataSplits('data');
const summary = await trainAdapter({ backbone, train: data.train!, outDir: 'adapters/brightness', epochs: 1, batchSize: 4, threads: 1 });
const [task] = await loadTasks(backbone, ['adapters/brightness']);
const evaluation: TaskEvaluation = await evaluateTask(backbone, task!, data.test!, { bootstrap: 10, threads: 1 });
const predictions: Prediction[] = await predictTasks(backbone, [task!], ['data/test/bright/0.png'], { threads: 1 });
const app = await buildApp({ backbone, adapters: 'adapters', watch: false, rescanMs: 0, threads: 1 });
const tasks = await app.inject({ method: 'GET', url: '/v1/tasks' });
await app.close();
console.log(JSON.stringify({
  version: MELO_VERSION,
  steps: summary.steps,
  task: evaluation.task,
  n: evaluation.rows.length,
  labels: predictions[0]!.labels,
  tasks: tasks.json(),
}));
`;
  await writeFile(join(project, 'use.ts'), program);
  await writeFile(
    join(project, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        target: 'ES2022',
        module: 'NodeNext',
        moduleResolution: 'NodeNext',
        strict: true,
        noEmit: true,
        skipLibCheck: false,
        typeRoots: [join(REPO, 'node_modules', '@types')],
        types: ['node'],
      },
      files: ['use.ts'],
    }),
  );
  await exec(process.execPath, [join(REPO, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', project]).catch(
    (error: { stdout: string }) => assert.fail(`the typed API does not type-check:\n${error.stdout}`),
  );
  // Run it as plain JavaScript (the same program with its type annotations stripped by Node's own rules
  // would need Node 22; the transpiled file is what a user's build produces).
  await exec(process.execPath, [
    join(REPO, 'node_modules', 'typescript', 'bin', 'tsc'),
    '-p',
    project,
    '--noEmit',
    'false',
    '--outDir',
    project,
  ]);
  const ran = await exec(process.execPath, ['use.js'], { cwd: project, maxBuffer: 16 << 20 });
  const result = JSON.parse(ran.stdout.trim().split('\n').pop()!);
  assert.match(result.version, /^\d+\.\d+\.\d+$/);
  assert.equal(result.steps, 2);
  assert.equal(result.task, 'brightness');
  assert.equal(result.n, 8);
  assert.deepEqual(result.labels, ['bright', 'dark']);
  assert.deepEqual(
    result.tasks.tasks.map((t: { name: string }) => t.name),
    ['brightness'],
  );
});
