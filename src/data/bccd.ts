/**
 * BCCD (blood-cell count and detection, MIT licence): 640×480 blood-smear JPEGs with Pascal VOC boxes,
 * opened as a three-class cell *classification* set — one item per annotated box, whose image is the box
 * cropped out of its JPEG.
 *
 * Layout (the dataset's own repository): `<root>/BCCD/{Annotations/<id>.xml, JPEGImages/<id>.jpg,
 * ImageSets/Main/{train,val,test}.txt}`. `openBccd` accepts `<root>`, the `BCCD/` directory itself, or
 * (because other tools point at the images) its `JPEGImages/` directory.
 *
 * Conventions, decided once here:
 * - Classes are `BCCD_CLASSES` = ['Platelets', 'RBC', 'WBC'] (code-point order); the `classes` option
 *   keeps a subset in that same order, so label indices never depend on how the option was spelled.
 * - Splits are the dataset's own `ImageSets/Main` lists (205/87/72 images), never re-drawn; an image
 *   listed in two splits is refused, because its cells would leak between them.
 * - Box coordinates are VOC's 1-based inclusive pixels (BCCD's range is exactly 1..640 × 1..480), so
 *   the crop is columns xmin-1 … xmax-1: width xmax-xmin+1.
 * - Item id: `<jpeg path>#<xmin>,<ymin>,<xmax>,<ymax>` with the coordinates as written in the XML.
 * - Odd boxes are dropped and counted (see `BccdDropReason`), never silently: BCCD 1.0 has 2 zero-size
 *   boxes and 7 RBCs annotated twice, 2 px apart (IoU > 0.9), so 4879 of its 4888 boxes are kept.
 *   Boxes that stick out of the image are clamped to it and kept (counted as `clamped`).
 * - `maxPerImage` (default: no cap) keeps at most N boxes of a class per image, chosen with `seed` —
 *   RBCs outnumber the other classes ≈11:1, so a demo can balance without discarding whole images.
 *
 * Crops are decoded by sharp exactly as `readImageFile` decodes the whole JPEG (orientation applied,
 * sRGB, 8-bit → [0, 1]); the decoded JPEG is kept in a small per-dataset LRU (8 images ≈ 7 MB) so
 * the ≈13 crops of one image cost one decode when they are loaded together.
 *
 * Items carry no worker `source`: a crop is not expressible as a `FileItemSource`, so the loader calls
 * `load()` in-process, as it does for array items.
 */

