/**
 * Hostile DICOM files built in memory (nothing large is committed): deflated bombs, data sets of many
 * elements or deep nesting, and tags filled with text that must never be echoed.
 */
import { createDeflateRaw } from 'node:zlib';

const DEFLATED = '1.2.840.10008.1.2.1.99';
const EXPLICIT_LE = '1.2.840.10008.1.2.1';
const SECONDARY_CAPTURE = '1.2.840.10008.5.1.4.1.1.7';

function even(bytes: Buffer, pad = 0x20): Buffer {
  return bytes.length % 2 === 0 ? bytes : Buffer.concat([bytes, Buffer.from([pad])]);
}

/** One explicit-VR little-endian element. */
export function element(group: number, elementNo: number, vr: string, value: Buffer | string): Buffer {
  const raw = typeof value === 'string' ? even(Buffer.from(value, 'latin1'), vr === 'UI' ? 0 : 0x20) : value;
  const long = ['OB', 'OW', 'SQ', 'UN', 'UT', 'UC', 'UR', 'OD', 'OF', 'OL', 'OV', 'SV', 'UV'].includes(vr);
  const header = Buffer.alloc(long ? 12 : 8);
  header.writeUInt16LE(group, 0);
  header.writeUInt16LE(elementNo, 2);
  header.write(vr, 4, 'latin1');
  if (long) header.writeUInt32LE(raw.length, 8);
  else header.writeUInt16LE(raw.length, 6);
  return Buffer.concat([header, raw]);
}

export function us(value: number): Buffer {
  const bytes = Buffer.alloc(2);
  bytes.writeUInt16LE(value, 0);
  return bytes;
}

/** A Part 10 file: preamble, 'DICM', file meta information declaring `syntax`, then `dataSet`. */
export function part10(syntax: string, dataSet: Buffer): Buffer {
  const meta = Buffer.concat([
    element(0x0002, 0x0001, 'OB', Buffer.from([0, 1])),
    element(0x0002, 0x0002, 'UI', SECONDARY_CAPTURE),
    element(0x0002, 0x0003, 'UI', '1.2.3.4.5.6.7'),
    element(0x0002, 0x0010, 'UI', syntax),
  ]);
  const groupLength = Buffer.alloc(4);
  groupLength.writeUInt32LE(meta.length, 0);
  return Buffer.concat([
    Buffer.alloc(128),
    Buffer.from('DICM', 'latin1'),
    element(0x0002, 0x0000, 'UL', groupLength),
    meta,
    dataSet,
  ]);
}

/** The Image Pixel module of a 16-bit monochrome image. */
export function pixelModule(
  rows: number,
  columns: number,
  extra: Buffer[] = [],
  photometric = 'MONOCHROME2',
): Buffer {
  return Buffer.concat([
    element(0x0008, 0x0016, 'UI', SECONDARY_CAPTURE),
    ...extra,
    element(0x0028, 0x0002, 'US', us(1)),
    element(0x0028, 0x0004, 'CS', photometric),
    element(0x0028, 0x0010, 'US', us(rows)),
    element(0x0028, 0x0011, 'US', us(columns)),
    element(0x0028, 0x0100, 'US', us(16)),
    element(0x0028, 0x0101, 'US', us(16)),
    element(0x0028, 0x0102, 'US', us(15)),
    element(0x0028, 0x0103, 'US', us(0)),
  ]);
}

/** A native 16-bit file of `rows` × `columns` with the given extra elements (sorted by the caller). */
export function nativeDicom(
  rows: number,
  columns: number,
  extra: Buffer[] = [],
  photometric = 'MONOCHROME2',
): Buffer {
  const pixels = Buffer.alloc(rows * columns * 2);
  for (let i = 0; i < rows * columns; i++) pixels.writeUInt16LE((i * 37) % 4096, 2 * i);
  return part10(
    EXPLICIT_LE,
    Buffer.concat([pixelModule(rows, columns, extra, photometric), element(0x7fe0, 0x0010, 'OW', pixels)]),
  );
}

