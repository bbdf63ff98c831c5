/**
 * The safetensors format, read and written without trusting the file.
 *
 * Layout: an 8-byte little-endian unsigned header length N, N bytes of UTF-8 JSON (padded with spaces),
 * then the data section. The JSON maps each tensor name to {dtype, shape, data_offsets: [begin, end]}
 * (offsets relative to the data section), plus an optional "__metadata__" string→string map.
 *
 * Reading: every tensor is converted to float32, because melo's host tensors are float32.
 *  - F32 is exact; F16 and BF16 widen exactly; F64 rounds to nearest float32.
 *  - Integer dtypes (U8, I8, U16, I16, U32, I32, U64, I64) become the nearest float32: exact up to 2^24 in
 *    magnitude. I64/U64 go through a double first, so beyond 2^53 they can be one float32 step off.
 *  - BOOL bytes must be 0 or 1 and become 0 or 1.
 *  - FP8/FP6/FP4 and complex dtypes are recognised but refused.
 * Validation follows the reference implementation: besides per-tensor checks, the tensors' byte ranges,
 * sorted by offset, must tile the data section exactly, with no overlap, no gap and no trailing bytes.
 *
 * Writing follows the reference writer byte for byte: "__metadata__" first (when there is any), then the
 * tensors in the order of their data, which is by name compared as UTF-8 bytes (all tensors share one dtype,
 * so the reference's dtype-first ordering does not come into play); compact JSON; header padded with
 * spaces to a multiple of 8. The reference writes metadata keys in hash order; we sort them by UTF-8 bytes.
 */

import { type FileHandle, open, readFile, stat } from 'node:fs/promises';
import { endianness } from 'node:os';
import { dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { MeloError, shortText } from '../errors.ts';
import { writeFileAtomic } from '../io/atomic.ts';
import { type HostTensor, hostTensor } from '../tensor.ts';

/** Dtypes melo can read (all converted to float32). */
export type SafetensorsDtype =
  | 'BOOL'
  | 'U8'
  | 'I8'
  | 'U16'
  | 'I16'
  | 'F16'
  | 'BF16'
  | 'U32'
  | 'I32'
  | 'F32'
  | 'U64'
  | 'I64'
  | 'F64';

/** Dtypes melo can write. */
export type SafetensorsWriteDtype = 'F32' | 'F16' | 'BF16';

/** One tensor's entry in a validated header. */
export interface SafetensorsTensorInfo {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
  /** Byte range [begin, end) relative to the start of the data section. */
  readonly dataOffsets: readonly [number, number];
}

/** A validated header, read without loading any tensor data. */
export interface SafetensorsHeader {
  readonly path: string;
  readonly fileSize: number;
  /** N, the JSON header's length in bytes (including padding). */
  readonly headerLength: number;
  /** Absolute file offset of the data section: 8 + N. */
  readonly dataStart: number;
  /** Tensors in the order of their data. */
  readonly tensors: Map<string, SafetensorsTensorInfo>;
  readonly metadata: Record<string, string>;
}

export interface SafetensorsFile {
  path: string;
  /** float32 tensors, in the order of their data in the file. */
  tensors: Map<string, HostTensor>;
  /** The dtype each tensor had on disk. */
  dtypes: Map<string, SafetensorsDtype>;
  metadata: Record<string, string>;
}

/** A checkpoint that may be split over several shard files. `path` is the directory or index file read. */
export interface SafetensorsCheckpoint extends SafetensorsFile {
  /** The files actually read, in the order they were read. */
  shards: string[];
}

export interface SafetensorsWriteOptions {
  /** Dtype of every tensor on disk; float32 values are rounded to nearest, ties to even. Default F32. */
  dtype?: SafetensorsWriteDtype;
  metadata?: Record<string, string>;
}

export type SafetensorsTensors = Map<string, HostTensor> | Record<string, HostTensor>;

/** The reference implementation refuses larger headers; so do we, before allocating anything. */
export const SAFETENSORS_MAX_HEADER_BYTES = 100_000_000;

export interface SafetensorsReadOptions {
  /**
   * Refuse a header longer than this before reading it (default SAFETENSORS_MAX_HEADER_BYTES). Readers that
   * know which tensors to expect pass what those need: a million-name adapter header took 9.8 s to parse.
   */
  readonly maxHeaderBytes?: number;
}

export const SAFETENSORS_SINGLE_FILE = 'model.safetensors';
export const SAFETENSORS_INDEX_FILE = 'model.safetensors.index.json';

const DTYPE_BYTES: Readonly<Record<SafetensorsDtype, number>> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  U16: 2,
  I16: 2,
  F16: 2,
  BF16: 2,
  U32: 4,
  I32: 4,
  F32: 4,
  U64: 8,
  I64: 8,
  F64: 8,
};

