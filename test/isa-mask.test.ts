import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  activeIsaMask,
  buildIsaMaskLibrary,
  isaMaskEnvironment,
  parseIsaLevel,
  visibleCpuFlags,
} from '../bench/lib/isa-mask.ts';

test('--isa takes native or avx2 and names the choices otherwise', () => {
  assert.equal(parseIsaLevel('avx2'), 'avx2');
  assert.equal(parseIsaLevel('native'), 'native');
  assert.throws(() => parseIsaLevel('avx512'), /--isa expects one of native, avx2, got 'avx512'/);
});

test('the AVX2 mask hides AVX-512, AVX-VNNI and AMX from the recorded flags, and only when the shim says it is on', () => {
  const flags = ['avx2', 'fma', 'avx512f', 'avx512bw', 'avx512_vnni', 'avx_vnni', 'avx512_bf16', 'amx_int8'];
  assert.deepEqual(visibleCpuFlags(flags, 'avx2'), ['avx2', 'fma']);
  assert.deepEqual(visibleCpuFlags(flags, 'native'), flags);
  // The variable is set by the shim's constructor after CPUID faulting is on, not by the caller.
  assert.equal(activeIsaMask({ MELO_ISA_MASK_ACTIVE: 'avx2' }), 'avx2');
  assert.equal(activeIsaMask({ LD_PRELOAD: '/tmp/x.so' }), 'native');
});

test('the mask environment adds the shim and glibc’s own mask to whatever the caller preloads and tunes', () => {
  const env = isaMaskEnvironment('/cache/avx2-only.so', {
    LD_PRELOAD: '/usr/lib/libjemalloc.so',
    GLIBC_TUNABLES: 'glibc.malloc.arena_max=2',
    HOME: '/home/u',
  });
  assert.equal(env.LD_PRELOAD, '/cache/avx2-only.so:/usr/lib/libjemalloc.so');
  assert.match(env.GLIBC_TUNABLES!, /^glibc\.malloc\.arena_max=2:glibc\.cpu\.hwcaps=-AVX512F,.*-AVX_VNNI$/);
  assert.equal(env.HOME, '/home/u');
});

test('a shim that cannot be built stops the bench with one line naming the source and the compiler', async () => {
  const { mkdtemp, rm } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const cacheDir = await mkdtemp(join(tmpdir(), 'melo-isa-'));
  const compiler = process.env.CC;
  process.env.CC = 'false';
  try {
    assert.throws(
      () => buildIsaMaskLibrary(cacheDir),
      (error: Error) =>
        /^--isa avx2: cannot build .*avx2-only\.c with false: exit 1$/.test(error.message) &&
        !error.message.includes('\n'),
    );
  } finally {
    if (compiler === undefined) delete process.env.CC;
    else process.env.CC = compiler;
    await rm(cacheDir, { recursive: true, force: true });
  }
});
