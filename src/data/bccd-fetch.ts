/**
 * Gets BCCD onto this machine: the dataset's public GitHub repository archive is downloaded, unzipped
 * with fflate into a temporary directory next to the cache, checked, and renamed into place, so the
 * cache directory either holds a complete dataset or does not exist. A cache that checks out is used
 * without any network.
 *
 * The repository publishes no checksum for its archive (and GitHub regenerates branch archives), so the
 * check is structural, not cryptographic: Annotations/, JPEGImages/ and ImageSets/Main/{train,val,test}.txt
 * present, and exactly 364 JPEGs with 364 annotations. Only `BCCD/` and the top-level LICENSE, README.md
 * and test.csv are extracted; the repository's scripts are not.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rename, rm, rmdir, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { unzipSync } from 'fflate';
import { MeloError } from '../errors.ts';
import { pathExists } from '../util/fs.ts';
import { BCCD_IMAGE_COUNT, findBccdVocDir } from './bccd.ts';

export const BCCD_ARCHIVE_URL = 'https://github.com/Shenggan/BCCD_Dataset/archive/refs/heads/master.zip';

/** Where BCCD is looked for and downloaded to: $MELO_BCCD_DIR, else ~/.cache/melo/bccd. */
export function bccdCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const configured = env.MELO_BCCD_DIR;
  return configured !== undefined && configured !== ''
    ? configured
    : join(homedir(), '.cache', 'melo', 'bccd');
}

export interface FetchBccdOptions {
  /** The dataset root to fill (it will hold `BCCD/`). Default: `bccdCacheDir(env)`. */
  readonly dir?: string;
  /** The zip to download. Default: $MELO_BCCD_URL, else `BCCD_ARCHIVE_URL`. */
  readonly url?: string;
  readonly env?: NodeJS.ProcessEnv;
  /** JPEGs (and annotations) a complete copy has. Default 364; only tests of small archives change it. */
  readonly expectedImages?: number;
  readonly onProgress?: (receivedBytes: number, totalBytes: number | undefined) => void;
}

export interface FetchBccdResult {
  /** The dataset root, holding `BCCD/`. */
  readonly dir: string;
  /** False when a complete copy was already there. */
  readonly downloaded: boolean;
}

async function isEmptyDirectory(path: string): Promise<boolean> {
  try {
    return (await readdir(path)).length === 0;
  } catch {
    return false;
  }
}

/**
 * Checks that `vocDir` (the `BCCD/` directory) is a complete copy; throws a one-line MeloError naming
 * what is missing. Returns the number of images.
 */
export async function verifyBccdLayout(vocDir: string, expectedImages = BCCD_IMAGE_COUNT): Promise<number> {
  const listing = async (sub: string, extension: string): Promise<string[]> => {
    const path = join(vocDir, sub);
    try {
      return (await readdir(path)).filter((name) => name.toLowerCase().endsWith(extension));
    } catch {
      throw new MeloError('BAD_DATA', `is not a complete BCCD copy: ${sub}/ is missing`, { file: vocDir });
    }
  };
  const jpegs = await listing('JPEGImages', '.jpg');
  const annotations = await listing('Annotations', '.xml');
  for (const split of ['train', 'val', 'test']) {
    if (!(await pathExists(join(vocDir, 'ImageSets', 'Main', `${split}.txt`)))) {
      throw new MeloError('BAD_DATA', `is not a complete BCCD copy: ImageSets/Main/${split}.txt is missing`, {
        file: vocDir,
      });
    }
  }
  if (jpegs.length !== expectedImages || annotations.length !== expectedImages) {
    throw new MeloError(
      'BAD_DATA',
      `is not a complete BCCD copy: ${jpegs.length} JPEGs and ${annotations.length} annotations, expected ${expectedImages} of each`,
      { file: vocDir },
    );
  }
  return jpegs.length;
}

