/**
 * Reader for NumPy's `.npy` format (versions 1–3): a magic string, a small header that is a Python dict
 * literal (`{'descr': '|u1', 'fortran_order': False, 'shape': (1080, 28, 28, 3), }`), then the raw values.
 * Only the parts numeric datasets use are supported: fixed-size integer/float/bool dtypes in C order.
 */
import { MeloError } from '../errors.ts';

export type NpyValues =
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array;

export interface NpyArray {
  /** The dtype as written in the file, e.g. '|u1', '<i8', '<f4'. */
  readonly dtype: string;
  readonly shape: readonly number[];
  /**
   * The values in C order. 8-byte integers come back as Float64Array (exact up to 2^53; larger values are
   * rejected); big-endian data is byte-swapped to native order.
   */
  readonly data: NpyValues;
}

const MAX_HEADER_BYTES = 65_536;

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

interface DtypeInfo {
  readonly kind: 'u' | 'i' | 'f' | 'b';
  readonly size: number;
  readonly littleEndian: boolean;
}

function parseDtype(descr: string, file: string): DtypeInfo {
  const match = /^([<>|=]?)([uifb])(\d+)$/.exec(descr);
  if (match === null) {
    throw new MeloError('BAD_DATA', `unsupported .npy dtype '${descr}' (only numeric dtypes are supported)`, {
      file,
    });
  }
  const kind = match[2] as DtypeInfo['kind'];
  const size = Number(match[3]);
  const allowed = kind === 'f' ? [4, 8] : kind === 'b' ? [1] : [1, 2, 4, 8];
  if (!allowed.includes(size)) {
    throw new MeloError('BAD_DATA', `unsupported .npy dtype '${descr}'`, { file });
  }
  // '=' means the writer's native order; every platform numpy ships on today is little-endian.
  return { kind, size, littleEndian: match[1] !== '>' };
}

function parseHeader(text: string, file: string): { descr: string; fortranOrder: boolean; shape: number[] } {
  const descr = /'descr'\s*:\s*'([^']*)'/.exec(text);
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(text);
  const shape = /'shape'\s*:\s*\(([^)]*)\)/.exec(text);
  if (descr === null || fortran === null || shape === null) {
    if (/'descr'\s*:\s*\[/.test(text)) {
      throw new MeloError('BAD_DATA', 'structured .npy arrays are not supported', { file });
    }
    throw new MeloError('BAD_DATA', `malformed .npy header: ${text.trim().slice(0, 80)}`, { file });
  }
  const dims = shape[1]
    .split(',')
    .map((part) => part.trim())
    .filter((part) => part.length > 0)
    .map((part) => {
      const value = Number(part.replace(/L$/, ''));
      if (!Number.isSafeInteger(value) || value < 0) {
        throw new MeloError('BAD_DATA', `malformed .npy shape (${shape[1]})`, { file });
      }
      return value;
    });
  return { descr: descr[1], fortranOrder: fortran[1] === 'True', shape: dims };
}

/** Parses one `.npy` file held in memory; `file` names it in errors (e.g. 'retinamnist.npz/train_images.npy'). */
export function parseNpy(bytes: Uint8Array, file: string): NpyArray {
  if (bytes.length < 10 || MAGIC.some((byte, i) => bytes[i] !== byte)) {
    throw new MeloError('BAD_DATA', 'not a .npy file (bad magic)', { file });
  }
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let headerLength: number;
  let headerStart: number;
  if (major === 1) {
    headerLength = view.getUint16(8, true);
    headerStart = 10;
  } else if (major === 2 || major === 3) {
    if (bytes.length < 12) throw new MeloError('BAD_DATA', 'truncated .npy header', { file });
    headerLength = view.getUint32(8, true);
    headerStart = 12;
  } else {
    throw new MeloError('BAD_DATA', `unsupported .npy format version ${major}`, { file });
  }
  // NumPy writes headers of a few hundred bytes and refuses to read ones over 10,000 (its _MAX_HEADER_SIZE).
  if (headerLength > MAX_HEADER_BYTES)
    throw new MeloError('BAD_DATA', `.npy header of ${headerLength} bytes (at most ${MAX_HEADER_BYTES})`, {
      file,
    });
  const dataStart = headerStart + headerLength;
  if (dataStart > bytes.length) throw new MeloError('BAD_DATA', 'truncated .npy header', { file });
  const headerText = new TextDecoder(major === 3 ? 'utf-8' : 'latin1').decode(
    bytes.subarray(headerStart, dataStart),
  );
  const header = parseHeader(headerText, file);
  if (header.fortranOrder) {
    throw new MeloError(
      'BAD_DATA',
      'Fortran-order .npy arrays are not supported; re-save with np.ascontiguousarray(array)',
      { file },
    );
  }
  const dtype = parseDtype(header.descr, file);
  const count = header.shape.reduce((product, dim) => product * dim, 1);
  const byteLength = count * dtype.size;
  if (bytes.length - dataStart < byteLength) {
    throw new MeloError(
      'BAD_DATA',
      `truncated .npy data: shape (${header.shape.join(', ')}) needs ${byteLength} bytes, file has ${bytes.length - dataStart}`,
      { file },
    );
  }
  const raw = bytes.subarray(dataStart, dataStart + byteLength);
  return { dtype: header.descr, shape: header.shape, data: decodeValues(raw, dtype, count, file) };
}