/** An RLE Lossless file of `rows` × `columns` whose one frame is a fragment of `fragmentBytes`. */
export function oversizedRleFrame(rows: number, columns: number, fragmentBytes: number): Buffer {
  const item = (length: number) => {
    const header = Buffer.alloc(8);
    header.writeUInt16LE(0xfffe, 0);
    header.writeUInt16LE(0xe000, 2);
    header.writeUInt32LE(length, 4);
    return header;
  };
  const pixelHeader = Buffer.alloc(12);
  pixelHeader.writeUInt16LE(0x7fe0, 0);
  pixelHeader.writeUInt16LE(0x0010, 2);
  pixelHeader.write('OB', 4, 'latin1');
  pixelHeader.writeUInt32LE(0xffffffff, 8);
  const delimiter = Buffer.alloc(8);
  delimiter.writeUInt16LE(0xfffe, 0);
  delimiter.writeUInt16LE(0xe0dd, 2);
  return part10(
    '1.2.840.10008.1.2.5',
    Buffer.concat([
      pixelModule(rows, columns),
      pixelHeader,
      item(0),
      item(fragmentBytes),
      Buffer.alloc(fragmentBytes),
      delimiter,
    ]),
  );
}

/**
 * A deflated DICOM whose data set inflates to `inflatedBytes`: the header declares `rows` × `columns`
 * 16-bit pixels and Pixel Data holds `inflatedBytes` of zeros (so a header that lies about its size is
 * one call away: pass small rows and columns). Deflated in 1 MiB steps, so the test never holds the
 * inflated bytes.
 */
export async function deflatedBomb(rows: number, columns: number, inflatedBytes: number): Promise<Buffer> {
  const head = pixelModule(rows, columns);
  const pixelHeader = Buffer.alloc(12);
  pixelHeader.writeUInt16LE(0x7fe0, 0);
  pixelHeader.writeUInt16LE(0x0010, 2);
  pixelHeader.write('OW', 4, 'latin1');
  pixelHeader.writeUInt32LE(inflatedBytes, 8);
  const deflate = createDeflateRaw({ level: 9, memLevel: 9 });
  const chunks: Buffer[] = [];
  deflate.on('data', (chunk: Buffer) => chunks.push(chunk));
  const ended = new Promise((resolve, reject) => {
    deflate.on('end', resolve);
    deflate.on('error', reject);
  });
  const write = async (bytes: Buffer) => {
    if (!deflate.write(bytes)) await new Promise((resolve) => deflate.once('drain', resolve));
  };
  await write(head);
  await write(pixelHeader);
  const zeros = Buffer.alloc(1 << 20);
  for (let left = inflatedBytes; left > 0; left -= zeros.length) {
    await write(left >= zeros.length ? zeros : zeros.subarray(0, left));
  }
  deflate.end();
  await ended;
  return part10(DEFLATED, Buffer.concat(chunks));
}

/** A file whose data set holds `count` private elements before an otherwise valid 8 × 8 image. */
export function manyElements(count: number): Buffer {
  const one = element(0x0009, 0x1000, 'SH', 'x'.padEnd(2));
  return nativeDicom(8, 8, [Buffer.concat(new Array<Buffer>(count).fill(one))]);
}

/** A private sequence nested `depth` levels deep (items of defined length) before an 8 × 8 image. */
export function deeplyNested(depth: number): Buffer {
  let inner = element(0x0009, 0x1000, 'SH', 'xy');
  for (let level = 0; level < depth; level++) {
    const item = Buffer.alloc(8);
    item.writeUInt16LE(0xfffe, 0);
    item.writeUInt16LE(0xe000, 2);
    item.writeUInt32LE(inner.length, 4);
    inner = element(0x0009, 0x1010, 'SQ', Buffer.concat([item, inner]));
  }
  return nativeDicom(8, 8, [inner]);
}
