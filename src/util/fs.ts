import { stat } from 'node:fs/promises';

/** Whether anything (file, directory, link target) exists at `path`; unreadable counts as absent. */
export async function pathExists(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined)) !== undefined;
}

/** Whether `path` is a regular file. */
export async function isFile(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isFile() ?? false;
}