/** Downloads and unpacks BCCD unless `dir` already holds a complete copy; see the module comment. */
export async function fetchBccd(options: FetchBccdOptions = {}): Promise<FetchBccdResult> {
  const env = options.env ?? process.env;
  const dir = options.dir ?? bccdCacheDir(env);
  const expectedImages = options.expectedImages ?? BCCD_IMAGE_COUNT;

  if (await pathExists(dir)) {
    const vocDir = join(dir, 'BCCD');
    if (await findBccdVocDir(dir).then((found) => found === vocDir)) {
      await verifyBccdLayout(vocDir, expectedImages);
      return { dir, downloaded: false };
    }
    // Never delete or fill a directory that holds something else.
    if (!(await isEmptyDirectory(dir))) {
      throw new MeloError(
        'BAD_DATA',
        'exists but holds no BCCD/ dataset; remove it or choose another directory to download BCCD into',
        { file: dir },
      );
    }
  }

  const url = options.url ?? env.MELO_BCCD_URL ?? BCCD_ARCHIVE_URL;
  const archive = await download(url, options.onProgress);
  const files = bccdEntries(archive, url);

  await mkdir(dirname(dir), { recursive: true });
  const temporary = join(
    dirname(dir),
    `.${basename(dir)}.${process.pid}.${randomBytes(4).toString('hex')}.part`,
  );
  try {
    for (const [relative, bytes] of files) {
      const path = join(temporary, relative);
      await mkdir(dirname(path), { recursive: true });
      await writeFile(path, bytes);
    }
    await verifyBccdLayout(join(temporary, 'BCCD'), expectedImages).catch((error: unknown) => {
      const prefix = error instanceof MeloError && error.file !== undefined ? `${error.file}: ` : '';
      const reason = error instanceof Error ? error.message.slice(prefix.length) : String(error);
      throw new MeloError('BAD_DATA', `archive ${url} ${reason}; nothing was kept`);
    });
    // rename() replaces an empty directory but not a full one, so a copy that another process finished
    // meanwhile is kept and ours is discarded below.
    if (await isEmptyDirectory(dir)) await rmdir(dir);
    try {
      await rename(temporary, dir);
    } catch (error) {
      if ((await findBccdVocDir(dir)) === join(dir, 'BCCD')) return { dir, downloaded: true };
      throw new MeloError(
        'BAD_DATA',
        `cannot move the unpacked dataset into place (${(error as Error).message})`,
        {
          file: dir,
        },
      );
    }
  } finally {
    await rm(temporary, { recursive: true, force: true });
  }
  return { dir, downloaded: true };
}

const TOP_LEVEL_FILES = new Set(['LICENSE', 'README.md', 'test.csv']);
const DATA_ENTRY = /^BCCD\/(?:Annotations|JPEGImages|ImageSets\/Main)\/([^/]+)$/;

/**
 * The archive's files to keep, as (path under the dataset root, bytes). GitHub archives put everything
 * under one `<repo>-<branch>/` folder; that folder (or none) is stripped.
 */
function bccdEntries(archive: Uint8Array, url: string): Map<string, Uint8Array> {
  const keep = (name: string): string | undefined => {
    const rest = name.includes('/') && !name.startsWith('BCCD/') ? name.slice(name.indexOf('/') + 1) : name;
    if (rest.startsWith('BCCD/')) {
      const match = DATA_ENTRY.exec(rest);
      if (match === null) return undefined;
      if (match[1] === '.' || match[1] === '..' || match[1].includes('\\')) {
        throw new MeloError(
          'BAD_DATA',
          `archive ${url} has an unsafe entry name '${name}'; nothing was kept`,
        );
      }
      return rest;
    }
    return TOP_LEVEL_FILES.has(rest) ? rest : undefined;
  };
  let unpacked: Record<string, Uint8Array>;
  try {
    unpacked = unzipSync(archive, { filter: (file) => keep(file.name) !== undefined });
  } catch (error) {
    if (error instanceof MeloError) throw error;
    throw new MeloError(
      'BAD_DATA',
      `download of ${url} is not a readable zip archive (${(error as Error).message}); nothing was kept`,
    );
  }
  const files = new Map<string, Uint8Array>();
  for (const [name, bytes] of Object.entries(unpacked)) {
    const relative = keep(name);
    if (relative !== undefined) files.set(relative, bytes);
  }
  if (![...files.keys()].some((name) => name.startsWith('BCCD/'))) {
    throw new MeloError('BAD_DATA', `archive ${url} holds no BCCD/ folder; nothing was kept`);
  }
  return files;
}

