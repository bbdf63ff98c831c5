/**
 * Compiles the WebAssembly text of src/train/kernels/update.wat to update.wasm beside it (wabt, the
 * WebAssembly Binary Toolkit). The binary is committed so that running melo needs no compiler;
 * test/update-kernel.test.ts checks that it is what this script makes from the text.
 *
 *   npx tsx scripts/build-wasm.ts
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import wabtInit from 'wabt';

export const UPDATE_WAT = fileURLToPath(new URL('../src/train/kernels/update.wat', import.meta.url));
export const UPDATE_WASM = fileURLToPath(new URL('../src/train/kernels/update.wasm', import.meta.url));

export async function compileWat(path: string): Promise<Uint8Array> {
  const wabt = await wabtInit();
  const module = wabt.parseWat(path, readFileSync(path, 'utf8'), { simd: true, threads: true });
  try {
    // No module.validate(): wabt.js validates without the parse options' features (it refuses shared
    // memory); WebAssembly.compile validates the binary when melo loads it.
    return module.toBinary({}).buffer;
  } finally {
    module.destroy();
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const bytes = await compileWat(UPDATE_WAT);
  writeFileSync(UPDATE_WASM, bytes);
  console.log(`wrote ${UPDATE_WASM} (${bytes.length} bytes)`);
}