const REFUSED_DTYPES = new Set(['F8_E5M2', 'F8_E4M3', 'F8_E8M0', 'E8M0', 'F6_E2M3', 'F6_E3M2', 'F4', 'C64']);

const METADATA_KEY = '__metadata__';

/** NumPy's own limit is 64; a crafted shape of a million dimensions would otherwise fill error messages. */
const MAX_DIMENSIONS = 64;

// ---------------------------------------------------------------------------------------------------------
// Reading

/** Reads and validates the header of a safetensors file; loads no tensor data. */
export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  const handle = await openForReading(path);
  try {
    return await readHeaderFrom(handle, path);
  } finally {
    await handle.close();
  }
}

/**
 * Reads a whole safetensors file as float32 tensors. The header is read first, then each tensor's byte range
 * with a positioned read, so the file is never held in memory next to the converted tensors.
 */
export async function readSafetensors(
  path: string,
  options: SafetensorsReadOptions = {},
): Promise<SafetensorsFile> {
  assertLittleEndianHost();
  const handle = await openForReading(path);
  try {
    const header = await readHeaderFrom(handle, path, options.maxHeaderBytes);
    const tensors = new Map<string, HostTensor>();
    const dtypes = new Map<string, SafetensorsDtype>();
    for (const info of header.tensors.values()) {
      const [begin, end] = info.dataOffsets;
      // Fresh, aligned storage per tensor; for F32 it becomes the tensor's own storage.
      const storage = new ArrayBuffer(end - begin);
      await readExactly(handle, new Uint8Array(storage), header.dataStart + begin, path);
      tensors.set(info.name, hostTensor(info.shape, decodeTensorData(storage, info, path)));
      dtypes.set(info.name, info.dtype);
    }
    return { path, tensors, dtypes, metadata: header.metadata };
  } finally {
    await handle.close();
  }
}

/** Decodes safetensors bytes already in memory; `name` stands for the file in error messages. */
export function decodeSafetensors(bytes: Uint8Array, name = '<memory>'): SafetensorsFile {
  assertLittleEndianHost();
  const headerLength = headerLengthOf(bytes.subarray(0, 8), bytes.byteLength, name);
  const header = parseHeader(name, bytes.byteLength, headerLength, bytes.subarray(8, 8 + headerLength));
  const tensors = new Map<string, HostTensor>();
  const dtypes = new Map<string, SafetensorsDtype>();
  for (const info of header.tensors.values()) {
    const [begin, end] = info.dataOffsets;
    const storage = bytes.slice(header.dataStart + begin, header.dataStart + end).buffer;
    tensors.set(info.name, hostTensor(info.shape, decodeTensorData(storage, info, name)));
    dtypes.set(info.name, info.dtype);
  }
  return { path: name, tensors, dtypes, metadata: header.metadata };
}

/**
 * Reads a checkpoint directory: `model.safetensors.index.json` (a `weight_map` from tensor name to shard file)
 * when present, else `model.safetensors`. With an index, every mapped tensor must be in its shard, and no
 * shard may hold a tensor the index puts elsewhere or does not list. Shards' metadata are merged; the first
 * shard to set a key wins.
 */
