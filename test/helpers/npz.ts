/** Builds `.npy` and `.npz` bytes in memory, as NumPy writes them, for tests that need crafted archives. */
import { type Zippable, zipSync } from 'fflate';

export type NpyInput = Uint8Array | Float32Array | Float64Array | Int32Array;

const DESCR = new Map<string, string>([
  ['Uint8Array', '|u1'],
  ['Float32Array', '<f4'],
  ['Float64Array', '<f8'],
  ['Int32Array', '<i4'],
]);

/** A version 1.0 `.npy` file: magic, header padded to 64 bytes, raw little-endian values. */
export function npyBytes(values: NpyInput, shape: readonly number[]): Uint8Array {
  const descr = DESCR.get(values.constructor.name)!;
  const dims = shape.length === 1 ? `${shape[0]},` : shape.join(', ');
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${dims}), }`;
  const total = 10 + header.length + 1;
  header += ' '.repeat((64 - (total % 64)) % 64);
  header += '\n';
  const out = new Uint8Array(10 + header.length + values.byteLength);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
  new DataView(out.buffer).setUint16(8, header.length, true);
  out.set(new TextEncoder().encode(header), 10);
  out.set(new Uint8Array(values.buffer, values.byteOffset, values.byteLength), 10 + header.length);
  return out;
}

/** A compressed `.npz` (np.savez_compressed) of the given arrays. */
export function npzBytes(arrays: Record<string, { values: NpyInput; shape: readonly number[] }>): Uint8Array {
  const members: Zippable = {};
  for (const [name, { values, shape }] of Object.entries(arrays))
    members[`${name}.npy`] = npyBytes(values, shape);
  return zipSync(members, { level: 6 });
}
