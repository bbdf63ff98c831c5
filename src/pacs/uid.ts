import { createHash } from 'node:crypto';

/**
 * A UID in the `2.25.` form (PS3.5 B.2): the decimal value of a UUID. melo derives its UUIDs from a name
 * (RFC 9562 version 5: SHA-1 of a namespace and the name), so the SR written about a source instance has
 * the same SOP Instance UID however often it is made: after a crash and restart, or on a second pull,
 * the PACS receives the same instance again and keeps one.
 */
const MELO_NAMESPACE = Buffer.from('6d656c6f2d736f75726365732d736572', 'hex'); // fixed, arbitrary, melo's own

export function nameBasedUid(name: string): string {
  const digest = createHash('sha1').update(MELO_NAMESPACE).update(name, 'utf8').digest();
  const bytes = digest.subarray(0, 16);
  bytes[6] = (bytes[6]! & 0x0f) | 0x50; // version 5
  bytes[8] = (bytes[8]! & 0x3f) | 0x80; // RFC variant
  return `2.25.${BigInt(`0x${bytes.toString('hex')}`).toString(10)}`;
}

/** The SR melo writes about a source instance. */
export function srInstanceUid(sourceSopInstanceUid: string): string {
  return nameBasedUid(`melo-sr/${sourceSopInstanceUid}`);
}

/** One SR series per source series. */
export function srSeriesUid(sourceSeriesInstanceUid: string): string {
  return nameBasedUid(`melo-sr-series/${sourceSeriesInstanceUid}`);
}