export async function readSafetensorsDir(dir: string): Promise<SafetensorsCheckpoint> {
  const indexPath = join(dir, SAFETENSORS_INDEX_FILE);
  if (await isFile(indexPath)) return readShardedCheckpoint(indexPath);
  const singlePath = join(dir, SAFETENSORS_SINGLE_FILE);
  if (await isFile(singlePath)) {
    const file = await readSafetensors(singlePath);
    return { ...file, path: dir, shards: [singlePath] };
  }
  throw new MeloError(
    'NOT_FOUND',
    `no ${SAFETENSORS_INDEX_FILE} or ${SAFETENSORS_SINGLE_FILE} in the directory`,
    {
      file: dir,
    },
  );
}

/**
 * Reads checkpoint tensors from a directory (see readSafetensorsDir), a shard index (`*.index.json`) or a
 * single `.safetensors` file.
 */
export async function readCheckpointTensors(path: string): Promise<SafetensorsCheckpoint> {
  const info = await stat(path).catch(() => undefined);
  if (info === undefined) throw new MeloError('NOT_FOUND', 'no such file or directory', { file: path });
  if (info.isDirectory()) return readSafetensorsDir(path);
  if (path.endsWith('.json')) return readShardedCheckpoint(path);
  const file = await readSafetensors(path);
  return { ...file, shards: [path] };
}

async function readShardedCheckpoint(indexPath: string): Promise<SafetensorsCheckpoint> {
  const weightMap = await readWeightMap(indexPath);
  const directory = dirname(indexPath);
  const byShard = new Map<string, string[]>();
  for (const [name, shard] of weightMap) {
    const names = byShard.get(shard) ?? [];
    names.push(name);
    byShard.set(shard, names);
  }
  const tensors = new Map<string, HostTensor>();
  const dtypes = new Map<string, SafetensorsDtype>();
  const metadata: Record<string, string> = {};
  const shards: string[] = [];
  for (const [shard, names] of byShard) {
    const shardPath = join(directory, shard);
    if (!(await isFile(shardPath))) {
      throw new MeloError('BAD_SAFETENSORS', `shard '${shard}' listed in the weight_map does not exist`, {
        file: indexPath,
      });
    }
    const file = await readSafetensors(shardPath);
    shards.push(shardPath);
    for (const name of names) {
      if (!file.tensors.has(name)) {
        throw new MeloError(
          'BAD_SAFETENSORS',
          `tensor '${name}' is mapped to shard '${shard}' but is not in it`,
          {
            file: indexPath,
          },
        );
      }
    }
    for (const [name, tensor] of file.tensors) {
      const mapped = weightMap.get(name);
      if (mapped === undefined) {
        throw new MeloError(
          'BAD_SAFETENSORS',
          `shard '${shard}' holds tensor '${name}', which the weight_map omits`,
          {
            file: indexPath,
          },
        );
      }
      if (mapped !== shard) {
        throw new MeloError(
          'BAD_SAFETENSORS',
          `tensor '${name}' is duplicated: shard '${shard}' holds it but the weight_map puts it in '${mapped}'`,
          { file: indexPath },
        );
      }
      tensors.set(name, tensor);
      dtypes.set(name, file.dtypes.get(name)!);
    }
    for (const [key, value] of Object.entries(file.metadata)) {
      if (!Object.hasOwn(metadata, key)) Object.defineProperty(metadata, key, { value, enumerable: true });
    }
  }
  return { path: indexPath, tensors, dtypes, metadata, shards };
}

