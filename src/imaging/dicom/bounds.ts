import { Inflate } from 'fflate';
import { type ImageLimits, tooLarge } from '../limits.ts';

/**
 * Bounds on the work a DICOM file can buy, checked before dicom-parser builds its data set: the number
 * of data elements and the sequence nesting (a 10 MB file of a million elements would otherwise take
 * the parser seconds), and how far a deflated data set may inflate (a 930 KB file can inflate to 900 MB).
 * The walk reads only tags, VRs and lengths; values are skipped.
 */

const ITEM = 0xfffee000;
const ITEM_DELIMITER = 0xfffee00d;
const SEQUENCE_DELIMITER = 0xfffee0dd;
const PIXEL_DATA = 0x7fe00010;
const UNDEFINED = 0xffffffff;

/** Explicit VRs whose length is a 4-byte field after two reserved bytes (PS3.5 7.1.2). */
const LONG_VRS = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'UC', 'UN', 'UR', 'UT', 'SV', 'UV']);

/** The Image Pixel attributes the inflation bound needs, read from the top level of the data set. */
const PIXEL_TAGS = {
  samples: 0x00280002,
  frames: 0x00280008,
  rows: 0x00280010,
  columns: 0x00280011,
  bitsAllocated: 0x00280100,
} as const;

export interface DataSetWalk {
  /** Elements seen (sequence items' elements and Pixel Data fragments included). */
  readonly elements: number;
  /** Offset of the top-level Pixel Data element's value, when reached. */
  readonly pixelDataValue?: number;
  /** Rows × columns × frames × samples × bytes per sample, when the header declares them. */
  readonly declaredPixelBytes?: number;
  readonly rows?: number;
  readonly columns?: number;
}

interface WalkState {
  readonly view: DataView;
  readonly explicit: boolean;
  readonly limits: ImageLimits;
  readonly file: string;
  elements: number;
  pixelDataValue?: number;
  readonly top: Map<number, number>;
}

/**
 * Walks a little-endian data set from `start`, counting elements and nesting; throws TOO_LARGE beyond
 * the limits. A walk that runs into truncated or malformed bytes stops quietly: the parser reports those.
 */
export function walkDataSet(
  bytes: Uint8Array,
  start: number,
  explicit: boolean,
  limits: ImageLimits,
  file: string,
): DataSetWalk {
  const state: WalkState = {
    view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength),
    explicit,
    limits,
    file,
    elements: 0,
    top: new Map(),
  };
  walk(state, start, bytes.length, 0, false);
  const value = (tag: number) => state.top.get(tag);
  const rows = value(PIXEL_TAGS.rows);
  const columns = value(PIXEL_TAGS.columns);
  const bitsAllocated = value(PIXEL_TAGS.bitsAllocated);
  const declaredPixelBytes =
    rows !== undefined && columns !== undefined && bitsAllocated !== undefined
      ? rows *
        columns *
        (value(PIXEL_TAGS.frames) ?? 1) *
        (value(PIXEL_TAGS.samples) ?? 1) *
        Math.ceil(bitsAllocated / 8)
      : undefined;
  return {
    elements: state.elements,
    ...(state.pixelDataValue !== undefined ? { pixelDataValue: state.pixelDataValue } : {}),
    ...(declaredPixelBytes !== undefined ? { declaredPixelBytes } : {}),
    ...(rows !== undefined ? { rows } : {}),
    ...(columns !== undefined ? { columns } : {}),
  };
}

/** Returns where the walk stopped (after a delimiter when `inUndefined`). */
function walk(state: WalkState, start: number, end: number, depth: number, inUndefined: boolean): number {
  const { view, limits, file } = state;
  if (depth > limits.maxDicomDepth) {
    throw tooLarge(file, `DICOM sequences nest deeper than ${limits.maxDicomDepth} levels`);
  }
  let at = start;
  while (at + 8 <= end) {
    const tag = ((view.getUint16(at, true) << 16) | view.getUint16(at + 2, true)) >>> 0;
    if (tag === ITEM_DELIMITER || tag === SEQUENCE_DELIMITER) {
      if (inUndefined) return at + 8;
      at += 8;
      continue;
    }
    if (++state.elements > limits.maxDicomElements) {
      throw tooLarge(file, `DICOM data set has more than ${limits.maxDicomElements} elements`);
    }
    let vr: string | undefined;
    let length: number;
    let header: number;
    if (state.explicit && tag !== ITEM) {
      vr = String.fromCharCode(view.getUint8(at + 4), view.getUint8(at + 5));
      if (LONG_VRS.has(vr)) {
        if (at + 12 > end) return end;
        length = view.getUint32(at + 8, true);
        header = 12;
      } else {
        length = view.getUint16(at + 6, true);
        header = 8;
      }
    } else {
      length = view.getUint32(at + 4, true);
      header = 8;
    }
    const value = at + header;
    if (depth === 0 && tag === PIXEL_DATA) state.pixelDataValue = value;
    if (depth === 0 && length !== UNDEFINED) recordPixelAttribute(state, tag, vr, value, length);
    if (length === UNDEFINED) {
      // A sequence, or encapsulated Pixel Data (a sequence of fragment items): walk its items.
      at = walkItems(state, value, end, depth + 1);
      continue;
    }
    if (value + length > end) return end;
    const isSequence =
      vr === 'SQ' || (vr === undefined && length >= 8 && view.getUint32(value, true) === 0xe000fffe);
    if (isSequence && tag !== ITEM) walkItems(state, value, value + length, depth + 1);
    at = value + length;
  }
  return end;
}

