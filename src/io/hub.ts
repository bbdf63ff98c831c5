/**
 * `melo pull`: a backbone from the Hugging Face Hub (or a mirror), safetensors and JSON only.
 *
 * Only `config.json`, `preprocessor_config.json`, `model.safetensors` or a sharded
 * `model.safetensors.index.json` with the shards it names are downloaded; for an open_clip repository
 * without those (BiomedCLIP's layout), `open_clip_config.json` and `open_clip_model.safetensors`. The
 * model card's licence (Hub metadata: `cardData.license`, else a `license:` tag) is reported, with a
 * warning when it is non-commercial (RETFound's CC BY-NC). Pickle files (*.bin, *.pt, *.pth,
 * *.ckpt, *.pkl) are never downloaded: loading them can run arbitrary code. Every file is checked against
 * the Hub's listing (size; sha256 for LFS files, the git blob id otherwise), the result must load as a
 * backbone, and only then does the directory appear under its final name (staging directory + rename).
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { downloadFile, HubApiError, listFiles, modelInfo } from '@huggingface/hub';
import { type Backbone, loadBackbone } from '../checkpoints/load.ts';
import { SAFETENSORS_INDEX_FILE, SAFETENSORS_SINGLE_FILE } from '../checkpoints/safetensors.ts';
import { MeloError } from '../errors.ts';
import { writeFileAtomic, writeJsonAtomic } from './atomic.ts';

export const DEFAULT_HUB_URL = 'https://huggingface.co';
/** Where the pulled files came from, written next to them. */
export const PULL_RECORD_FILE = 'melo_pull.json';

const CONFIG_FILE = 'config.json';
const PREPROCESSOR_FILE = 'preprocessor_config.json';
const OPEN_CLIP_CONFIG_FILE = 'open_clip_config.json';
const OPEN_CLIP_WEIGHTS_FILE = 'open_clip_model.safetensors';
const PICKLE = /\.(bin|pt|pth|ckpt|pkl|pickle)$/i;

export interface PullOptions {
  /** Branch, tag or commit; default 'main'. */
  readonly revision?: string;
  /** Target directory; default ./<repo name>. */
  readonly out?: string;
  /** Hub address; default $MELO_HUB_URL, else $HF_ENDPOINT, else https://huggingface.co. */
  readonly hubUrl?: string;
  /** Token for gated or private repositories; default $HF_TOKEN. */
  readonly accessToken?: string;
  /** Replace an existing non-empty target directory. */
  readonly force?: boolean;
  /** Progress and notes, one line each. */
  readonly log?: (line: string) => void;
  readonly env?: NodeJS.ProcessEnv;
}

export interface PulledFile {
  readonly path: string;
  readonly bytes: number;
  readonly sha256: string;
}

export interface PullResult {
  readonly repo: string;
  readonly revision: string;
  readonly hubUrl: string;
  readonly dir: string;
  readonly files: readonly PulledFile[];
  /** Files in the repository that were not downloaded, with why. */
  readonly skipped: readonly { readonly path: string; readonly reason: string }[];
  readonly layout: Backbone['layout'];
  readonly fingerprint: string;
  readonly numClasses: number;
  /** The licence the model card declares (SPDX-like Hub id such as 'mit', 'cc-by-nc-4.0'), when it names one. */
  readonly license?: string;
  /** True when that licence forbids commercial use (CC BY-NC and the like). */
  readonly nonCommercial: boolean;
}

interface ListedFile {
  readonly path: string;
  readonly size: number;
  readonly oid?: string;
  readonly lfs?: { readonly oid: string; readonly size: number };
}

export function resolveHubUrl(explicit?: string, env: NodeJS.ProcessEnv = process.env): string {
  const url = explicit ?? env.MELO_HUB_URL ?? env.HF_ENDPOINT ?? DEFAULT_HUB_URL;
  try {
    const parsed = new URL(url);
    if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') throw new Error('not http(s)');
  } catch {
    throw new MeloError('USAGE', `hub URL '${url}' is not an http(s) address`);
  }
  return url.replace(/\/+$/, '');
}