async function readWeightMap(indexPath: string): Promise<Map<string, string>> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(indexPath, 'utf8'));
  } catch (error) {
    throw new MeloError('BAD_SAFETENSORS', `shard index is not valid JSON (${firstLine(error)})`, {
      file: indexPath,
      cause: error,
    });
  }
  const weightMap = isPlainObject(parsed) ? parsed.weight_map : undefined;
  if (!isPlainObject(weightMap)) {
    throw new MeloError('BAD_SAFETENSORS', 'shard index has no "weight_map" object', { file: indexPath });
  }
  const directory = resolve(dirname(indexPath));
  const result = new Map<string, string>();
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string' || shard === '') {
      throw new MeloError('BAD_SAFETENSORS', `weight_map entry '${name}' is not a file name`, {
        file: indexPath,
      });
    }
    // A shard must sit inside the checkpoint directory: an index must not point at arbitrary files.
    const inside = relative(directory, resolve(directory, shard));
    if (isAbsolute(shard) || inside === '' || inside.startsWith('..') || isAbsolute(inside)) {
      throw new MeloError(
        'BAD_SAFETENSORS',
        `weight_map entry '${name}' points outside the directory: '${shard}'`,
        {
          file: indexPath,
        },
      );
    }
    result.set(name, shard);
  }
  if (result.size === 0) throw new MeloError('BAD_SAFETENSORS', 'weight_map is empty', { file: indexPath });
  return result;
}

async function openForReading(path: string): Promise<FileHandle> {
  try {
    return await open(path, 'r');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new MeloError('NOT_FOUND', 'no such file', { file: path, cause: error });
    throw new MeloError('BAD_SAFETENSORS', `cannot open (${code ?? firstLine(error)})`, {
      file: path,
      cause: error,
    });
  }
}

async function readHeaderFrom(
  handle: FileHandle,
  path: string,
  maxHeaderBytes = SAFETENSORS_MAX_HEADER_BYTES,
): Promise<SafetensorsHeader> {
  const { size, isFile: regular } = await handle.stat().then((s) => ({ size: s.size, isFile: s.isFile() }));
  if (!regular) throw new MeloError('BAD_SAFETENSORS', 'not a regular file', { file: path });
  const prefix = new Uint8Array(Math.min(8, size));
  await readExactly(handle, prefix, 0, path);
  const headerLength = headerLengthOf(prefix, size, path, maxHeaderBytes);
  const headerBytes = new Uint8Array(headerLength);
  await readExactly(handle, headerBytes, 8, path);
  return parseHeader(path, size, headerLength, headerBytes);
}

async function readExactly(
  handle: FileHandle,
  target: Uint8Array,
  position: number,
  file: string,
): Promise<void> {
  let done = 0;
  while (done < target.byteLength) {
    // One read call is limited to 2 GiB; large tensors are read in pieces.
    const length = Math.min(target.byteLength - done, 1 << 30);
    const { bytesRead } = await handle.read(target, done, length, position + done);
    if (bytesRead === 0) {
      throw new MeloError('BAD_SAFETENSORS', 'file ended early (was it changed while being read?)', { file });
    }
    done += bytesRead;
  }
}

function headerLengthOf(
  prefix: Uint8Array,
  fileSize: number,
  file: string,
  maxHeaderBytes = SAFETENSORS_MAX_HEADER_BYTES,
): number {
  if (fileSize < 8) {
    throw new MeloError(
      'BAD_SAFETENSORS',
      `file is ${fileSize} bytes, too short for the 8-byte header length`,
      {
        file,
      },
    );
  }
  const length = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (length > BigInt(maxHeaderBytes)) {
    throw new MeloError(
      'BAD_SAFETENSORS',
      maxHeaderBytes === SAFETENSORS_MAX_HEADER_BYTES
        ? `header length ${length} exceeds the ${SAFETENSORS_MAX_HEADER_BYTES}-byte limit (corrupt or not safetensors)`
        : `header length ${length} exceeds the ${maxHeaderBytes} bytes the expected tensors need (corrupt or crafted)`,
      { file },
    );
  }
  if (length > BigInt(fileSize - 8)) {
    throw new MeloError(
      'BAD_SAFETENSORS',
      `header length ${length} runs past the end of the file (${fileSize - 8} bytes follow the length)`,
      { file },
    );
  }
  return Number(length);
}