/** The items of a sequence from `start`, until its delimiter or `end`; returns where it stopped. */
function walkItems(state: WalkState, start: number, end: number, depth: number): number {
  const { view } = state;
  let at = start;
  while (at + 8 <= end) {
    const tag = ((view.getUint16(at, true) << 16) | view.getUint16(at + 2, true)) >>> 0;
    const length = view.getUint32(at + 4, true);
    if (tag === SEQUENCE_DELIMITER) return at + 8;
    if (tag !== ITEM) return end; // malformed: leave it to the parser
    if (++state.elements > state.limits.maxDicomElements) {
      throw tooLarge(state.file, `DICOM data set has more than ${state.limits.maxDicomElements} elements`);
    }
    if (length === UNDEFINED) {
      at = walk(state, at + 8, end, depth, true);
      continue;
    }
    const itemEnd = at + 8 + length;
    if (itemEnd > end) return end;
    // Fragments of encapsulated Pixel Data hold compressed bytes, not a data set.
    const holdsDataSet = length >= 8 && isPlausibleTag(view, at + 8);
    if (holdsDataSet) walk(state, at + 8, itemEnd, depth, false);
    at = itemEnd;
  }
  return end;
}

function isPlausibleTag(view: DataView, at: number): boolean {
  const group = view.getUint16(at, true);
  // Data elements in items are of even (standard) or odd (private) groups above the command/meta groups.
  return group >= 0x0008 && group !== 0xfffe && group <= 0x7fe0;
}

function recordPixelAttribute(
  state: WalkState,
  tag: number,
  vr: string | undefined,
  value: number,
  length: number,
): void {
  if (!Object.values(PIXEL_TAGS).includes(tag as (typeof PIXEL_TAGS)[keyof typeof PIXEL_TAGS])) return;
  if (value + length > state.view.byteLength) return;
  if (tag === PIXEL_TAGS.frames) {
    // Number of Frames is an IS (text): at most 12 characters.
    let text = '';
    for (let i = 0; i < Math.min(length, 12); i++)
      text += String.fromCharCode(state.view.getUint8(value + i));
    const frames = Number.parseInt(text.trim(), 10);
    if (Number.isInteger(frames) && frames > 0) state.top.set(tag, frames);
    return;
  }
  if (length >= 2 && (vr === undefined || vr === 'US')) state.top.set(tag, state.view.getUint16(value, true));
}

/** Slack past the declared pixel bytes: trailing elements, padding. */
const INFLATION_SLACK = 1 << 20;
/** Compressed bytes pushed at a time: at most ~1 MB comes out per push (deflate inflates 1032:1 at most). */
const INFLATE_STEP = 1024;

/**
 * Inflates a deflated data set (raw deflate from `position`) in steps, never past what the header
 * declares: once the walk of the inflated bytes reaches Pixel Data, the output is bounded by the data set
 * before it plus rows × columns × frames × samples × bytes per sample (and a little slack); a frame
 * above the pixel limit is refused there, before its pixels are inflated; and nothing inflates past
 * `limits.maxInflatedBytes`. Returns the bytes before `position` followed by the inflated data set.
 */
export function boundedInflate(
  bytes: Uint8Array,
  position: number,
  limits: ImageLimits,
  file: string,
): Uint8Array {
  const chunks: Uint8Array[] = [bytes.subarray(0, position)];
  let total = position;
  let ended = false;
  const hardCap = position + limits.maxInflatedBytes;
  let cap = hardCap;
  let bounded = false;
  let nextLook = position + 64 * 1024;
  const inflater = new Inflate((chunk, final) => {
    chunks.push(chunk);
    total += chunk.length;
    if (final) ended = true;
  });
  const overCap = () =>
    tooLarge(
      file,
      cap < hardCap
        ? 'deflated data set inflates past the size its header declares'
        : `deflated data set inflates past ${limits.maxInflatedBytes} bytes`,
    );
  for (let at = position; at < bytes.length && !ended; at += INFLATE_STEP) {
    const stop = Math.min(at + INFLATE_STEP, bytes.length);
    inflater.push(bytes.subarray(at, stop), stop === bytes.length);
    if (total > cap) throw overCap();
    if (!bounded && (total >= nextLook || ended)) {
      const sofar = concat(chunks, total);
      chunks.length = 0;
      chunks.push(sofar);
      const found = walkDataSet(sofar, position, true, limits, file);
      if (found.pixelDataValue !== undefined && found.declaredPixelBytes !== undefined) {
        if (
          found.rows !== undefined &&
          found.columns !== undefined &&
          found.rows * found.columns > limits.maxPixels
        ) {
          throw tooLarge(
            file,
            `image of ${found.columns}x${found.rows} pixels exceeds the limit of ${limits.maxPixels} pixels (--max-pixels)`,
          );
        }
        cap = Math.min(cap, found.pixelDataValue + found.declaredPixelBytes + INFLATION_SLACK);
        bounded = true;
        if (total > cap) throw overCap();
      }
      nextLook = total * 4;
    }
  }
  return concat(chunks, total);
}

function concat(chunks: readonly Uint8Array[], total: number): Uint8Array {
  if (chunks.length === 1 && chunks[0]!.length === total) return chunks[0]!;
  const out = new Uint8Array(total);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}
