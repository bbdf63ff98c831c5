/**
 * Reader for NumPy `.npz` archives (`np.savez` / `np.savez_compressed`): a zip file holding one `.npy`
 * member per array. The zip directory is read here and each member inflated by Node's zlib with its output
 * capped at the size the directory declares, so the work a byte of the archive can buy is bounded:
 *
 * - a member's declared size is bounded (`maxMemberBytes`), and so is the sum over the members read
 *   (`maxTotalBytes`);
 * - a member declaring more than `ratioFloorBytes` may not expand more than `maxRatio` times its compressed
 *   size (a 1.5 MB zip of 1.5 GB of zeros took 42 s and 3.47 GB before `Maximum call stack size exceeded`);
 * - inflation stops as soon as the output passes the declared size, and a member that inflates to any other
 *   size, or whose CRC-32 differs from the directory's, is refused (a flipped byte under an intact CRC used
 *   to pass `data check`);
 * - two members with one name are refused (the last one silently won).
 *
 * fflate (used before) inflates into a buffer of the declared size but keeps decoding past its end and
 * checks no CRC, which is why the inflation is zlib's here.
 */
import { constants as bufferConstants } from 'node:buffer';
import { readFile } from 'node:fs/promises';
import { crc32, inflateRawSync } from 'node:zlib';
import { MeloError } from '../errors.ts';
import { type NpyArray, parseNpy } from './npy.ts';

export interface NpzLimits {
  /** Members in the archive (default 4096; MedMNIST files have 6). */
  readonly maxMembers: number;
  /** Declared uncompressed size of one member (default: the largest Buffer Node allows, 4 GiB). */
  readonly maxMemberBytes: number;
  /** Declared uncompressed size of all members read (default 16 GiB). */
  readonly maxTotalBytes: number;
  /** Largest expansion of a member declaring more than `ratioFloorBytes` (default 100). */
  readonly maxRatio: number;
  /** Members up to this declared size may expand without limit (default 64 MiB): all-black images do. */
  readonly ratioFloorBytes: number;
}

export const NPZ_LIMITS: NpzLimits = {
  maxMembers: 4096,
  maxMemberBytes: bufferConstants.MAX_LENGTH,
  maxTotalBytes: 16 * 1024 ** 3,
  maxRatio: 100,
  ratioFloorBytes: 64 * 1024 ** 2,
};

/**
 * Reads the arrays of an `.npz` file, keyed by name without the `.npy` suffix. `keys` restricts which
 * members are decompressed (the others are skipped without inflating them).
 */
export async function readNpz(
  path: string,
  keys?: readonly string[],
  limits: NpzLimits = NPZ_LIMITS,
): Promise<Map<string, NpyArray>> {
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(await readFile(path));
  } catch (error) {
    throw new MeloError(
      'NOT_FOUND',
      `cannot read .npz file (${(error as NodeJS.ErrnoException).code ?? error})`,
      {
        file: path,
      },
    );
  }
  return parseNpz(bytes, path, keys, limits);
}

export function parseNpz(
  bytes: Uint8Array,
  file: string,
  keys?: readonly string[],
  limits: NpzLimits = NPZ_LIMITS,
): Map<string, NpyArray> {
  const wanted = keys === undefined ? undefined : new Set(keys.map((key) => `${key}.npy`));
  const entries = readDirectory(bytes, file, limits);
  const chosen = entries.filter((entry) => entry.name.endsWith('.npy') && (wanted?.has(entry.name) ?? true));
  let total = 0;
  for (const entry of chosen) {
    checkDeclaredSize(entry, file, limits);
    total += entry.size;
    if (total > limits.maxTotalBytes) {
      throw new MeloError(
        'BAD_DATA',
        `members declare more than ${limits.maxTotalBytes} bytes in all (limit); not reading this archive`,
        { file },
      );
    }
  }
  const arrays = new Map<string, NpyArray>();
  for (const entry of chosen) {
    const member = `${file}/${entry.name}`;
    arrays.set(entry.name.slice(0, -4), parseNpy(extract(bytes, entry, member), member));
  }
  return arrays;
}

interface ZipEntry {
  readonly name: string;
  readonly method: number;
  readonly crc: number;
  readonly compressedSize: number;
  /** Declared uncompressed size. */
  readonly size: number;
  readonly localHeaderOffset: number;
}

const EOCD = 0x06054b50;
const EOCD64_LOCATOR = 0x07064b50;
const EOCD64 = 0x06064b50;
const CENTRAL = 0x02014b50;
const LOCAL = 0x04034b50;