function parseHeader(
  file: string,
  fileSize: number,
  headerLength: number,
  bytes: Uint8Array,
): SafetensorsHeader {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw new MeloError('BAD_SAFETENSORS', 'header is not valid UTF-8', { file });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new MeloError('BAD_SAFETENSORS', `header is not valid JSON (${firstLine(error)})`, { file });
  }
  if (!isPlainObject(parsed)) throw new MeloError('BAD_SAFETENSORS', 'header is not a JSON object', { file });

  const dataLength = fileSize - 8 - headerLength;
  let metadata: Record<string, string> = {};
  const infos: SafetensorsTensorInfo[] = [];
  for (const [name, entry] of Object.entries(parsed)) {
    if (name === METADATA_KEY) metadata = parseMetadata(entry, file);
    else infos.push(parseTensorInfo(name, entry, dataLength, file));
  }

  // The ranges must tile [0, dataLength): sorted by offset, each begins where the previous one ended.
  infos.sort((a, b) => a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]);
  let previous: SafetensorsTensorInfo | undefined;
  let covered = 0;
  for (const info of infos) {
    const [begin] = info.dataOffsets;
    if (begin < covered && previous !== undefined) {
      throw new MeloError(
        'BAD_SAFETENSORS',
        `tensors '${shortText(previous.name)}' [${previous.dataOffsets.join(', ')}] and '${shortText(info.name)}' ` +
          `[${info.dataOffsets.join(', ')}] have overlapping data_offsets`,
        { file },
      );
    }
    if (begin > covered) {
      throw new MeloError(
        'BAD_SAFETENSORS',
        `bytes [${covered}, ${begin}) of the data section belong to no tensor (gap before '${shortText(info.name)}')`,
        { file },
      );
    }
    covered = info.dataOffsets[1];
    previous = info;
  }
  if (covered !== dataLength) {
    throw new MeloError(
      'BAD_SAFETENSORS',
      `the last ${dataLength - covered} bytes of the data section belong to no tensor`,
      { file },
    );
  }
  return {
    path: file,
    fileSize,
    headerLength,
    dataStart: 8 + headerLength,
    tensors: new Map(infos.map((info) => [info.name, info])),
    metadata,
  };
}

function parseMetadata(entry: unknown, file: string): Record<string, string> {
  if (!isPlainObject(entry)) {
    throw new MeloError('BAD_SAFETENSORS', '__metadata__ must be an object of strings', { file });
  }
  for (const [key, value] of Object.entries(entry)) {
    if (typeof value !== 'string') {
      throw new MeloError('BAD_SAFETENSORS', `__metadata__ value for '${shortText(key)}' is not a string`, {
        file,
      });
    }
  }
  // fromEntries defines own properties, so a key such as "__proto__" stays an ordinary key.
  return Object.fromEntries(Object.entries(entry as Record<string, string>));
}

