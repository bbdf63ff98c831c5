/**
 * Stored pixel values from raw sample words (PS3.5 8.1.1): the Bits Stored bits that end at High Bit,
 * read as two's complement when Pixel Representation is 1. Bits outside them (old overlays, padding)
 * are dropped.
 */
export interface StoredBits {
  readonly bitsStored: number;
  readonly highBit: number;
  readonly pixelRepresentation: 0 | 1;
}

export function toStoredValues(words: ArrayLike<number>, bits: StoredBits): Float64Array {
  const out = new Float64Array(words.length);
  const shift = bits.highBit + 1 - bits.bitsStored;
  const range = 2 ** bits.bitsStored;
  const signBit = range / 2;
  const signed = bits.pixelRepresentation === 1;
  for (let i = 0; i < words.length; i++) {
    // Arithmetic instead of bit operators: 32-bit words exceed the signed range that `&` works in.
    const value = Math.floor(words[i]! / 2 ** shift) % range;
    out[i] = signed && value >= signBit ? value - range : value;
  }
  return out;
}