/** Model repositories only: 'owner/name' (or a legacy bare 'name'). */
function checkRepoId(repo: string): void {
  if (!/^(?:[A-Za-z0-9][\w.-]*\/)?[A-Za-z0-9][\w.-]*$/.test(repo) || repo.includes('..')) {
    throw new MeloError('USAGE', `'${repo}' is not a model repository id (expected owner/name)`);
  }
}

/** Downloads a backbone and returns what was written; see the module comment for the rules. */
export async function pullBackbone(repo: string, options: PullOptions = {}): Promise<PullResult> {
  checkRepoId(repo);
  const env = options.env ?? process.env;
  const revision = options.revision ?? 'main';
  const hubUrl = resolveHubUrl(options.hubUrl, env);
  const accessToken = options.accessToken ?? env.HF_TOKEN ?? env.HUGGING_FACE_HUB_TOKEN;
  const log = options.log ?? (() => {});
  const where = `${hubUrl}/${repo}@${revision}`;
  const hub = { repo, revision, hubUrl, ...(accessToken ? { accessToken } : {}) };

  const listed = new Map<string, ListedFile>();
  try {
    for await (const entry of listFiles({ ...hub, recursive: true })) {
      if (entry.type === 'file') listed.set(entry.path, entry);
    }
  } catch (error) {
    throw hubError(error, where, 'cannot list the repository');
  }

  const out = resolve(options.out ?? basename(repo));
  const existing = await readdir(out).catch(() => undefined);
  if (existing && existing.length > 0 && !options.force) {
    throw new MeloError('USAGE', 'directory exists and is not empty; choose another --out or pass --force', {
      file: out,
    });
  }

  const skipped = [...listed.keys()]
    .filter((path) => PICKLE.test(path))
    .map((path) => ({ path, reason: 'pickle (never downloaded: loading pickle can run code)' }));
  for (const { path, reason } of skipped) log(`skipped ${path}: ${reason}`);
  const hasIndex = listed.has(SAFETENSORS_INDEX_FILE);
  const hasHfWeights = hasIndex || listed.has(SAFETENSORS_SINGLE_FILE);
  // An open_clip repository (BiomedCLIP) has no config.json, or no HF weights next to it.
  const openClip = listed.has(OPEN_CLIP_CONFIG_FILE) && !(listed.has(CONFIG_FILE) && hasHfWeights);
  if (!openClip && !listed.has(CONFIG_FILE))
    throw new MeloError(
      'BAD_CHECKPOINT',
      `the repository has no ${CONFIG_FILE} or ${OPEN_CLIP_CONFIG_FILE}`,
      {
        file: where,
      },
    );
  if (openClip ? !listed.has(OPEN_CLIP_WEIGHTS_FILE) : !hasHfWeights) {
    const pickles = skipped.map((item) => item.path);
    const wanted = openClip
      ? OPEN_CLIP_WEIGHTS_FILE
      : `${SAFETENSORS_SINGLE_FILE} or ${SAFETENSORS_INDEX_FILE}`;
    throw new MeloError(
      'UNSUPPORTED',
      pickles.length > 0
        ? `the repository has only pickle weights (${pickles.join(', ')}); melo reads safetensors only, never pickle`
        : `the repository has no ${wanted}`,
      { file: where },
    );
  }
  const license = await readLicense(hub, log);

  await mkdir(dirname(out), { recursive: true });
  const staging = `${out}.partial-${process.pid}-${Date.now().toString(36)}`;
  await mkdir(staging);
  try {
    const files: PulledFile[] = [];
    const fetchOne = async (path: string): Promise<void> => {
      const entry = listed.get(path);
      if (!entry)
        throw new MeloError('BAD_CHECKPOINT', `${path} is not in the repository listing`, { file: where });
      files.push(await downloadVerified(hub, entry, join(staging, path), where));
      log(`downloaded ${path} (${formatBytes(files.at(-1)!.bytes)})`);
    };
    if (openClip) {
      await fetchOne(OPEN_CLIP_CONFIG_FILE);
      await fetchOne(OPEN_CLIP_WEIGHTS_FILE);
    } else {
      await fetchOne(CONFIG_FILE);
      if (listed.has(PREPROCESSOR_FILE)) await fetchOne(PREPROCESSOR_FILE);
    }
    if (!openClip && hasIndex) {
      await fetchOne(SAFETENSORS_INDEX_FILE);
      for (const shard of await shardsOf(join(staging, SAFETENSORS_INDEX_FILE), where)) {
        if (!listed.has(shard)) {
          throw new MeloError(
            'BAD_CHECKPOINT',
            `${SAFETENSORS_INDEX_FILE} names shard '${shard}', which the repository lacks`,
            {
              file: where,
            },
          );
        }
        await fetchOne(shard);
      }
    } else if (!openClip) {
      await fetchOne(SAFETENSORS_SINGLE_FILE);
    }

    let backbone: Backbone;
    try {
      backbone = await loadBackbone(staging);
    } catch (error) {
      const message =
        error instanceof Error
          ? error.message.replace(`${staging}/`, '').replace(staging, '')
          : String(error);
      throw new MeloError('BAD_CHECKPOINT', `the downloaded files do not load as a backbone: ${message}`, {
        file: where,
      });
    }
    await writeJsonAtomic(join(staging, PULL_RECORD_FILE), {
      repo,
      revision,
      hubUrl,
      ...(license ? { license } : {}),
      files,
    });
    await moveIntoPlace(staging, out, existing !== undefined);
    return {
      repo,
      revision,
      hubUrl,
      dir: out,
      files,
      skipped,
      layout: backbone.layout,
      fingerprint: backbone.fingerprint,
      numClasses: backbone.config.numClasses,
      ...(license ? { license } : {}),
      nonCommercial: license !== undefined && isNonCommercialLicense(license),
    };
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

/**
 * The licence the model card names, from the Hub's model metadata (`cardData.license`, else a
 * `license:<id>` tag; 'other' with its `license_name`). Mirrors without the metadata API, or cards
 * without a licence, give undefined: the pull goes on, and says so.
 */
async function readLicense(
  hub: { repo: string; revision: string; hubUrl: string; accessToken?: string },
  log: (line: string) => void,
): Promise<string | undefined> {
  let info: { cardData?: unknown; tags?: unknown };
  try {
    info = await modelInfo({
      name: hub.repo,
      hubUrl: hub.hubUrl,
      revision: hub.revision,
      additionalFields: ['cardData', 'tags'],
      ...(hub.accessToken ? { accessToken: hub.accessToken } : {}),
    });
  } catch {
    log('licence: unknown (the Hub gave no model metadata); check the model card');
    return undefined;
  }
  const card = (info.cardData ?? {}) as { license?: unknown; license_name?: unknown };
  const fromCard = Array.isArray(card.license) ? card.license.map(String).join(', ') : card.license;
  const fromTags = Array.isArray(info.tags)
    ? info.tags
        .map(String)
        .find((tag) => tag.startsWith('license:'))
        ?.slice('license:'.length)
    : undefined;
  const id = typeof fromCard === 'string' && fromCard !== '' ? fromCard : fromTags;
  if (!id) {
    log('licence: the model card names none; check the repository before use');
    return undefined;
  }
  return id === 'other' && typeof card.license_name === 'string' ? `other (${card.license_name})` : id;
}

/** CC BY-NC (-SA, -ND) and licences that say non-commercial or research-only in their id. */
export function isNonCommercialLicense(license: string): boolean {
  return /(?:^|[-_ ])nc(?:[-_ .]|$)|non[-_ ]?commercial|research[-_ ]only/i.test(license);
}

/** The distinct shard files of an index, which must be plain file names next to it. */
async function shardsOf(indexPath: string, where: string): Promise<string[]> {
  let weightMap: unknown;
  try {
    weightMap = (JSON.parse(await readFile(indexPath, 'utf8')) as { weight_map?: unknown }).weight_map;
  } catch (error) {
    throw new MeloError(
      'BAD_CHECKPOINT',
      `${SAFETENSORS_INDEX_FILE} is not valid JSON (${(error as Error).message})`,
      {
        file: where,
      },
    );
  }
  if (weightMap === null || typeof weightMap !== 'object')
    throw new MeloError('BAD_CHECKPOINT', `${SAFETENSORS_INDEX_FILE} has no weight_map`, { file: where });
  const shards = [...new Set(Object.values(weightMap as Record<string, unknown>).map(String))];
  for (const shard of shards) {
    if (!/^[\w.-]+\.safetensors$/.test(shard) || shard.startsWith('.')) {
      throw new MeloError(
        'BAD_CHECKPOINT',
        `${SAFETENSORS_INDEX_FILE} names shard '${shard}'; expected a .safetensors file name`,
        {
          file: where,
        },
      );
    }
  }
  return shards;
}

/** Streams one file to disk, checking its size and hash against the listing as it goes. */
async function downloadVerified(
  hub: { repo: string; revision: string; hubUrl: string; accessToken?: string },
  entry: ListedFile,
  target: string,
  where: string,
): Promise<PulledFile> {
  let blob: Blob | null;
  try {
    blob = await downloadFile({ ...hub, path: entry.path });
  } catch (error) {
    throw hubError(error, `${where}/${entry.path}`, 'cannot download');
  }
  if (!blob)
    throw new MeloError('NOT_FOUND', 'listed but not downloadable (404)', { file: `${where}/${entry.path}` });
  const expectedSize = entry.lfs?.size ?? entry.size;
  const sha256 = createHash('sha256');
  // Non-LFS files are identified by their git blob id: sha1 over "blob <size>\0" and the content.
  const gitSha1 = entry.lfs ? undefined : createHash('sha1').update(`blob ${expectedSize}\0`);
  let received = 0;
  async function* chunks(): AsyncIterable<Uint8Array> {
    for await (const chunk of blob!.stream() as unknown as AsyncIterable<Uint8Array>) {
      received += chunk.byteLength;
      if (received > expectedSize) break;
      sha256.update(chunk);
      gitSha1?.update(chunk);
      yield chunk;
    }
    const file = `${where}/${entry.path}`;
    if (received !== expectedSize)
      throw new MeloError('BAD_CHECKPOINT', `received ${received} bytes, the listing says ${expectedSize}`, {
        file,
      });
    const sha = sha256.copy().digest('hex');
    if (entry.lfs && sha !== entry.lfs.oid)
      throw new MeloError('BAD_CHECKPOINT', `sha256 ${sha} does not match the listing's ${entry.lfs.oid}`, {
        file,
      });
    if (gitSha1 && entry.oid && gitSha1.digest('hex') !== entry.oid)
      throw new MeloError('BAD_CHECKPOINT', `content does not match the listing's git blob id ${entry.oid}`, {
        file,
      });
  }
  try {
    await writeFileAtomic(target, chunks());
  } catch (error) {
    if (error instanceof MeloError) throw error;
    throw hubError(error, `${where}/${entry.path}`, 'download failed');
  }
  return { path: entry.path, bytes: received, sha256: sha256.digest('hex') };
}

async function moveIntoPlace(staging: string, out: string, outExists: boolean): Promise<void> {
  if (!outExists) {
    await rename(staging, out);
    return;
  }
  // Replace (with --force): move the old directory aside first, so a failure leaves one of the two whole.
  const aside = `${out}.old-${process.pid}-${Date.now().toString(36)}`;
  await rename(out, aside);
  try {
    await rename(staging, out);
  } catch (error) {
    await rename(aside, out);
    throw error;
  }
  await rm(aside, { recursive: true, force: true });
}

function hubError(error: unknown, where: string, what: string): MeloError {
  if (error instanceof MeloError) return error;
  if (error instanceof HubApiError) {
    const reason =
      error.statusCode === 404
        ? 'not found (check the repository id and --revision)'
        : error.statusCode === 401 || error.statusCode === 403
          ? `access denied (HTTP ${error.statusCode}); gated or private repositories need a token in HF_TOKEN`
          : `HTTP ${error.statusCode}`;
    return new MeloError('NOT_FOUND', `${what}: ${reason}`, { file: where, cause: error });
  }
  const cause = (error as { cause?: { code?: string; message?: string } } | undefined)?.cause;
  const detail = cause?.code ?? cause?.message ?? (error instanceof Error ? error.message : String(error));
  return new MeloError('NOT_FOUND', `${what}: ${detail.split('\n')[0]}`, { file: where, cause: error });
}

function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1048576) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}
