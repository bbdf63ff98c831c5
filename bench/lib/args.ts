/** Command-line integers for the benches: a bad value stops the bench with the option's name. */
export function integerOption(name: string, text: string, min: number): number {
  const value = Number(text);
  if (text.trim() === '' || !Number.isInteger(value) || value < min)
    throw new Error(`--${name} expects an integer ≥ ${min}, got '${text}'`);
  return value;
}

/** A comma-separated list of integers, e.g. `--batches 1,8`. */
export function integerListOption(name: string, text: string, min: number): number[] {
  return text.split(',').map((part) => {
    const value = Number(part);
    if (part.trim() === '' || !Number.isInteger(value) || value < min)
      throw new Error(`--${name} expects integers ≥ ${min}, got '${text}'`);
    return value;
  });
}