function parseTensorInfo(
  name: string,
  entry: unknown,
  dataLength: number,
  file: string,
): SafetensorsTensorInfo {
  const fail = (problem: string): never => {
    throw new MeloError('BAD_SAFETENSORS', `tensor '${shortText(name)}': ${problem}`, { file });
  };
  if (!isPlainObject(entry)) return fail('entry is not an object');
  const { dtype, shape, data_offsets: offsets } = entry;
  if (typeof dtype !== 'string') return fail('dtype is missing or not a string');
  if (!Object.hasOwn(DTYPE_BYTES, dtype)) {
    if (REFUSED_DTYPES.has(dtype)) return fail(`dtype ${dtype} is not supported by melo`);
    return fail(`unknown dtype ${shortText(JSON.stringify(dtype))}`);
  }
  const itemBytes = DTYPE_BYTES[dtype as SafetensorsDtype];
  if (Array.isArray(shape) && shape.length > MAX_DIMENSIONS)
    return fail(`shape has ${shape.length} dimensions (at most ${MAX_DIMENSIONS})`);
  if (!Array.isArray(shape) || !shape.every(isNonNegativeInteger)) {
    return fail(
      `shape must be an array of non-negative integers, got ${shortText(JSON.stringify(shape) ?? 'nothing')}`,
    );
  }
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every(isNonNegativeInteger) ||
    offsets[0] > offsets[1]
  ) {
    return fail(
      `data_offsets must be [begin, end] with integers 0 <= begin <= end, got ${shortText(JSON.stringify(offsets) ?? 'nothing')}`,
    );
  }
  const [begin, end] = offsets as [number, number];
  let bytes = itemBytes;
  for (const dim of shape as number[]) {
    bytes *= dim;
    if (!Number.isSafeInteger(bytes)) return fail(`shape [${shape.join(', ')}] is too large`);
  }
  if (end - begin !== bytes) {
    return fail(
      `shape [${shape.join(', ')}] of ${dtype} needs ${bytes} bytes but data_offsets [${begin}, ${end}] hold ${end - begin}`,
    );
  }
  if (end > dataLength) {
    return fail(`data_offsets [${begin}, ${end}] run past the end of the data section (${dataLength} bytes)`);
  }
  return {
    name,
    dtype: dtype as SafetensorsDtype,
    shape: [...(shape as number[])],
    dataOffsets: [begin, end],
  };
}

/** Converts one tensor's raw little-endian bytes (in their own, aligned buffer) to float32. */
function decodeTensorData(storage: ArrayBuffer, info: SafetensorsTensorInfo, file: string): Float32Array {
  const count = storage.byteLength / DTYPE_BYTES[info.dtype];
  switch (info.dtype) {
    case 'F32':
      return new Float32Array(storage);
    case 'F16': {
      const table = float16Table();
      const bits = new Uint16Array(storage);
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = table[bits[i]];
      return out;
    }
    case 'BF16': {
      const bits = new Uint16Array(storage);
      const out = new Float32Array(count);
      const outBits = new Uint32Array(out.buffer);
      for (let i = 0; i < count; i++) outBits[i] = bits[i] << 16;
      return out;
    }
    case 'BOOL': {
      const bytes = new Uint8Array(storage);
      const bad = bytes.findIndex((b) => b > 1);
      if (bad >= 0) {
        throw new MeloError(
          'BAD_SAFETENSORS',
          `tensor '${info.name}': BOOL element ${bad} is byte ${bytes[bad]}, expected 0 or 1`,
          { file },
        );
      }
      return Float32Array.from(bytes);
    }
    case 'U64':
    case 'I64': {
      const values = info.dtype === 'U64' ? new BigUint64Array(storage) : new BigInt64Array(storage);
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = Number(values[i]);
      return out;
    }
    default: {
      // TypedArray.prototype.set converts element types, rounding to nearest float32.
      const out = new Float32Array(count);
      out.set(integerOrF64View(info.dtype, storage));
      return out;
    }
  }
}