import { readdir, readFile, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import sharp from 'sharp';
import { MeloError } from '../errors.ts';
import type { DecodedImage } from '../imaging/image.ts';
import { DEFAULT_MAX_PIXELS } from '../imaging/limits.ts';
import { Random } from '../util/random.ts';
import {
  type DataItem,
  type DataSplits,
  SPLIT_NAMES,
  type SplitName,
  singleLabelTaskType,
} from './dataset.ts';

export const BCCD_CLASSES = ['Platelets', 'RBC', 'WBC'] as const;
export type BccdClass = (typeof BCCD_CLASSES)[number];

/** Images in the published dataset (what a download is checked against). */
export const BCCD_IMAGE_COUNT = 364;

/** Same-class boxes overlapping an earlier kept box at least this much (IoU) are duplicates. */
export const BCCD_DEFAULT_DUPLICATE_IOU = 0.9;

/** Decoded JPEGs kept per opened dataset: 8 × 640×480×3 bytes ≈ 7 MB. */
const DECODED_CACHE_IMAGES = 8;

export interface OpenBccdOptions {
  /** Keep only these classes (labels index the subset, in `BCCD_CLASSES` order). Default: all three. */
  readonly classes?: readonly BccdClass[];
  /** At most this many boxes of a class per image (seeded choice). Default: no cap. */
  readonly maxPerImage?: Partial<Record<BccdClass, number>>;
  /** Pixels added on every side of a box before cropping, clamped to the image. Default 0. */
  readonly margin?: number;
  /** Seed for the `maxPerImage` choice. Default 0. */
  readonly seed?: number;
  /** Only these splits are read. Default: train, val and test. */
  readonly splits?: readonly SplitName[];
  /** IoU at or above which a same-class box counts as a duplicate. Default 0.9; 1 = identical only. */
  readonly duplicateIou?: number;
}

/**
 * Why a box was not turned into an item.
 * - degenerate: zero or negative width/height (xmax <= xmin or ymax <= ymin) — a click, not a cell.
 * - outside: no pixel of the box lies inside the image.
 * - duplicate: same class and IoU >= `duplicateIou` with a box kept earlier in the same image.
 * - conflicting: identical coordinates annotated with two different classes (all of them are dropped).
 * - unknown-class: a class name other than Platelets/RBC/WBC.
 * - malformed: a missing or non-numeric coordinate.
 */
export type BccdDropReason =
  | 'degenerate'
  | 'outside'
  | 'duplicate'
  | 'conflicting'
  | 'unknown-class'
  | 'malformed';

export interface BccdDroppedBox {
  readonly annotation: string;
  readonly split: SplitName;
  readonly name: string;
  /** The coordinates as written (`xmin,ymin,xmax,ymax`). */
  readonly box: string;
  readonly reason: BccdDropReason;
}

export interface BccdReport {
  /** The directory holding Annotations/, JPEGImages/ and ImageSets/. */
  readonly vocDir: string;
  readonly images: number;
  /** Boxes in the read annotations, before anything is dropped. */
  readonly boxes: number;
  readonly dropped: Readonly<Record<BccdDropReason, number>>;
  readonly droppedBoxes: readonly BccdDroppedBox[];
  /** Kept boxes that stuck out of the image and were clamped to it. */
  readonly clamped: number;
  /** Valid boxes of a selected class left out by `maxPerImage`. */
  readonly capped: number;
  /** Boxes of classes left out by the `classes` option. */
  readonly excludedByClass: number;
  /** Items per split. */
  readonly items: Readonly<Partial<Record<SplitName, number>>>;
}

export interface BccdOpened {
  readonly splits: DataSplits;
  readonly report: BccdReport;
}

/** A box in 1-based inclusive pixel coordinates, inside the image. */
interface PixelBox {
  readonly xmin: number;
  readonly ymin: number;
  readonly xmax: number;
  readonly ymax: number;
}

interface AnnotatedBox {
  readonly cls: BccdClass;
  /** As written in the XML, for the id and messages. */
  readonly written: string;
  readonly box: PixelBox;
}

interface ParsedAnnotation {
  readonly width: number;
  readonly height: number;
  readonly objects: ReadonlyArray<{ readonly name: string; readonly coordinates: readonly string[] }>;
}

const COORDINATE_KEYS = ['xmin', 'ymin', 'xmax', 'ymax'] as const;

const xmlParser = new XMLParser({
  parseTagValue: false,
  ignoreAttributes: true,
  isArray: (tagName) => tagName === 'object',
});

function text(value: unknown): string | undefined {
  if (typeof value === 'string') return value.trim();
  if (typeof value === 'number') return String(value);
  return undefined;
}

function record(value: unknown): Record<string, unknown> | undefined {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : undefined;
}

/** Reads one VOC annotation: the image size and each object's name and raw coordinate strings. */
export function parseVocAnnotation(xml: string, file: string): ParsedAnnotation {
  const valid = XMLValidator.validate(xml);
  if (valid !== true) {
    throw new MeloError('BAD_DATA', `is not well-formed XML (line ${valid.err.line}: ${valid.err.msg})`, {
      file,
    });
  }
  const annotation = record(record(xmlParser.parse(xml))?.annotation);
  if (annotation === undefined) throw new MeloError('BAD_DATA', 'has no <annotation> element', { file });
  const size = record(annotation.size);
  const width = Number(text(size?.width));
  const height = Number(text(size?.height));
  if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0) {
    throw new MeloError('BAD_DATA', 'has no valid <size><width>/<height> (positive integers)', { file });
  }
  const objects = (Array.isArray(annotation.object) ? annotation.object : []).map((entry: unknown) => {
    const object = record(entry);
    const bndbox = record(object?.bndbox);
    return {
      name: text(object?.name) ?? '',
      coordinates: COORDINATE_KEYS.map((key) => text(bndbox?.[key]) ?? ''),
    };
  });
  return { width, height, objects };
}

