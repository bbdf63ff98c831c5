/**
 * Prints, as one JSON line, what this process sees of the int8 kernels: the ISA mask it runs under
 * (bench/lib/isa-mask.ts), whether ONNX Runtime's u8·s8 product saturates here (runtime/int8-kernels.ts),
 * and whether V8's WebAssembly bounds check still traps (the mask's SIGSEGV handler must pass it on).
 */
import { activeIsaMask } from '../../bench/lib/isa-mask.ts';
import { int8ProductsSaturate } from '../../src/runtime/int8-kernels.ts';

// (module (memory 1) (func (export "f") (param i32) (result i32) local.get 0 i32.load))
const LOAD = Uint8Array.from([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 6, 1, 96, 1, 127, 1, 127, 3, 2, 1, 0, 5, 3, 1, 0, 1, 7, 5, 1, 1, 102, 0, 0,
  10, 9, 1, 7, 0, 32, 0, 40, 2, 0, 11,
]);

function wasmTrapMessage(): string {
  const load = new WebAssembly.Instance(new WebAssembly.Module(LOAD)).exports.f as (at: number) => number;
  try {
    load(1 << 20);
    return 'no trap';
  } catch (error) {
    return (error as Error).message;
  }
}

console.log(
  JSON.stringify({
    mask: activeIsaMask(),
    saturates: await int8ProductsSaturate(),
    wasmTrap: wasmTrapMessage(),
  }),
);
