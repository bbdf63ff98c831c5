/**
 * Files from strangers: adapters, backbones, archives and datasets built to hang, crash or quietly corrupt
 * melo. Every case is built here from bytes (nothing large is committed) and must fail with one clear line,
 * quickly, or be handled correctly.
 */
import assert from 'node:assert/strict';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { MeloError } from '../src/errors.ts';
import { loadAdapter, targetsFromField } from '../src/io/peft.ts';
import { runCli } from './helpers/cli.ts';

const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;
const ADAPTER = join(FIXTURES, 'lora_adapter');
let dir = '';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-hostile-'));
});
after(() => rm(dir, { recursive: true, force: true }));

/** A copy of the fixture adapter with its adapter_config.json changed by `edit`. */
async function adapterWithConfig(
  name: string,
  edit: (config: Record<string, unknown>) => void,
): Promise<string> {
  const target = join(dir, name);
  await cp(ADAPTER, target, { recursive: true });
  const configPath = join(target, 'adapter_config.json');
  const config = JSON.parse(await readFile(configPath, 'utf8')) as Record<string, unknown>;
  edit(config);
  await writeFile(configPath, JSON.stringify(config));
  return target;
}

const CONFIG = '/x/adapter_config.json';

// ---------------------------------------------------------------------------------------------------------
// 1. target_modules patterns

test('target_modules: a catastrophic-backtracking pattern answers at once with PEFT full-match semantics', async () => {
  const pattern = '(([a-z.0-9_])+)+Z|.*\\.(query|value)';
  // RegExp needs exponential time on the module names (it hung `melo adapter inspect` for ever).
  const started = performance.now();
  assert.deepEqual(targetsFromField(pattern, CONFIG), ['query', 'value']);
  assert.ok(performance.now() - started < 1000);

  // The real command in a child process, with a kill timer: it must answer, not hang.
  const hostile = await adapterWithConfig('redos', (config) => {
    config.target_modules = pattern;
  });
  const result = await runCli(['adapter', 'inspect', hostile, '--json'], { timeoutMs: 60_000 });
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /query/);
});

test('target_modules: PEFT semantics (string = full match, list = suffix match)', () => {
  assert.deepEqual(targetsFromField('.*\\.(query|value)', CONFIG), ['query', 'value']);
  // A string is matched against the whole module path: a bare name matches nothing.
  assert.deepEqual(targetsFromField('query', CONFIG), []);
  assert.deepEqual(targetsFromField('.*attention\\.(query|key|value)', CONFIG), ['query', 'key', 'value']);
  assert.deepEqual(
    targetsFromField('.*\\.encoder\\.layer\\.\\d+\\.(intermediate\\.dense|output\\.dense)', CONFIG),
    ['fc1', 'fc2'],
  );
  // Full match, not search: a pattern matching only a prefix of the path does not select it.
  assert.deepEqual(targetsFromField('vit\\.encoder', CONFIG), []);
  // A list is matched as suffixes at module-name boundaries.
  assert.deepEqual(targetsFromField(['query', 'value'], CONFIG), ['query', 'value']);
  assert.deepEqual(targetsFromField(['dense'], CONFIG), ['output', 'fc1', 'fc2']);
  assert.deepEqual(targetsFromField(['output.dense'], CONFIG), ['output', 'fc2']);
  assert.deepEqual(targetsFromField(['uery'], CONFIG), []);
});

test('target_modules: patterns RE2 cannot run in linear time, or absurdly long, are refused with one line', () => {
  for (const pattern of ['(query)\\1', '.*(?=query)query', '.*(?<!key)value']) {
    assert.throws(
      () => targetsFromField(pattern, CONFIG),
      (error: unknown) =>
        error instanceof MeloError &&
        error.code === 'BAD_ADAPTER' &&
        error.message.startsWith(`${CONFIG}: target_modules is not a regular expression melo can match`) &&
        !error.message.includes('\n'),
    );
  }
  assert.throws(
    () => targetsFromField(`.*${'a?'.repeat(5000)}`, CONFIG),
    /target_modules pattern is 10002 characters long \(at most 4096\)/,
  );
  assert.throws(() => targetsFromField(42, CONFIG), /target_modules must be a list/);
});

test('loadAdapter reads an adapter whose target_modules is a PEFT regular expression', async () => {
  const path = await adapterWithConfig('regex', (config) => {
    config.target_modules = '.*\\.encoder\\.layer\\.\\d+\\.attention\\.attention\\.(query|value)';
  });
  const adapter = await loadAdapter(path);
  assert.deepEqual(adapter.lora.targets, ['query', 'value']);
  assert.equal(adapter.pairs.size, 4);
});
