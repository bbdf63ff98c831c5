/**
 * The idx format of MNIST and Fashion-MNIST (optionally gzipped): two zero bytes, a type code, the number
 * of dimensions, each dimension as a big-endian uint32, then the values. Only unsigned bytes (type 0x08)
 * are supported; that is what every published idx dataset uses.
 */
import { readFile } from 'node:fs/promises';
import { gunzipSync } from 'node:zlib';
import { MeloError } from '../errors.ts';

export interface IdxArray {
  readonly shape: readonly number[];
  readonly data: Uint8Array;
}

const TYPE_NAMES: Record<number, string> = {
  8: 'uint8',
  9: 'int8',
  11: 'int16',
  12: 'int32',
  13: 'float32',
  14: 'float64',
};

export async function readIdx(path: string): Promise<IdxArray> {
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(await readFile(path));
  } catch (error) {
    throw new MeloError(
      'NOT_FOUND',
      `cannot read idx file (${(error as NodeJS.ErrnoException).code ?? error})`,
      {
        file: path,
      },
    );
  }
  if (bytes[0] === 0x1f && bytes[1] === 0x8b) {
    try {
      bytes = new Uint8Array(gunzipSync(bytes));
    } catch (error) {
      throw new MeloError('BAD_DATA', `corrupt gzip data (${(error as Error).message})`, { file: path });
    }
  }
  return parseIdx(bytes, path);
}

export function parseIdx(bytes: Uint8Array, file: string): IdxArray {
  if (bytes.length < 4 || bytes[0] !== 0 || bytes[1] !== 0) {
    throw new MeloError('BAD_DATA', 'not an idx file (bad magic)', { file });
  }
  const type = bytes[2];
  const rank = bytes[3];
  if (type !== 0x08) {
    const name = TYPE_NAMES[type] ?? `0x${type.toString(16)}`;
    throw new MeloError('BAD_DATA', `idx element type ${name} is not supported (only uint8)`, { file });
  }
  const headerLength = 4 + 4 * rank;
  if (rank === 0 || bytes.length < headerLength) {
    throw new MeloError('BAD_DATA', 'truncated idx header', { file });
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const shape = Array.from({ length: rank }, (_, i) => view.getUint32(4 + 4 * i, false));
  const count = shape.reduce((product, dim) => product * dim, 1);
  if (bytes.length - headerLength !== count) {
    throw new MeloError(
      'BAD_DATA',
      `idx shape (${shape.join(', ')}) needs ${count} bytes of data, file has ${bytes.length - headerLength}`,
      { file },
    );
  }
  return { shape, data: bytes.subarray(headerLength) };
}
