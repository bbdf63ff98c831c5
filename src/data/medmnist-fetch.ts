/**
 * Downloads MedMNIST `.npz` files from their official Zenodo record into a local cache, verifying each
 * against its published md5. Verification is the default and is not optional by accident: a file whose
 * md5 melo does not know is refused unless the caller passes the expected md5 (from the record's file
 * list) or explicitly turns verification off. A cached file that verifies is used without any network.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rename, stat, unlink } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { MeloError } from '../errors.ts';

/** The MedMNIST v2 (v3.0 files) record on Zenodo. */
export const MEDMNIST_RECORD_URL = 'https://zenodo.org/records/10519652/files';

/**
 * Published md5 sums, limited to the files whose sums have been checked against a real copy. Others can
 * be fetched by passing the md5 listed on the record (`--md5`) or, knowingly, `--no-verify`.
 */
export const MEDMNIST_MD5: Readonly<Record<string, string>> = {
  'retinamnist.npz': 'bd4c0672f1bba3e3a89f0e4e876791e4',
  'breastmnist_64.npz': '742edef2a1fd1524b2efff4bd7ba9364',
};

export const MEDMNIST_SIZES = [28, 64, 128, 224] as const;
export type MedmnistSize = (typeof MEDMNIST_SIZES)[number];

/** 'retinamnist.npz' for 28 px (MedMNIST's original size has no suffix), 'retinamnist_64.npz' etc. */
export function medmnistFileName(name: string, size: number = 28): string {
  if (!/^[a-z0-9]+$/.test(name)) {
    throw new MeloError(
      'USAGE',
      `MedMNIST name '${name}' must be lower-case letters and digits, e.g. retinamnist`,
    );
  }
  if (!(MEDMNIST_SIZES as readonly number[]).includes(size)) {
    throw new MeloError('USAGE', `MedMNIST size must be one of ${MEDMNIST_SIZES.join(', ')}, got ${size}`);
  }
  return size === 28 ? `${name}.npz` : `${name}_${size}.npz`;
}

/** Where MedMNIST files are cached: $MELO_DATA_DIR, else ~/.cache/melo/medmnist. */
export function medmnistCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const configured = env.MELO_DATA_DIR;
  return configured !== undefined && configured !== ''
    ? configured
    : join(homedir(), '.cache', 'melo', 'medmnist');
}

export interface FetchMedmnistOptions {
  readonly size?: MedmnistSize;
  /** Default: `medmnistCacheDir()`. */
  readonly cacheDir?: string;
  /** Default: $MELO_MEDMNIST_URL, else `MEDMNIST_RECORD_URL`. The file URL is `<base>/<file>?download=1`. */
  readonly baseUrl?: string;
  /** Expected md5 (hex); overrides the built-in table. */
  readonly md5?: string;
  /** Default true. False accepts whatever arrives (the md5 is still computed and reported). */
  readonly verify?: boolean;
  readonly onProgress?: (receivedBytes: number, totalBytes: number | undefined) => void;
}

export interface FetchMedmnistResult {
  readonly path: string;
  readonly md5: string;
  /** False when a cached copy was used. */
  readonly downloaded: boolean;
  /** True when the md5 was checked against an expected value. */
  readonly verified: boolean;
}

export async function md5OfFile(path: string): Promise<string> {
  const hash = createHash('md5');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

export async function fetchMedmnist(
  name: string,
  options: FetchMedmnistOptions = {},
): Promise<FetchMedmnistResult> {
  const fileName = medmnistFileName(name, options.size ?? 28);
  const verify = options.verify ?? true;
  const expected = (options.md5 ?? MEDMNIST_MD5[fileName])?.toLowerCase();
  if (expected !== undefined && !/^[0-9a-f]{32}$/.test(expected)) {
    throw new MeloError('USAGE', `md5 '${options.md5}' is not 32 hexadecimal digits`);
  }
  if (verify && expected === undefined) {
    throw new MeloError(
      'USAGE',
      `melo has no verified md5 for ${fileName}; pass --md5 <sum> from ${MEDMNIST_RECORD_URL.replace(/\/files$/, '')} or --no-verify`,
    );
  }
  const cacheDir = options.cacheDir ?? medmnistCacheDir();
  const destination = join(cacheDir, fileName);

  if (await isFile(destination)) {
    const md5 = await md5OfFile(destination);
    if (expected === undefined || md5 === expected) {
      return { path: destination, md5, downloaded: false, verified: expected !== undefined };
    }
    // A stale or damaged cached copy: download again and replace it atomically below.
  }

  const baseUrl = (options.baseUrl ?? process.env.MELO_MEDMNIST_URL ?? MEDMNIST_RECORD_URL).replace(
    /\/+$/,
    '',
  );
  const url = `${baseUrl}/${fileName}?download=1`;
  await mkdir(cacheDir, { recursive: true });
  const temporary = join(cacheDir, `.${fileName}.${process.pid}.${randomBytes(4).toString('hex')}.part`);
  let md5: string;
  try {
    md5 = await download(url, temporary, options.onProgress);
    if (expected !== undefined && md5 !== expected) {
      throw new MeloError(
        'BAD_DATA',
        `download of ${url} has md5 ${md5}, expected ${expected}; the file was not kept`,
      );
    }
    await rename(temporary, destination);
  } catch (error) {
    await unlink(temporary).catch(() => undefined);
    throw error;
  }
  return { path: destination, md5, downloaded: true, verified: expected !== undefined };
}

/** Streams `url` into `path`, returning the md5 of what was written. */
async function download(
  url: string,
  path: string,
  onProgress: FetchMedmnistOptions['onProgress'],
): Promise<string> {
  let response: Response;
  try {
    response = await fetch(url, { redirect: 'follow' });
  } catch (error) {
    const cause = (error as Error & { cause?: Error }).cause?.message ?? (error as Error).message;
    throw new MeloError('NOT_FOUND', `cannot download ${url}: ${cause}`);
  }
  if (!response.ok || response.body === null) {
    throw new MeloError(
      'NOT_FOUND',
      `cannot download ${url}: HTTP ${response.status} ${response.statusText}`.trim(),
    );
  }
  const totalHeader = response.headers.get('content-length');
  const total = totalHeader === null ? undefined : Number(totalHeader);
  const hash = createHash('md5');
  const handle = await open(path, 'w');
  let received = 0;
  try {
    for await (const chunk of response.body) {
      const bytes = chunk as Uint8Array;
      hash.update(bytes);
      for (let offset = 0; offset < bytes.length; ) {
        offset += (await handle.write(bytes, offset)).bytesWritten;
      }
      received += bytes.length;
      onProgress?.(received, total);
    }
    await handle.sync();
  } catch (error) {
    if (error instanceof MeloError) throw error;
    throw new MeloError(
      'NOT_FOUND',
      `download of ${url} failed after ${received} bytes: ${(error as Error).message}`,
    );
  } finally {
    await handle.close();
  }
  if (total !== undefined && Number.isFinite(total) && received !== total) {
    throw new MeloError('NOT_FOUND', `download of ${url} stopped at ${received} of ${total} bytes`);
  }
  return hash.digest('hex');
}
