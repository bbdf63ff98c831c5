/**
 * A seeded mutation fuzzer for file readers. Each case takes a valid seed input, applies a few random
 * mutations (bit flips, interesting bytes and integers, truncation, duplicated or spliced chunks) and calls
 * the real reader. Accepted outcomes: a result that passes the target's own check (finite numbers, sane
 * shapes) or a MeloError (one clear line). Anything else, an exception of another type, a slow case or a
 * failed check, is a finding, reported with the case number so `MELO_FUZZ_SEED` and the index reproduce it.
 */
import { MeloError } from '../../src/errors.ts';
import { Random } from '../../src/util/random.ts';

export interface FuzzTarget {
  readonly name: string;
  readonly seeds: readonly Uint8Array[];
  /** Reads the mutated bytes with the real reader; resolves to what `check` inspects. */
  run(bytes: Uint8Array): Promise<unknown>;
  /** Throws (anything) when an accepted result is wrong: non-finite values, impossible shapes. */
  check?(result: unknown): void;
}

export interface FuzzFinding {
  readonly target: string;
  readonly index: number;
  readonly problem: string;
}

export interface FuzzStats {
  readonly cases: number;
  readonly accepted: number;
  readonly refused: number;
  readonly slowestMs: number;
  readonly findings: FuzzFinding[];
}

/** A case taking longer than this is reported as a (potential) hang. */
export const SLOW_CASE_MS = 5000;

const INTERESTING_BYTES = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x20, 0x22, 0x5b, 0x7b];
const INTERESTING_U32 = [0, 1, 0x7f, 0xff, 0x7fff, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff];

/** One to four random mutations of `seed`; deterministic for the random state. */
export function mutate(seed: Uint8Array, random: Random): Uint8Array {
  let bytes = Uint8Array.from(seed);
  const count = 1 + random.int(4);
  for (let m = 0; m < count; m++) {
    if (bytes.length === 0) bytes = Uint8Array.of(random.int(256));
    const at = random.int(bytes.length);
    switch (random.int(7)) {
      case 0: // flip a bit
        bytes[at] ^= 1 << random.int(8);
        break;
      case 1: // an interesting byte
        bytes[at] = INTERESTING_BYTES[random.int(INTERESTING_BYTES.length)]!;
        break;
      case 2: {
        // an interesting little-endian 32-bit integer (sizes, counts, offsets, lengths)
        if (at + 4 > bytes.length) break;
        const value = INTERESTING_U32[random.int(INTERESTING_U32.length)]!;
        new DataView(bytes.buffer).setUint32(at, value, true);
        break;
      }
      case 3: // truncate
        bytes = bytes.slice(0, at);
        break;
      case 4: {
        // duplicate a chunk in place
        const length = 1 + random.int(Math.min(256, bytes.length - at));
        const chunk = bytes.slice(at, at + length);
        const out = new Uint8Array(bytes.length + length);
        out.set(bytes.subarray(0, at + length));
        out.set(chunk, at + length);
        out.set(bytes.subarray(at + length), at + 2 * length);
        bytes = out;
        break;
      }
      case 5: {
        // copy a chunk from elsewhere over this position
        const from = random.int(bytes.length);
        const length = 1 + random.int(Math.min(64, bytes.length - Math.max(at, from)));
        bytes.copyWithin(at, from, from + length);
        break;
      }
      default: // a random byte
        bytes[at] = random.int(256);
    }
  }
  return bytes;
}

/** Runs `cases` mutated inputs through `target`; never throws, returns what it found. */
export async function fuzz(target: FuzzTarget, cases: number, seed: number): Promise<FuzzStats> {
  const findings: FuzzFinding[] = [];
  let accepted = 0;
  let refused = 0;
  let slowestMs = 0;
  for (let index = 0; index < cases; index++) {
    // One random stream per case, so a finding replays from (seed, target, index) alone.
    const random = new Random(seed).fork(hash(target.name)).fork(index);
    const input = mutate(target.seeds[random.int(target.seeds.length)]!, random);
    const started = performance.now();
    let problem: string | undefined;
    try {
      const result = await target.run(input);
      try {
        target.check?.(result);
        accepted++;
      } catch (error) {
        problem = `accepted with a bad result: ${String(error)}`;
      }
    } catch (error) {
      if (error instanceof MeloError) {
        refused++;
        if (error.message.includes('\n')) problem = `multi-line error: ${JSON.stringify(error.message)}`;
      } else
        problem = `crashed: ${error instanceof Error ? `${error.name}: ${error.message}` : String(error)}`;
    }
    const elapsed = performance.now() - started;
    slowestMs = Math.max(slowestMs, elapsed);
    if (elapsed > SLOW_CASE_MS) problem = `${problem ? `${problem}; ` : ''}took ${elapsed.toFixed(0)} ms`;
    if (problem !== undefined) findings.push({ target: target.name, index, problem: problem.slice(0, 300) });
  }
  return { cases, accepted, refused, slowestMs, findings };
}

function hash(text: string): number {
  let h = 2166136261;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619);
  return h >>> 0;
}

/** Throws unless every value is finite (and, with `range`, inside it). */
export function assertFiniteValues(values: ArrayLike<number>, what: string, range?: [number, number]): void {
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (!Number.isFinite(v)) throw new Error(`${what}[${i}] is ${v}`);
    if (range && (v < range[0] || v > range[1])) throw new Error(`${what}[${i}] = ${v} outside [${range}]`);
  }
}