function isBccdClass(name: string): name is BccdClass {
  return (BCCD_CLASSES as readonly string[]).includes(name);
}

function area(box: PixelBox): number {
  return (box.xmax - box.xmin + 1) * (box.ymax - box.ymin + 1);
}

function iou(a: PixelBox, b: PixelBox): number {
  const width = Math.min(a.xmax, b.xmax) - Math.max(a.xmin, b.xmin) + 1;
  const height = Math.min(a.ymax, b.ymax) - Math.max(a.ymin, b.ymin) + 1;
  if (width <= 0 || height <= 0) return 0;
  const intersection = width * height;
  return intersection / (area(a) + area(b) - intersection);
}

type DropCounter = (reason: BccdDropReason, name: string, written: string) => void;

/** The valid boxes of one annotation, in file order; every other box is reported through `drop`. */
function cleanBoxes(
  parsed: ParsedAnnotation,
  duplicateIou: number,
  drop: DropCounter,
): { boxes: AnnotatedBox[]; clamped: number } {
  let clamped = 0;
  const candidates: AnnotatedBox[] = [];
  for (const { name, coordinates } of parsed.objects) {
    const written = coordinates.join(',');
    const values = coordinates.map((value) => (value === '' ? Number.NaN : Number(value)));
    if (!isBccdClass(name)) {
      drop('unknown-class', name, written);
      continue;
    }
    if (!values.every(Number.isFinite)) {
      drop('malformed', name, written);
      continue;
    }
    // VOC files written by other tools sometimes hold sub-pixel floats; pixels are whole.
    const [xmin, ymin, xmax, ymax] = values.map(Math.round);
    if (xmax <= xmin || ymax <= ymin) {
      drop('degenerate', name, written);
      continue;
    }
    const box = {
      xmin: Math.max(1, xmin),
      ymin: Math.max(1, ymin),
      xmax: Math.min(parsed.width, xmax),
      ymax: Math.min(parsed.height, ymax),
    };
    if (box.xmax < box.xmin || box.ymax < box.ymin) {
      drop('outside', name, written);
      continue;
    }
    if (box.xmin !== xmin || box.ymin !== ymin || box.xmax !== xmax || box.ymax !== ymax) clamped++;
    candidates.push({ cls: name, written, box });
  }

  const classesAt = new Map<string, Set<BccdClass>>();
  for (const { cls, written } of candidates) {
    const set = classesAt.get(written) ?? new Set<BccdClass>();
    set.add(cls);
    classesAt.set(written, set);
  }
  const boxes: AnnotatedBox[] = [];
  for (const candidate of candidates) {
    if ((classesAt.get(candidate.written)?.size ?? 0) > 1) {
      drop('conflicting', candidate.cls, candidate.written);
      continue;
    }
    const duplicate = boxes.some(
      (kept) => kept.cls === candidate.cls && iou(kept.box, candidate.box) >= duplicateIou,
    );
    if (duplicate) {
      drop('duplicate', candidate.cls, candidate.written);
      continue;
    }
    boxes.push(candidate);
  }
  return { boxes, clamped };
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}

async function isVocDir(path: string): Promise<boolean> {
  return (await isDirectory(join(path, 'Annotations'))) && (await isDirectory(join(path, 'JPEGImages')));
}

