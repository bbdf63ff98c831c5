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
 * The md5 sums the MedMNIST v2 record publishes for every 2D file (all four sizes), as listed in the
 * official `medmnist` package's INFO table. The two files in ../shared/data (retinamnist.npz,
 * breastmnist_64.npz) hash to exactly these values. A file the record does not list needs `--md5` or,
 * knowingly, `--no-verify`.
 */
export const MEDMNIST_MD5: Readonly<Record<string, string>> = {
  'bloodmnist.npz': '7053d0359d879ad8a5505303e11de1dc',
  'bloodmnist_128.npz': 'adace1e0ed228fccda1f39692059dd4c',
  'bloodmnist_224.npz': 'b718ff6835fcbdb22ba9eacccd7b2601',
  'bloodmnist_64.npz': '2b94928a2ae4916078ca51e05b6b800b',
  'breastmnist.npz': '750601b1f35ba3300ea97c75c52ff8f6',
  'breastmnist_128.npz': '363e4b3f8d712e9b5de15470a2aaadf1',
  'breastmnist_224.npz': 'b56378a6eefa9fed602bb16d192d4c8b',
  'breastmnist_64.npz': '742edef2a1fd1524b2efff4bd7ba9364',
  'chestmnist.npz': '02c8a6516a18b556561a56cbdd36c4a8',
  'chestmnist_128.npz': 'db107e5590b27930b62dbaf558aebee3',
  'chestmnist_224.npz': '45bd33e6f06c3e8cdb481c74a89152aa',
  'chestmnist_64.npz': '9de6cd0b934ebb5b7426cfba5efbae16',
  'dermamnist.npz': '0744692d530f8e62ec473284d019b0c7',
  'dermamnist_128.npz': '2defd784463fa5243564e855ed717de1',
  'dermamnist_224.npz': '8974907d8e169bef5f5b96bc506ae45d',
  'dermamnist_64.npz': 'b70a2f5635c6199aeaa28c31d7202e1f',
  'octmnist.npz': 'c68d92d5b585d8d81f7112f81e2d0842',
  'octmnist_128.npz': '0a97e76651ace45c5d943ee3f65b63ae',
  'octmnist_224.npz': 'abc493b6d529d5de7569faaef2773ba3',
  'octmnist_64.npz': 'e229e9440236b774d9f0dfef9d07bdaf',
  'organamnist.npz': '68e3f8846a6bd62f0c9bf841c0d9eacc',
  'organamnist_128.npz': 'eeae80d0a227a8d099027e1b3cfd3b60',
  'organamnist_224.npz': '50747347e05c87dd3aaf92c49f9f3170',
  'organamnist_64.npz': '2dcccc29b88e6da5a01161ef20cda288',
  'organcmnist.npz': 'b9ceb9546e10131b32923c5bbeaea2b1',
  'organcmnist_128.npz': '773c1f009daa3fe5d9a2a201b2a7ed94',
  'organcmnist_224.npz': '050f5e875dc056f6768abf94ec9995d1',
  'organcmnist_64.npz': '3ce34a8724ea6f548e6db4744d03b6a9',
  'organsmnist.npz': '9ab87b696fb54e2a387ebe992d6ed5f1',
  'organsmnist_128.npz': 'ded0c5fa01a95dc4978b956f613e9b8e',
  'organsmnist_224.npz': 'b354719e553fbbb2513d5533f52a4cb1',
  'organsmnist_64.npz': '53a6d115339d874c25e309a994ff46d3',
  'pathmnist.npz': 'a8b06965200029087d5bd730944a56c1',
  'pathmnist_128.npz': 'ac42d08fb904d92c244187169d1fd1d9',
  'pathmnist_224.npz': '2c51a510bcdc9cf8ddb2af93af1eadec',
  'pathmnist_64.npz': '55aa9c1e0525abe5a6b9d8343a507616',
  'pneumoniamnist.npz': '28209eda62fecd6e6a2d98b1501bb15f',
  'pneumoniamnist_128.npz': '05b46931834c231683c68f40c47b2971',
  'pneumoniamnist_224.npz': 'd6a3c71de1b945ea11211b03746c1fe1',
  'pneumoniamnist_64.npz': '8f4eceb4ccffa70c672198ea285246c6',
  'retinamnist.npz': 'bd4c0672f1bba3e3a89f0e4e876791e4',
  'retinamnist_128.npz': 'e48e916a24454daf90583d4e6efb1a18',
  'retinamnist_224.npz': 'eae7e3b6f3fcbda4ae613ebdcbe35348',
  'retinamnist_64.npz': 'afda852cc34dcda56f86ad2b2457dbcc',
  'tissuemnist.npz': 'ebe78ee8b05294063de985d821c1c34b',
  'tissuemnist_128.npz': '61b955355d7425a89687b06cca3ce0c2',
  'tissuemnist_224.npz': 'b077128c4a949f0a4eb01517f9037b9c',
  'tissuemnist_64.npz': '123ece2eba09d0aa5d698fda57103344',
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
