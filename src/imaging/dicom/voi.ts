/**
 * Value-of-interest transforms (PS3.3 C.11.2.1.2): from modality values to display values in [0, 1].
 */
export type VoiFunction = 'LINEAR' | 'LINEAR_EXACT' | 'SIGMOID';

export interface Window {
  readonly center: number;
  readonly width: number;
}

/**
 * Window Center/Width with the VOI LUT Function. LINEAR is the standard's default (C.11.2.1.2.1):
 * x <= c - 0.5 - (w-1)/2 maps to 0, x > c - 0.5 + (w-1)/2 to 1, and in between
 * ((x - (c - 0.5)) / (w - 1) + 0.5). LINEAR needs w >= 1; the others need w > 0.
 */
export function applyWindow(values: Float64Array, window: Window, fn: VoiFunction = 'LINEAR'): Float32Array {
  const out = new Float32Array(values.length);
  const { center: c, width: w } = window;
  if (fn === 'LINEAR') {
    const low = c - 0.5 - (w - 1) / 2;
    const high = c - 0.5 + (w - 1) / 2;
    for (let i = 0; i < values.length; i++) {
      const x = values[i]!;
      out[i] = x <= low ? 0 : x > high ? 1 : (x - (c - 0.5)) / (w - 1) + 0.5;
    }
  } else if (fn === 'LINEAR_EXACT') {
    for (let i = 0; i < values.length; i++) {
      const x = values[i]!;
      out[i] = x <= c - w / 2 ? 0 : x > c + w / 2 ? 1 : (x - c) / w + 0.5;
    }
  } else {
    for (let i = 0; i < values.length; i++) out[i] = 1 / (1 + Math.exp((-4 * (values[i]! - c)) / w));
  }
  return out;
}

export function isUsableWindow(window: Window, fn: VoiFunction = 'LINEAR'): boolean {
  if (!Number.isFinite(window.center) || !Number.isFinite(window.width)) return false;
  return fn === 'LINEAR' ? window.width >= 1 : window.width > 0;
}

/** The frame's own range stretched to [0, 1]; a constant frame maps to 0. */
export function applyMinMax(values: Float64Array): Float32Array {
  let min = Number.POSITIVE_INFINITY;
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < values.length; i++) {
    const x = values[i]!;
    if (x < min) min = x;
    if (x > max) max = x;
  }
  const out = new Float32Array(values.length);
  const span = max - min;
  if (!(span > 0)) return out;
  for (let i = 0; i < values.length; i++) out[i] = (values[i]! - min) / span;
  return out;
}

/** MONOCHROME1: the lowest value is displayed white. */
export function invertInPlace(values: Float32Array): Float32Array {
  for (let i = 0; i < values.length; i++) values[i] = 1 - values[i]!;
  return values;
}

/** Modality LUT by Rescale Slope/Intercept (C.11.1.1.2): output units are e.g. Hounsfield for CT. */
export function rescale(values: Float64Array, slope: number, intercept: number): Float64Array {
  if (slope === 1 && intercept === 0) return values;
  const out = new Float64Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = values[i]! * slope + intercept;
  return out;
}
