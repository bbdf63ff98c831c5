/**
 * The best-configured PyTorch peer (ENGINE-NOTES.md, last section): Debian's torch multiplies through
 * OpenBLAS, which can misdetect a CPU (on a 2-core AVX-512 VNNI Xeon, 63 GFLOP/s by default, 190–250 with
 * OPENBLAS_CORETYPE=SkylakeX), and its OpenMP threads can spin against OpenBLAS's on few cores
 * (OMP_WAIT_POLICY=PASSIVE helped). Benchmarks run the peer twice in the same run, with its defaults and
 * tuned: the OpenBLAS core type whose matrix product is fastest here, then the faster OMP wait policy, each
 * found by a short probe in a fresh interpreter. The default configuration unsets both variables even when
 * the calling shell sets them (this machine's shell had OPENBLAS_CORETYPE=Haswell).
 */
import { spawnSync } from 'node:child_process';
import { cpuFlags } from './machine.ts';
import { childEnvironment } from './python.ts';
import { median } from './timing.ts';

export interface PeerConfiguration {
  /** 'default' (Debian's torch as installed) or 'tuned'. */
  readonly label: 'default' | 'tuned';
  /** Changes to this process's environment for the peer (undefined: the variable is unset). */
  readonly env: Readonly<Record<string, string | undefined>>;
}

/** The variables tuning decides: unset in the default configuration even if this shell sets them. */
const DEFAULTS: Record<string, undefined> = { OPENBLAS_CORETYPE: undefined, OMP_WAIT_POLICY: undefined };

export interface PeerTuning {
  readonly default: PeerConfiguration;
  readonly tuned: PeerConfiguration;
  /** Probe results: GFLOP/s of the ViT-B/16 fc1 product per core type, ms of a product+GELU+softmax loop per wait policy. */
  readonly probe: {
    readonly coreTypes: Readonly<Record<string, number | string>>;
    readonly waitPolicies: Readonly<Record<string, number | string>>;
  };
}

const CORE_TYPES = ['none', 'SkylakeX', 'Haswell', 'Zen'] as const;
/**
 * A forced core type runs its kernels without asking the CPU: on a CPU without AVX-512 SkylakeX's would
 * fault, and under `--isa avx2` (isa-mask.ts) they would run AVX-512 on a CPU that claims not to have it.
 */
const CORE_TYPE_NEEDS: Partial<Record<(typeof CORE_TYPES)[number], string>> = { SkylakeX: 'avx512f' };
const WAIT_POLICIES = ['ACTIVE', 'PASSIVE'] as const;

// One probe: ViT-B/16's MLP fc1 product for 4 images ([788, 768]·[768, 3072]) in float32, then a step that
// mixes products with OpenMP element-wise work (GELU, softmax), where the wait policy shows. One untimed
// run, median of 3: a few seconds on a quiet machine, and still bounded on a busy one.
const PROBE = `
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
a = torch.randn(788, 768); b = torch.randn(768, 3072)
def timed(f, n=3):
    f()
    out = []
    for _ in range(n):
        t = time.perf_counter(); f(); out.append(time.perf_counter() - t)
    out.sort(); return out[len(out) // 2]
gflops = 2 * 788 * 768 * 3072 / timed(lambda: a @ b) / 1e9
def mixed():
    y = torch.nn.functional.gelu(a @ b)
    (y @ b.t()).softmax(-1)
print(gflops, 1e3 * timed(mixed))
`;

function probe(python: string, threads: number, env: Record<string, string>): [number, number] | string {
  const run = spawnSync(python, ['-c', PROBE, String(threads)], {
    encoding: 'utf8',
    timeout: 300_000,
    env: childEnvironment({ ...DEFAULTS, ...env }),
  });
  if (run.status !== 0)
    return `failed: ${(run.stderr || run.error?.message || '').trim().split('\n').at(-1)}`;
  const [gflops, mixedMs] = run.stdout.trim().split(/\s+/).map(Number);
  return Number.isFinite(gflops) && Number.isFinite(mixedMs)
    ? [gflops!, mixedMs!]
    : `unreadable: ${run.stdout}`;
}