/**
 * The directory that holds Annotations/ and JPEGImages/ for a dataset root (`<root>/BCCD`), the `BCCD/`
 * directory itself, or its `JPEGImages/`; undefined when `dir` is none of these.
 */
export async function findBccdVocDir(dir: string): Promise<string | undefined> {
  if (await isVocDir(join(dir, 'BCCD'))) return join(dir, 'BCCD');
  if (await isVocDir(dir)) return dir;
  if (basename(dir) === 'JPEGImages' && (await isVocDir(dirname(dir)))) return dirname(dir);
  return undefined;
}

/** Whether `dir` is a dataset root with `BCCD/Annotations` and `BCCD/JPEGImages` (what auto-detection accepts). */
export async function isBccdRoot(dir: string): Promise<boolean> {
  return isVocDir(join(dir, 'BCCD'));
}

async function readSplitList(vocDir: string, split: SplitName): Promise<string[]> {
  const file = join(vocDir, 'ImageSets', 'Main', `${split}.txt`);
  let content: string;
  try {
    content = await readFile(file, 'utf8');
  } catch {
    throw new MeloError('NOT_FOUND', `BCCD split list is missing (expected ImageSets/Main/${split}.txt)`, {
      file,
    });
  }
  return content
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line !== '');
}

function validateOptions(options: OpenBccdOptions): void {
  for (const cls of options.classes ?? []) {
    if (!isBccdClass(cls)) {
      throw new MeloError('USAGE', `BCCD class '${cls}' is not one of ${BCCD_CLASSES.join(', ')}`);
    }
  }
  if (options.classes !== undefined && options.classes.length === 0) {
    throw new MeloError('USAGE', 'BCCD classes option is empty; name at least one of Platelets, RBC, WBC');
  }
  for (const [cls, cap] of Object.entries(options.maxPerImage ?? {})) {
    if (!isBccdClass(cls)) throw new MeloError('USAGE', `BCCD maxPerImage names unknown class '${cls}'`);
    if (cap !== undefined && !(Number.isInteger(cap) && cap >= 0)) {
      throw new MeloError('USAGE', `BCCD maxPerImage.${cls} must be a whole number >= 0, got ${cap}`);
    }
  }
  const margin = options.margin ?? 0;
  if (!(Number.isInteger(margin) && margin >= 0)) {
    throw new MeloError('USAGE', `BCCD margin must be a whole number of pixels >= 0, got ${margin}`);
  }
  const threshold = options.duplicateIou ?? BCCD_DEFAULT_DUPLICATE_IOU;
  if (!(threshold > 0 && threshold <= 1)) {
    throw new MeloError('USAGE', `BCCD duplicateIou must be in (0, 1], got ${threshold}`);
  }
}

/** Opens BCCD as cell-crop classification splits; see the module comment for every convention. */
export async function openBccd(dir: string, options: OpenBccdOptions = {}): Promise<DataSplits> {
  return (await openBccdWithReport(dir, options)).splits;
}