async function download(url: string, onProgress: FetchBccdOptions['onProgress']): Promise<Uint8Array> {
  const hint = '(offline? pass --bccd <dir> or set MELO_BCCD_DIR to a local copy)';
  let response: Response;
  try {
    response = await fetch(url, { redirect: 'follow' });
  } catch (error) {
    const cause = (error as Error & { cause?: Error }).cause?.message ?? (error as Error).message;
    throw new MeloError('NOT_FOUND', `cannot download ${url}: ${cause} ${hint}`);
  }
  if (!response.ok || response.body === null) {
    throw new MeloError(
      'NOT_FOUND',
      `cannot download ${url}: HTTP ${response.status} ${response.statusText} ${hint}`,
    );
  }
  const totalHeader = response.headers.get('content-length');
  const total = totalHeader === null ? undefined : Number(totalHeader);
  const chunks: Uint8Array[] = [];
  let received = 0;
  try {
    for await (const chunk of response.body) {
      chunks.push(chunk as Uint8Array);
      received += (chunk as Uint8Array).length;
      onProgress?.(received, total);
    }
  } catch (error) {
    throw new MeloError(
      'NOT_FOUND',
      `download of ${url} failed after ${received} bytes: ${(error as Error).message}`,
    );
  }
  if (total !== undefined && Number.isFinite(total) && received !== total) {
    throw new MeloError('NOT_FOUND', `download of ${url} stopped at ${received} of ${total} bytes`);
  }
  return Buffer.concat(chunks);
}

export interface ResolveBccdOptions {
  /** `--bccd <dir>`: a local copy (the root holding BCCD/, BCCD/ itself, or its JPEGImages/). */
  readonly flag?: string;
  readonly env?: NodeJS.ProcessEnv;
  /** Passed to `fetchBccd` when nothing local is found (url, progress; `dir` defaults to the cache). */
  readonly fetch?: Omit<FetchBccdOptions, 'env'>;
}

/**
 * The dataset root holding `BCCD/`: the `--bccd` flag if given (it must hold BCCD), else $MELO_BCCD_DIR
 * if it holds BCCD, else a download into $MELO_BCCD_DIR or ~/.cache/melo/bccd. A `BCCD/` directory not
 * named BCCD is returned as is (`openBccd` accepts it either way).
 */
export async function resolveBccdDir(options: ResolveBccdOptions = {}): Promise<string> {
  const env = options.env ?? process.env;
  const rootOf = (vocDir: string): string => (basename(vocDir) === 'BCCD' ? dirname(vocDir) : vocDir);
  if (options.flag !== undefined) {
    const vocDir = await findBccdVocDir(options.flag);
    if (vocDir === undefined) {
      throw new MeloError(
        'NOT_FOUND',
        '--bccd: no BCCD dataset here (expected BCCD/Annotations and BCCD/JPEGImages)',
        {
          file: options.flag,
        },
      );
    }
    return rootOf(vocDir);
  }
  const configured = env.MELO_BCCD_DIR;
  if (configured !== undefined && configured !== '') {
    const vocDir = await findBccdVocDir(configured);
    if (vocDir !== undefined) return rootOf(vocDir);
  }
  return (await fetchBccd({ ...options.fetch, env })).dir;
}
