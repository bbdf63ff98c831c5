import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism, cpus, platform, totalmem } from 'node:os';
import { int8ProductsSaturate } from '../../src/runtime/int8-kernels.ts';
import { activeIsaMask, type IsaLevel, visibleCpuFlags } from './isa-mask.ts';

/** What a benchmark ran on, recorded next to its numbers so that results from different machines are not compared blindly. */
export interface MachineInfo {
  readonly cpuModel: string;
  /**
   * The instruction-set flags that decide matrix-product speed (from /proc/cpuinfo): AVX-512 VNNI or
   * AVX-VNNI multiply int8 several times faster than fp32; AVX2 alone less so.
   */
  readonly cpuFlags: readonly string[];
  /**
   * 'avx2' when the bench ran with `--isa avx2`: CPUID hid the AVX-512/VNNI/AMX flags above (cpuFlags lists
   * what the programs saw; hardwareCpuFlags what the CPU has).
   */
  readonly isaMask: IsaLevel;
  readonly hardwareCpuFlags: readonly string[];
  readonly cores: number;
  readonly memoryBytes: number;
  readonly platform: string;
  readonly node: string;
  readonly onnxruntimeNode: string;
  /** 1-minute load average when the run started: other work on a 2-core machine skews every number. */
  readonly loadAverageAtStart: number;
  /** Scheduling priority of this process's group (Linux autogroup), e.g. '/autogroup-12 nice -19'. */
  readonly schedulerGroup: string | null;
  /** Thread-pool variables that change how BLAS/OpenMP peers run (OMP_*, OPENBLAS_*, MKL_*, MELO_*). */
  readonly threadEnvironment: Record<string, string>;
}

export function machineInfo(): MachineInfo {
  return {
    cpuModel: cpuModel(),
    cpuFlags: cpuFlags(),
    isaMask: activeIsaMask(),
    hardwareCpuFlags: hardwareCpuFlags(),
    cores: availableParallelism(),
    memoryBytes: totalmem(),
    platform: `${platform()} ${process.arch}`,
    node: process.versions.node,
    onnxruntimeNode: packageVersion('onnxruntime-node'),
    loadAverageAtStart: loadAverage(),
    schedulerGroup: readTrimmed('/proc/self/autogroup'),
    threadEnvironment: Object.fromEntries(
      Object.entries(process.env).filter(
        (entry): entry is [string, string] =>
          /^(OMP_|OPENBLAS_|MKL_|GOMP_|MELO_)/.test(entry[0]) && entry[1] !== undefined,
      ),
    ),
  };
}

function readTrimmed(path: string): string | null {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return null;
  }
}

export function loadAverage(): number {
  try {
    return Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
  } catch {
    return Number.NaN;
  }
}

/** The whole machine's CPU time by state, in clock ticks, from the `cpu` line of /proc/stat. */
export interface CpuTimes {
  /** user + nice + system + idle + iowait + irq + softirq + steal (guest time is already in user and nice). */
  readonly total: number;
  /** Time the hypervisor ran other guests while this one had work: what a shared host takes from a bench. */
  readonly steal: number;
}

/** Parses /proc/stat's aggregate `cpu` line; null if it is missing or malformed (not Linux, old kernels). */
export function parseCpuTimes(procStat: string): CpuTimes | null {
  const match = /^cpu\s+(.+)$/m.exec(procStat);
  const fields = match?.[1]?.trim().split(/\s+/).slice(0, 8).map(Number) ?? [];
  if (fields.length < 8 || fields.some((value) => !Number.isSafeInteger(value) || value < 0)) return null;
  return { total: fields.reduce((a, b) => a + b, 0), steal: fields[7]! };
}

export function readCpuTimes(): CpuTimes | null {
  const text = readTrimmed('/proc/stat');
  return text === null ? null : parseCpuTimes(text);
}

/** The share of all CPU time between two readings that was stolen; null when no time passed. */
export function stealShare(start: CpuTimes, end: CpuTimes): number | null {
  const elapsed = end.total - start.total;
  return elapsed > 0 ? (end.steal - start.steal) / elapsed : null;
}

// Read when the bench process loads this module, before it measures anything.
const cpuTimesAtStart = readCpuTimes();

/**
 * The share of the machine's CPU time stolen by the hypervisor since this bench process started, or null
 * where /proc/stat is unreadable. On a shared virtual machine the load average does not show it: on the
 * 2-core EPYC of docs/benchmarks.md, `vmstat 5` showed 6–14% steal while a training step ran at load 2–4.
 */
export function cpuStealSinceStart(): number | null {
  const now = readCpuTimes();
  return cpuTimesAtStart && now ? stealShare(cpuTimesAtStart, now) : null;
}

const REPORTED_FLAGS = [
  'avx2',
  'fma',
  'avx512f',
  'avx512bw',
  'avx512_vnni',
  'avx_vnni',
  'avx512_bf16',
  'amx_int8',
];

/** The reported flags as the programs of this process see them through CPUID (see isa-mask.ts). */
export function cpuFlags(): string[] {
  return visibleCpuFlags(hardwareCpuFlags());
}

function hardwareCpuFlags(): string[] {
  const match = /^flags\s*:\s*(.+)$/m.exec(readTrimmed('/proc/cpuinfo') ?? '');
  const present = new Set(match?.[1]?.split(/\s+/) ?? []);
  return REPORTED_FLAGS.filter((flag) => present.has(flag));
}

function cpuModel(): string {
  // /proc/cpuinfo also names CPUs that os.cpus() reports only as a vendor string under some hypervisors.
  try {
    const match = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (match?.[1]) return match[1].trim();
  } catch {
    // not Linux: fall through to os.cpus()
  }
  return cpus()[0]?.model ?? 'unknown';
}

function packageVersion(name: string): string {
  const require = createRequire(import.meta.url);
  return (require(`${name}/package.json`) as { version: string }).version;
}

/**
 * How melo's int8 graphs on the full grid (inference, full fine-tuning) write their weights on this machine
 * (src/runtime/int8-kernels.ts): 'int8' where ONNX Runtime's u8·s8 product is exact (VNNI), 'uint8+128'
 * where it saturates (AVX2 without VNNI; training through a frozen backbone then uses a grid whose pairs
 * fit and stays 'int8').
 */
export async function int8WeightEncoding(): Promise<'int8' | 'uint8+128'> {
  return (await int8ProductsSaturate()) ? 'uint8+128' : 'int8';
}