function integerOrF64View(
  dtype: 'U8' | 'I8' | 'U16' | 'I16' | 'U32' | 'I32' | 'F64',
  storage: ArrayBuffer,
): ArrayLike<number> {
  switch (dtype) {
    case 'U8':
      return new Uint8Array(storage);
    case 'I8':
      return new Int8Array(storage);
    case 'U16':
      return new Uint16Array(storage);
    case 'I16':
      return new Int16Array(storage);
    case 'U32':
      return new Uint32Array(storage);
    case 'I32':
      return new Int32Array(storage);
    case 'F64':
      return new Float64Array(storage);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Writing

/** Encodes tensors as one safetensors byte array. */
export function encodeSafetensors(
  tensors: SafetensorsTensors,
  options: SafetensorsWriteOptions = {},
): Uint8Array {
  const chunks = [...safetensorsChunks(tensors, options)];
  const out = new Uint8Array(chunks.reduce((total, chunk) => total + chunk.byteLength, 0));
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}

/**
 * Writes tensors to a safetensors file atomically. Tensor data streams to disk one tensor at a time, so
 * the file is never assembled in memory (F32 tensors are written straight from their own storage).
 */
export async function writeSafetensors(
  path: string,
  tensors: SafetensorsTensors,
  options: SafetensorsWriteOptions = {},
): Promise<void> {
  await writeFileAtomic(path, safetensorsChunks(tensors, options, path));
}

/** Validates everything up front (so an error never leaves a partial write), then yields header and data. */
function safetensorsChunks(
  tensors: SafetensorsTensors,
  options: SafetensorsWriteOptions,
  file?: string,
): Iterable<Uint8Array> {
  assertLittleEndianHost();
  const dtype = options.dtype ?? 'F32';
  if (dtype !== 'F32' && dtype !== 'F16' && dtype !== 'BF16') {
    throw new MeloError(
      'UNSUPPORTED',
      `cannot write safetensors dtype ${String(dtype)} (use F32, F16 or BF16)`,
      {
        file,
      },
    );
  }
  const itemBytes = DTYPE_BYTES[dtype];
  const entries = [...(tensors instanceof Map ? tensors.entries() : Object.entries(tensors))];
  const utf8 = new TextEncoder();
  const keyed = entries.map(([name, tensor]) => ({ name, tensor, key: utf8.encode(name) }));
  keyed.sort((a, b) => compareBytes(a.key, b.key));

  const parts: string[] = [];
  const metadata = Object.entries(options.metadata ?? {});
  if (metadata.length > 0) {
    for (const [key, value] of metadata) {
      if (typeof value !== 'string') {
        throw new MeloError('BAD_INPUT', `metadata value for '${key}' is not a string`, { file });
      }
    }
    metadata.sort((a, b) => compareBytes(utf8.encode(a[0]), utf8.encode(b[0])));
    // Built by hand: a JS object would move integer-like keys such as "0" to the front.
    const fields = metadata.map(([key, value]) => `${JSON.stringify(key)}:${JSON.stringify(value)}`);
    parts.push(`${JSON.stringify(METADATA_KEY)}:{${fields.join(',')}}`);
  }
  let offset = 0;
  for (const { name, tensor } of keyed) {
    if (name === METADATA_KEY)
      throw new MeloError('BAD_INPUT', `'${METADATA_KEY}' cannot name a tensor`, { file });
    const { shape, data } = tensor;
    if (!shape.every((dim) => isNonNegativeInteger(dim))) {
      throw new MeloError('BAD_INPUT', `tensor '${name}' has an invalid shape [${shape.join(', ')}]`, {
        file,
      });
    }
    const count = shape.reduce((product, dim) => product * dim, 1);
    if (!(data instanceof Float32Array) || data.length !== count) {
      throw new MeloError(
        'BAD_INPUT',
        `tensor '${name}' has ${data?.length ?? 'no'} float32 values but shape [${shape.join(', ')}] needs ${count}`,
        { file },
      );
    }
    const end = offset + count * itemBytes;
    parts.push(
      `${JSON.stringify(name)}:{"dtype":"${dtype}","shape":[${shape.join(',')}],"data_offsets":[${offset},${end}]}`,
    );
    offset = end;
  }
  const json = utf8.encode(`{${parts.join(',')}}`);
  const headerLength = Math.ceil(json.byteLength / 8) * 8;
  const header = new Uint8Array(8 + headerLength).fill(0x20, 8 + json.byteLength);
  new DataView(header.buffer).setBigUint64(0, BigInt(headerLength), true);
  header.set(json, 8);

  return (function* () {
    yield header;
    for (const { tensor } of keyed) yield encodeTensorData(tensor.data, dtype);
  })();
}

function encodeTensorData(data: Float32Array, dtype: SafetensorsWriteDtype): Uint8Array {
  if (dtype === 'F32') return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const out = new Uint16Array(data.length);
  if (dtype === 'F16') for (let i = 0; i < bits.length; i++) out[i] = float32BitsToFloat16Bits(bits[i]);
  else for (let i = 0; i < bits.length; i++) out[i] = float32BitsToBfloat16Bits(bits[i]);
  return new Uint8Array(out.buffer);
}

// ---------------------------------------------------------------------------------------------------------
// Half precision

const scratch = new Float32Array(1);
const scratchBits = new Uint32Array(scratch.buffer);

/** IEEE binary16 bits of the float32 nearest `value`, rounded to nearest, ties to even. */
export function float32ToFloat16Bits(value: number): number {
  scratch[0] = value;
  return float32BitsToFloat16Bits(scratchBits[0]);
}

/** bfloat16 bits of the float32 nearest `value`, rounded to nearest, ties to even. */
export function float32ToBfloat16Bits(value: number): number {
  scratch[0] = value;
  return float32BitsToBfloat16Bits(scratchBits[0]);
}

/** The exact float32 value of IEEE binary16 bits. */
export function float16BitsToFloat32(bits: number): number {
  return float16Table()[bits & 0xffff];
}

function float32BitsToFloat16Bits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exponent = (x >>> 23) & 0xff;
  const mantissa = x & 0x7fffff;
  if (exponent === 0xff) {
    if (mantissa === 0) return sign | 0x7c00;
    // NaN: keep the top payload bits and make sure the result is still a NaN (quiet bit set).
    return sign | 0x7c00 | 0x200 | (mantissa >>> 13);
  }
  const e = exponent - 127 + 15; // binary16 biased exponent
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal binary16 (or zero): the result is the full significand scaled by 2^-(14 - e).
    if (e < -10) return sign; // below half the smallest subnormal (2^-25): rounds to zero
    const significand = mantissa | 0x800000;
    const shift = 14 - e;
    const kept = significand >>> shift;
    const rest = significand & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    // A carry out of the subnormal range gives the smallest normal, which is the right answer.
    return sign | (rest > half || (rest === half && (kept & 1) === 1) ? kept + 1 : kept);
  }
  const kept = (e << 10) | (mantissa >>> 13);
  const rest = mantissa & 0x1fff;
  // A carry propagates into the exponent; from the largest finite value it gives infinity, as it should.
  return sign | (rest > 0x1000 || (rest === 0x1000 && (kept & 1) === 1) ? kept + 1 : kept);
}

