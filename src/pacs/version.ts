import { readFileSync } from 'node:fs';

/** melo's version as package.json states it: recorded in every SR as the algorithm version. */
export const MELO_VERSION: string = (
  JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
).version;
