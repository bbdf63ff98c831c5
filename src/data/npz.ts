/**
 * Reader for NumPy `.npz` archives (`np.savez` / `np.savez_compressed`): a zip file holding one `.npy`
 * member per array. The zip is read with fflate; each member goes through `parseNpy`.
 */
import { readFile } from 'node:fs/promises';
import { unzipSync } from 'fflate';
import { MeloError } from '../errors.ts';
import { type NpyArray, parseNpy } from './npy.ts';

/**
 * Reads the arrays of an `.npz` file, keyed by name without the `.npy` suffix. `keys` restricts which
 * members are decompressed (the others are skipped without inflating them).
 */
export async function readNpz(path: string, keys?: readonly string[]): Promise<Map<string, NpyArray>> {
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
  return parseNpz(bytes, path, keys);
}

export function parseNpz(bytes: Uint8Array, file: string, keys?: readonly string[]): Map<string, NpyArray> {
  const wanted = keys === undefined ? undefined : new Set(keys.map((key) => `${key}.npy`));
  let members: Record<string, Uint8Array>;
  try {
    members = unzipSync(bytes, { filter: (entry) => wanted === undefined || wanted.has(entry.name) });
  } catch (error) {
    throw new MeloError('BAD_DATA', `not a readable .npz (zip) archive: ${(error as Error).message}`, {
      file,
      cause: error,
    });
  }
  const arrays = new Map<string, NpyArray>();
  for (const [name, member] of Object.entries(members)) {
    if (!name.endsWith('.npy')) continue;
    arrays.set(name.slice(0, -4), parseNpy(member, `${file}/${name}`));
  }
  return arrays;
}