/** `openBccd`, plus what was read, dropped, clamped and capped. */
export async function openBccdWithReport(dir: string, options: OpenBccdOptions = {}): Promise<BccdOpened> {
  validateOptions(options);
  const vocDir = await findBccdVocDir(dir);
  if (vocDir === undefined) {
    throw new MeloError(
      'NOT_FOUND',
      'is not a BCCD dataset (expected BCCD/Annotations and BCCD/JPEGImages, or Annotations and JPEGImages)',
      { file: dir },
    );
  }
  const selected = BCCD_CLASSES.filter(
    (cls) => options.classes === undefined || options.classes.includes(cls),
  );
  const duplicateIou = options.duplicateIou ?? BCCD_DEFAULT_DUPLICATE_IOU;
  const margin = options.margin ?? 0;
  const random = new Random(options.seed ?? 0);
  const wanted = SPLIT_NAMES.filter(
    (split) => options.splits === undefined || options.splits.includes(split),
  );

  const jpegNames = new Set(await readdir(join(vocDir, 'JPEGImages')));
  const annotationNames = new Set(await readdir(join(vocDir, 'Annotations')));
  const lists = new Map<SplitName, string[]>();
  const splitOf = new Map<string, SplitName>();
  // All three lists are checked for overlap even when only some splits are wanted.
  for (const split of SPLIT_NAMES) {
    const ids = await readSplitList(vocDir, split);
    for (const id of ids) {
      const earlier = splitOf.get(id);
      if (earlier !== undefined) {
        throw new MeloError('BAD_DATA', `image ${id} is listed in both the ${earlier} and ${split} splits`, {
          file: join(vocDir, 'ImageSets', 'Main', `${split}.txt`),
        });
      }
      splitOf.set(id, split);
    }
    lists.set(split, ids);
  }

  const cache = new DecodedJpegCache(DECODED_CACHE_IMAGES);
  const dropped: Record<BccdDropReason, number> = {
    degenerate: 0,
    outside: 0,
    duplicate: 0,
    conflicting: 0,
    'unknown-class': 0,
    malformed: 0,
  };
  const droppedBoxes: BccdDroppedBox[] = [];
  let images = 0;
  let boxCount = 0;
  let clamped = 0;
  let capped = 0;
  let excludedByClass = 0;
  const splits: DataSplits = {};
  const itemCounts: Partial<Record<SplitName, number>> = {};

  for (const split of wanted) {
    const listFile = join(vocDir, 'ImageSets', 'Main', `${split}.txt`);
    const items: DataItem[] = [];
    for (const id of lists.get(split) ?? []) {
      if (!jpegNames.has(`${id}.jpg`)) {
        throw new MeloError('BAD_DATA', `lists ${id} but JPEGImages has no ${id}.jpg`, { file: listFile });
      }
      if (!annotationNames.has(`${id}.xml`)) {
        throw new MeloError('BAD_DATA', `lists ${id} but Annotations has no ${id}.xml`, { file: listFile });
      }
      const annotationFile = join(vocDir, 'Annotations', `${id}.xml`);
      const jpeg = join(vocDir, 'JPEGImages', `${id}.jpg`);
      const parsed = parseVocAnnotation(await readFile(annotationFile, 'utf8'), annotationFile);
      images++;
      boxCount += parsed.objects.length;
      const cleaned = cleanBoxes(parsed, duplicateIou, (reason, name, box) => {
        dropped[reason]++;
        droppedBoxes.push({ annotation: annotationFile, split, name, box, reason });
      });
      clamped += cleaned.clamped;

      const kept = new Set<AnnotatedBox>();
      for (const cls of BCCD_CLASSES) {
        const ofClass = cleaned.boxes.filter((box) => box.cls === cls);
        if (!selected.includes(cls)) {
          excludedByClass += ofClass.length;
          continue;
        }
        const cap = options.maxPerImage?.[cls];
        const chosen =
          cap !== undefined && ofClass.length > cap ? random.shuffle([...ofClass]).slice(0, cap) : ofClass;
        capped += ofClass.length - chosen.length;
        for (const box of chosen) kept.add(box);
      }
      const size = { width: parsed.width, height: parsed.height };
      for (const box of cleaned.boxes) {
        if (!kept.has(box)) continue;
        items.push(cropItem(jpeg, size, box, selected.indexOf(box.cls), margin, cache));
      }
    }
    itemCounts[split] = items.length;
    splits[split] = {
      name: 'bccd',
      source: dir,
      taskType: singleLabelTaskType(selected.length),
      classes: selected,
      items,
    };
  }

  return {
    splits,
    report: {
      vocDir,
      images,
      boxes: boxCount,
      dropped,
      droppedBoxes,
      clamped,
      capped,
      excludedByClass,
      items: itemCounts,
    },
  };
}

