/**
 * Atomic file writes: a reader (or a crash) sees either the old file or the complete new one, never a
 * half-written checkpoint. Data goes to a temporary file in the target's own directory (rename is only
 * atomic within one file system), is fsynced, and is then renamed over the target.
 */
import { randomBytes } from 'node:crypto';
import { type FileHandle, open, readdir, rename, rm } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { MeloError } from '../errors.ts';
import { writeBoundary } from '../util/write-boundary.ts';

/**
 * What can be written. Chunked forms let large files (checkpoints) be produced piece by piece instead of
 * being assembled in memory first; an iterable that throws aborts the write and leaves the target as it was.
 */
export type AtomicWriteData = Uint8Array | string | Iterable<Uint8Array> | AsyncIterable<Uint8Array>;

/** Writes `data` to `path` atomically. The temporary file is removed if anything fails. */
export async function writeFileAtomic(path: string, data: AtomicWriteData): Promise<void> {
  const target = resolve(path);
  const directory = dirname(target);
  // Hidden, unique per call so that concurrent writers never share a temporary file.
  const temporary = join(
    directory,
    `.${basename(target)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`,
  );
  let handle: FileHandle | undefined;
  try {
    handle = await open(temporary, 'wx');
    writeBoundary('created temporary file');
    await writeAll(handle, data);
    writeBoundary('wrote temporary file');
    await handle.sync();
    await handle.close();
    handle = undefined;
    writeBoundary('synced temporary file');
    await rename(temporary, target);
    writeBoundary('renamed over target');
  } catch (error) {
    await handle?.close().catch(() => undefined);
    await rm(temporary, { force: true }).catch(() => undefined);
    throw asWriteError(error, path, directory);
  }
  await syncDirectory(directory);
}

/** JSON with two-space indentation and a final newline, written atomically. */
export async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  const text = JSON.stringify(value, null, 2);
  if (text === undefined) throw new MeloError('BAD_INPUT', 'value cannot be written as JSON', { file: path });
  await writeFileAtomic(path, `${text}\n`);
}

async function writeAll(handle: FileHandle, data: AtomicWriteData): Promise<void> {
  if (typeof data === 'string' || data instanceof Uint8Array) {
    await handle.writeFile(data);
    return;
  }
  for await (const chunk of data) {
    let written = 0;
    while (written < chunk.byteLength) {
      const { bytesWritten } = await handle.write(chunk, written, chunk.byteLength - written);
      written += bytesWritten;
    }
  }
}

/** Makes the rename itself durable. Some platforms cannot fsync a directory; the write has still happened. */
async function syncDirectory(directory: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(directory, 'r');
    await handle.sync();
  } catch {
    // Best effort only (e.g. Windows, some network file systems).
  } finally {
    await handle?.close().catch(() => undefined);
  }
}

function asWriteError(error: unknown, path: string, directory: string): unknown {
  if (error instanceof MeloError) return error;
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (code === undefined) return error; // a bug or an error raised by the data source: keep it as it is
  if (code === 'ENOENT') {
    return new MeloError('NOT_FOUND', `cannot write: directory ${directory} does not exist`, {
      file: path,
      cause: error,
    });
  }
  const reasons: Record<string, string> = {
    EISDIR: 'the path is a directory',
    ENOTEMPTY: 'the path is a non-empty directory',
    EEXIST: 'the path is a non-empty directory',
    EACCES: 'permission denied',
    EPERM: 'operation not permitted',
    ENOSPC: 'no space left on the device',
    EROFS: 'the file system is read-only',
    ENOTDIR: 'a parent of the path is not a directory',
  };
  const reason = reasons[code] ?? `${code}`;
  return new MeloError('BAD_INPUT', `cannot write: ${reason}`, { file: path, cause: error });
}

/** Temporary names melo's writers use: `.name.<pid>.<hex>.tmp` files and `.staging-<pid>-<ms>` folders. */
const TEMPORARY_NAME = /^\..+\.(\d+)\.[0-9a-f]{12}\.tmp$|^\.staging-(\d+)-\d+$/;

/**
 * Removes the temporary files and staging folders that a killed writer left in `directory` (a kill between
 * creating and renaming them, or a second Ctrl-C). Names of a process still running are left alone, so two
 * writers in one folder never delete each other's work. Returns the names removed.
 */
export async function removeStaleTemporaries(directory: string): Promise<string[]> {
  const names = await readdir(directory).catch(() => [] as string[]);
  const removed: string[] = [];
  for (const name of names) {
    const match = TEMPORARY_NAME.exec(name);
    if (match === null) continue;
    const pid = Number(match[1] ?? match[2]);
    if (pid !== process.pid && isRunning(pid)) continue;
    await rm(join(directory, name), { recursive: true, force: true });
    removed.push(name);
  }
  return removed;
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists but belongs to someone else.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
