import { basename } from 'node:path';

/** Longest message a client gets about one adapter: a crafted file must not fill every response. */
export const MAX_CLIENT_MESSAGE = 500;

/**
 * A server-side message as clients may see it: the server's own directories named by role (the
 * backbone, the adapters root), any other absolute path cut to its last component, and the whole capped
 * in length. Clients learn what is wrong with a file, not where the server keeps it.
 */
export function forClient(message: string, roots: Readonly<Record<string, string>>): string {
  let text = message;
  for (const [name, dir] of Object.entries(roots)) {
    const root = dir.replace(/\/+$/, '');
    if (root === '') continue;
    text = text.split(`${root}/`).join('').split(root).join(name);
  }
  // Whatever absolute path is left (a symlink target, a file the backbone loader named): its last part.
  text = text.replace(/(?<![\w.~-])\/(?:[^\s/'"`,;()]+\/)+([^\s/'"`,;()]*)/g, (_match, last: string) =>
    last === '' ? '…/' : `…/${basename(last)}`,
  );
  return text.length > MAX_CLIENT_MESSAGE ? `${text.slice(0, MAX_CLIENT_MESSAGE - 1)}…` : text;
}