function decodeValues(raw: Uint8Array, dtype: DtypeInfo, count: number, file: string): NpyValues {
  if (dtype.size === 1) {
    return dtype.kind === 'i' ? new Int8Array(raw.buffer, raw.byteOffset, count) : raw;
  }
  // Copy into a fresh, aligned buffer: the payload inside a zip entry has no alignment guarantee.
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const le = dtype.littleEndian;
  const key = `${dtype.kind}${dtype.size}`;
  switch (key) {
    case 'u2':
      return fill(new Uint16Array(count), (i) => view.getUint16(i * 2, le));
    case 'i2':
      return fill(new Int16Array(count), (i) => view.getInt16(i * 2, le));
    case 'u4':
      return fill(new Uint32Array(count), (i) => view.getUint32(i * 4, le));
    case 'i4':
      return fill(new Int32Array(count), (i) => view.getInt32(i * 4, le));
    case 'f4':
      return fill(new Float32Array(count), (i) => view.getFloat32(i * 4, le));
    case 'f8':
      return fill(new Float64Array(count), (i) => view.getFloat64(i * 8, le));
    case 'u8':
    case 'i8':
      return fill(new Float64Array(count), (i) => {
        const value = key === 'u8' ? view.getBigUint64(i * 8, le) : view.getBigInt64(i * 8, le);
        const asNumber = Number(value);
        if (!Number.isSafeInteger(asNumber)) {
          throw new MeloError(
            'BAD_DATA',
            `.npy value ${value} at index ${i} is too large to represent exactly`,
            {
              file,
            },
          );
        }
        return asNumber;
      });
    default:
      throw new MeloError('BAD_DATA', `unsupported .npy dtype ${key}`, { file });
  }
}

function fill<T extends NpyValues>(target: T, valueAt: (index: number) => number): T {
  for (let i = 0; i < target.length; i++) target[i] = valueAt(i);
  return target;
}

/**
 * A float32 C-order array as `.npy` bytes (format 1.0, as `np.save` writes it: the header dict padded
 * with spaces and a newline so the data starts on a 64-byte boundary).
 */
export function npyBytes(shape: readonly number[], data: Float32Array): Uint8Array {
  const count = shape.reduce((product, dim) => product * dim, 1);
  if (count !== data.length)
    throw new RangeError(`shape (${shape.join(', ')}) needs ${count} values, got ${data.length}`);
  const dims = shape.length === 1 ? `${shape[0]},` : shape.join(', ');
  const dict = `{'descr': '<f4', 'fortran_order': False, 'shape': (${dims}), }`;
  const unpadded = MAGIC.length + 2 + 2 + dict.length + 1;
  const header = `${dict}${' '.repeat((64 - (unpadded % 64)) % 64)}\n`;
  const out = new Uint8Array(MAGIC.length + 4 + header.length + data.byteLength);
  out.set(MAGIC, 0);
  out[6] = 1;
  out[7] = 0;
  new DataView(out.buffer).setUint16(8, header.length, true);
  out.set(new TextEncoder().encode(header), 10);
  const body = new DataView(out.buffer, 10 + header.length);
  for (let i = 0; i < data.length; i++) body.setFloat32(i * 4, data[i]!, true);
  return out;
}