/** The crop rectangle in sharp's terms (0-based left/top, width/height) for a box plus margin. */
export function bccdCropRegion(
  box: { readonly xmin: number; readonly ymin: number; readonly xmax: number; readonly ymax: number },
  image: { readonly width: number; readonly height: number },
  margin = 0,
): { left: number; top: number; width: number; height: number } {
  const left = Math.max(0, box.xmin - 1 - margin);
  const top = Math.max(0, box.ymin - 1 - margin);
  const right = Math.min(image.width, box.xmax + margin);
  const bottom = Math.min(image.height, box.ymax + margin);
  return { left, top, width: right - left, height: bottom - top };
}

function cropItem(
  jpeg: string,
  size: { width: number; height: number },
  annotated: AnnotatedBox,
  label: number,
  margin: number,
  cache: DecodedJpegCache,
): DataItem {
  const region = bccdCropRegion(annotated.box, size, margin);
  return {
    id: `${jpeg}#${annotated.written}`,
    file: jpeg,
    labels: [label],
    load: async () => {
      const decoded = await cache.get(jpeg);
      if (decoded.width !== size.width || decoded.height !== size.height) {
        throw new MeloError(
          'BAD_DATA',
          `is ${decoded.width}×${decoded.height} but its annotation says ${size.width}×${size.height}`,
          { file: jpeg },
        );
      }
      return cropToUnit(decoded, region);
    },
  };
}

interface RgbImage {
  readonly width: number;
  readonly height: number;
  /** 8-bit sRGB, HWC. */
  readonly data: Uint8Array;
}

const UINT8_TO_UNIT = Float32Array.from({ length: 256 }, (_, value) => value / 255);

function cropToUnit(
  image: RgbImage,
  region: { left: number; top: number; width: number; height: number },
): DecodedImage {
  const data = new Float32Array(region.width * region.height * 3);
  const rowLength = region.width * 3;
  for (let y = 0; y < region.height; y++) {
    const from = ((region.top + y) * image.width + region.left) * 3;
    const to = y * rowLength;
    for (let i = 0; i < rowLength; i++) data[to + i] = UINT8_TO_UNIT[image.data[from + i]];
  }
  return { width: region.width, height: region.height, channels: 3, data };
}

/**
 * Whole JPEGs decoded to 8-bit RGB, least recently used first out. Concurrent loads of one image share
 * one decode; a failed decode is not kept, so a later load retries and reports the error again.
 */
class DecodedJpegCache {
  private readonly entries = new Map<string, Promise<RgbImage>>();

  constructor(private readonly capacity: number) {}

  get(path: string): Promise<RgbImage> {
    const cached = this.entries.get(path);
    if (cached !== undefined) {
      this.entries.delete(path);
      this.entries.set(path, cached);
      return cached;
    }
    const decoding = decodeRgb(path);
    decoding.catch(() => {
      if (this.entries.get(path) === decoding) this.entries.delete(path);
    });
    this.entries.set(path, decoding);
    while (this.entries.size > this.capacity) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.delete(oldest);
    }
    return decoding;
  }
}

async function decodeRgb(path: string): Promise<RgbImage> {
  try {
    // The same pipeline readImageFile uses for an 8-bit colour JPEG, so a crop equals the same region of
    // the whole image decoded as a file item; grey JPEGs become three equal channels.
    const { data, info } = await sharp(path, { failOn: 'warning', limitInputPixels: DEFAULT_MAX_PIXELS })
      .autoOrient()
      .removeAlpha()
      .toColourspace('srgb')
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`decoder produced ${info.channels} channels, expected 3`);
    return { width: info.width, height: info.height, data };
  } catch (error) {
    const reason =
      ((error as Error).message.split('\n')[0] ?? '').trim().replace(/:$/, '') || 'unknown error';
    throw new MeloError('BAD_IMAGE', `not a decodable image (${reason})`, { file: path, cause: error });
  }
}