function readDirectory(bytes: Uint8Array, file: string, limits: NpzLimits): ZipEntry[] {
  const fail = (problem: string): never => {
    throw new MeloError('BAD_DATA', `not a readable .npz (zip) archive: ${problem}`, { file });
  };
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  // The end-of-central-directory record: 22 bytes plus a comment of at most 65535.
  let end = -1;
  for (let at = bytes.length - 22; at >= Math.max(0, bytes.length - 22 - 65535); at--) {
    if (view.getUint32(at, true) === EOCD) {
      end = at;
      break;
    }
  }
  if (end < 0) fail('no end-of-central-directory record');
  let count = view.getUint16(end + 10, true);
  let directorySize = view.getUint32(end + 12, true);
  let offset = view.getUint32(end + 16, true);
  if (end >= 20 && view.getUint32(end - 20, true) === EOCD64_LOCATOR) {
    const at = safeNumber(view.getBigUint64(end - 12, true));
    if (at + 56 > bytes.length || view.getUint32(at, true) !== EOCD64) fail('bad ZIP64 end record');
    count = safeNumber(view.getBigUint64(at + 32, true));
    directorySize = safeNumber(view.getBigUint64(at + 40, true));
    offset = safeNumber(view.getBigUint64(at + 48, true));
  }
  if (count > limits.maxMembers) fail(`${count} members (at most ${limits.maxMembers})`);
  if (offset + directorySize > bytes.length) fail('the central directory runs past the end of the file');
  const entries: ZipEntry[] = [];
  const names = new Set<string>();
  for (let i = 0; i < count; i++) {
    if (offset + 46 > bytes.length || view.getUint32(offset, true) !== CENTRAL)
      fail(`central directory entry ${i} is damaged`);
    const method = view.getUint16(offset + 10, true);
    const crc = view.getUint32(offset + 16, true);
    let compressedSize = view.getUint32(offset + 20, true);
    let size = view.getUint32(offset + 24, true);
    const nameLength = view.getUint16(offset + 28, true);
    const extraLength = view.getUint16(offset + 30, true);
    const commentLength = view.getUint16(offset + 32, true);
    let localHeaderOffset = view.getUint32(offset + 42, true);
    const next = offset + 46 + nameLength + extraLength + commentLength;
    if (next > bytes.length) fail(`central directory entry ${i} runs past the end of the file`);
    const name = new TextDecoder().decode(bytes.subarray(offset + 46, offset + 46 + nameLength));
    // ZIP64: fields set to 0xFFFFFFFF are in extra field 0x0001, in this order (NumPy writes these).
    let extra = offset + 46 + nameLength;
    const extraEnd = extra + extraLength;
    while (extra + 4 <= extraEnd) {
      const id = view.getUint16(extra, true);
      const length = view.getUint16(extra + 2, true);
      if (id === 0x0001) {
        let field = extra + 4;
        const take = (): number => {
          if (field + 8 > extra + 4 + length) fail(`ZIP64 field of '${name}' is too short`);
          const value = safeNumber(view.getBigUint64(field, true));
          field += 8;
          return value;
        };
        if (size === 0xffffffff) size = take();
        if (compressedSize === 0xffffffff) compressedSize = take();
        if (localHeaderOffset === 0xffffffff) localHeaderOffset = take();
      }
      extra += 4 + length;
    }
    if (names.has(name)) fail(`two members are named '${name}'`);
    names.add(name);
    entries.push({ name, method, crc, compressedSize, size, localHeaderOffset });
    offset = next;
  }
  return entries;
}

function checkDeclaredSize(entry: ZipEntry, file: string, limits: NpzLimits): void {
  const fail = (problem: string): never => {
    throw new MeloError('BAD_DATA', `member '${entry.name}' ${problem}`, { file });
  };
  if (entry.size > limits.maxMemberBytes)
    fail(`declares ${entry.size} bytes uncompressed (at most ${limits.maxMemberBytes})`);
  if (
    entry.size > limits.ratioFloorBytes &&
    entry.size > limits.maxRatio * Math.max(1, entry.compressedSize)
  ) {
    fail(
      `declares ${entry.size} bytes from ${entry.compressedSize} compressed (${Math.round(entry.size / Math.max(1, entry.compressedSize))}x; at most ${limits.maxRatio}x for members over ${limits.ratioFloorBytes} bytes): a decompression bomb?`,
    );
  }
}

function extract(bytes: Uint8Array, entry: ZipEntry, member: string): Uint8Array {
  const fail = (problem: string): never => {
    throw new MeloError('BAD_DATA', problem, { file: member });
  };
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const at = entry.localHeaderOffset;
  if (at + 30 > bytes.length || view.getUint32(at, true) !== LOCAL) fail('local header is damaged');
  const start = at + 30 + view.getUint16(at + 26, true) + view.getUint16(at + 28, true);
  if (start + entry.compressedSize > bytes.length) fail('compressed data runs past the end of the file');
  const compressed = bytes.subarray(start, start + entry.compressedSize);
  let data: Uint8Array;
  if (entry.method === 0) data = compressed;
  else if (entry.method === 8) {
    try {
      // One byte more than declared is enough to know the member lies; zlib stops there.
      data = inflateRawSync(compressed, { maxOutputLength: Math.max(1, entry.size + 1) });
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ERR_BUFFER_TOO_LARGE') fail(`inflates to more than the ${entry.size} bytes it declares`);
      return fail(`cannot be inflated (${(error as Error).message.split('\n')[0]})`);
    }
  } else return fail(`uses zip compression method ${entry.method} (only stored and deflate are supported)`);
  if (data.length !== entry.size) fail(`holds ${data.length} bytes but declares ${entry.size}`);
  const crc = crc32(data) >>> 0;
  if (crc !== entry.crc)
    fail(`CRC-32 ${hex(crc)} differs from the archive's ${hex(entry.crc)}: the member is damaged`);
  return data;
}

function safeNumber(value: bigint): number {
  return value > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(value);
}

function hex(value: number): string {
  return value.toString(16).padStart(8, '0');
}