/**
 * Probes the core types (none = OpenBLAS's own detection), keeps the fastest product, then the wait
 * policies with it, keeping the faster mixed loop. Each probe runs `repeats` times (median); on a busy
 * machine raise it. Variables already set in this environment are the default configuration's.
 */
export function tunePytorchPeer(python: string, threads: number, repeats = 1): PeerTuning {
  const coreTypes: Record<string, number | string> = {};
  let best: { coreType: string; gflops: number } | undefined;
  const flags = cpuFlags();
  for (const coreType of CORE_TYPES) {
    const needs = CORE_TYPE_NEEDS[coreType];
    if (needs && !flags.includes(needs)) {
      coreTypes[coreType] = `skipped: the CPU shows no ${needs}`;
      continue;
    }
    const env: Record<string, string> = coreType === 'none' ? {} : { OPENBLAS_CORETYPE: coreType };
    const runs = Array.from({ length: repeats }, () => probe(python, threads, env));
    const ok = runs.filter((r): r is [number, number] => typeof r !== 'string');
    if (ok.length === 0) {
      coreTypes[coreType] = runs[0] as string;
      continue;
    }
    const gflops = median(ok.map((r) => r[0]));
    coreTypes[coreType] = gflops;
    if (!best || gflops > best.gflops) best = { coreType, gflops };
  }
  const coreEnv: Record<string, string> =
    best && best.coreType !== 'none' ? { OPENBLAS_CORETYPE: best.coreType } : {};
  const waitPolicies: Record<string, number | string> = {};
  let bestPolicy: { policy: string; ms: number } | undefined;
  for (const policy of WAIT_POLICIES) {
    const runs = Array.from({ length: repeats }, () =>
      probe(python, threads, { ...coreEnv, OMP_WAIT_POLICY: policy }),
    );
    const ok = runs.filter((r): r is [number, number] => typeof r !== 'string');
    if (ok.length === 0) {
      waitPolicies[policy] = runs[0] as string;
      continue;
    }
    const ms = median(ok.map((r) => r[1]));
    waitPolicies[policy] = ms;
    if (!bestPolicy || ms < bestPolicy.ms) bestPolicy = { policy, ms };
  }
  return {
    default: { label: 'default', env: DEFAULTS },
    tuned: {
      label: 'tuned',
      env: { ...DEFAULTS, ...coreEnv, ...(bestPolicy ? { OMP_WAIT_POLICY: bestPolicy.policy } : {}) },
    },
    probe: { coreTypes, waitPolicies },
  };
}

/** A configuration's variables for reports: unset ones as '(unset)'. */
export function describePeerEnv(configuration: PeerConfiguration): Record<string, string> {
  return Object.fromEntries(
    Object.entries(configuration.env).map(([name, value]) => [name, value ?? '(unset)']),
  );
}

/**
 * The tuned configuration is chosen by short probes in fresh interpreters, and the benchmark's own step can
 * disagree with them: OMP_WAIT_POLICY=ACTIVE won one probe on 2026-12-07 (62 against 86 ms) and lost the
 * next five (64–110 against 40–48). Every ratio is given against the tuned peer, so where it ran slower
 * than the defaults the ratio would flatter melo. A line saying so, for the bench to print and record, or
 * undefined where the tuned peer was at least as fast (every committed run up to 2026-12-08).
 */
export function tunedPeerSlower(
  what: string,
  tunedImagesPerSecond: number | undefined,
  defaultImagesPerSecond: number | undefined,
): string | undefined {
  if (tunedImagesPerSecond === undefined || defaultImagesPerSecond === undefined) return undefined;
  if (tunedImagesPerSecond >= defaultImagesPerSecond) return undefined;
  return `${what}: the tuned PyTorch (${tunedImagesPerSecond.toFixed(3)} images/s) ran slower than its defaults (${defaultImagesPerSecond.toFixed(3)}); ratios against the tuned peer overstate melo here, use the default peer's`;
}
