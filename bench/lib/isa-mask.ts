/**
 * `--isa avx2` for the benches: reruns the bench with the CPU's AVX-512, AVX-VNNI and AMX hidden from CPUID
 * (isa-mask/avx2-only.c, an LD_PRELOAD shim built here with the system C compiler), so that ONNX Runtime,
 * OpenBLAS and PyTorch all choose the AVX2 kernels they would choose on an AVX2-only CPU, and run them
 * natively. This is how the AVX2-only targets are measured on a machine that has AVX-512: the same kernels
 * and instruction widths as an AVX2-only CPU, not the same core (a Zen 3 or Haswell has other caches,
 * clocks and port counts), so results say `isaMask: 'avx2'` next to the real CPU's model and flags.
 *
 * The variables reach every child (melo's workers, the PyTorch peer): LD_PRELOAD loads the shim again
 * after each execve, and GLIBC_TUNABLES masks glibc's own string functions, which the dynamic loader
 * chooses before any preloaded library runs.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ISA_LEVELS = ['native', 'avx2'] as const;
export type IsaLevel = (typeof ISA_LEVELS)[number];

/** Set in the masked process by the shim itself once CPUID faulting is on, so it cannot be faked by the caller. */
const ACTIVE_VARIABLE = 'MELO_ISA_MASK_ACTIVE';

/** The flags (as /proc/cpuinfo names them) that an AVX2-only CPU lacks: what the shim clears. */
const HIDDEN_BY_AVX2_MASK = /^(avx512|avx_vnni|avx_ifma|avx_ne_convert|amx|avx10)/;

const GLIBC_MASK =
  'glibc.cpu.hwcaps=-AVX512F,-AVX512CD,-AVX512BW,-AVX512DQ,-AVX512ER,-AVX512PF,-AVX512VL,-AVX_VNNI';

const source = join(dirname(fileURLToPath(import.meta.url)), 'isa-mask', 'avx2-only.c');

export function parseIsaLevel(text: string): IsaLevel {
  const level = ISA_LEVELS.find((candidate) => candidate === text);
  if (!level) throw new Error(`--isa expects one of ${ISA_LEVELS.join(', ')}, got '${text}'`);
  return level;
}

/** The ISA mask this process runs under: 'avx2' only when the shim is loaded and CPUID faulting is on. */
export function activeIsaMask(env: NodeJS.ProcessEnv = process.env): IsaLevel {
  return env[ACTIVE_VARIABLE] === 'avx2' ? 'avx2' : 'native';
}

/** /proc/cpuinfo's flags as the programs in this process see them through CPUID. */
export function visibleCpuFlags(flags: readonly string[], mask: IsaLevel = activeIsaMask()): string[] {
  return mask === 'avx2' ? flags.filter((flag) => !HIDDEN_BY_AVX2_MASK.test(flag)) : [...flags];
}

/**
 * Builds the shim (once per source version, into the temp directory) and returns its path. Fails with
 * one line when there is no C compiler or it refuses the source.
 */
export function buildIsaMaskLibrary(cacheDir: string = join(tmpdir(), 'melo-isa-mask')): string {
  const text = readFileSync(source);
  const digest = createHash('sha256').update(text).digest('hex').slice(0, 16);
  const library = join(cacheDir, `avx2-only-${digest}.so`);
  if (existsSync(library)) return library;
  mkdirSync(cacheDir, { recursive: true });
  const partial = `${library}.${process.pid}.tmp`;
  const compiler = process.env.CC ?? 'cc';
  const build = spawnSync(compiler, ['-O2', '-shared', '-fPIC', '-o', partial, source, '-ldl'], {
    encoding: 'utf8',
  });
  if (build.error || build.status !== 0) {
    const why = build.error?.message || build.stderr.trim().split('\n')[0] || `exit ${build.status}`;
    throw new Error(`--isa avx2: cannot build ${source} with ${compiler}: ${why}`);
  }
  renameSync(partial, library);
  return library;
}

/** Environment variables that run a child process under the AVX2 mask. */
export function isaMaskEnvironment(library: string, env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const preload = [library, env.LD_PRELOAD].filter((part): part is string => !!part).join(':');
  const tunables = [env.GLIBC_TUNABLES, GLIBC_MASK].filter((part): part is string => !!part).join(':');
  return { ...env, LD_PRELOAD: preload, GLIBC_TUNABLES: tunables };
}

/**
 * For a bench's `--isa`: returns when this process already runs under the level asked for; otherwise
 * reruns the same command under the mask, waits for it, and exits with its status.
 */
export function runUnderIsa(level: IsaLevel): void {
  if (level === activeIsaMask()) return;
  if (level === 'native') {
    throw new Error(
      '--isa native: this process runs under the avx2 mask; unset LD_PRELOAD to measure natively',
    );
  }
  const library = buildIsaMaskLibrary();
  const rerun = spawnSync(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    stdio: 'inherit',
    env: isaMaskEnvironment(library),
  });
  if (rerun.error) throw new Error(`--isa avx2: cannot rerun the bench: ${rerun.error.message}`);
  process.exit(rerun.status ?? 1);
}