function float32BitsToBfloat16Bits(x: number): number {
  if ((x & 0x7fffffff) > 0x7f800000) return ((x >>> 16) | 0x40) & 0xffff; // NaN stays NaN, quiet
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

let float16Values: Float32Array | undefined;

/** All 65536 binary16 values as float32 (256 KiB), built on first use. */
function float16Table(): Float32Array {
  if (float16Values !== undefined) return float16Values;
  const table = new Float32Array(65536);
  for (let bits = 0; bits < 65536; bits++) {
    const sign = bits & 0x8000 ? -1 : 1;
    const exponent = (bits >>> 10) & 0x1f;
    const mantissa = bits & 0x3ff;
    if (exponent === 0) table[bits] = sign * mantissa * 2 ** -24;
    else if (exponent === 31) table[bits] = mantissa === 0 ? sign * Number.POSITIVE_INFINITY : Number.NaN;
    else table[bits] = sign * (1024 + mantissa) * 2 ** (exponent - 25);
  }
  float16Values = table;
  return table;
}

// ---------------------------------------------------------------------------------------------------------
// Helpers

function assertLittleEndianHost(): void {
  if (endianness() !== 'LE') {
    throw new MeloError('UNSUPPORTED', 'safetensors reading and writing needs a little-endian machine');
  }
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isNonNegativeInteger(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

async function isFile(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isFile() ?? false;
}

function firstLine(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).split('\n')[0];
}
