/**
 * DICOM text values as error messages may show them. A crafted file can put any text (patient names,
 * report text) in any element, and error messages reach logs and HTTP clients, so a value is shown only
 * when it is well-formed for its VR, and capped at that VR's length; anything else is described, not
 * echoed. Values of free-text VRs (PN, LO, SH, LT, ST, UT, DS, IS) are never shown.
 */

/**
 * A Code String (CS) value shown only when it is one of the standard's defined terms for the element:
 * a well-formed CS can still spell a name ('JOHN DOE' is one).
 */
export function definedTermForMessage(value: string, terms: ReadonlySet<string>): string {
  return terms.has(value) ? value : '(a value that is not a defined term)';
}

/** Photometric Interpretation (0028,0004) defined terms, current and retired (PS3.3 C.7.6.3.1.2). */
export const PHOTOMETRIC_TERMS: ReadonlySet<string> = new Set([
  'MONOCHROME1',
  'MONOCHROME2',
  'PALETTE COLOR',
  'RGB',
  'YBR_FULL',
  'YBR_FULL_422',
  'YBR_PARTIAL_422',
  'YBR_PARTIAL_420',
  'YBR_ICT',
  'YBR_RCT',
  'XYB',
  'HSV',
  'ARGB',
  'CMYK',
]);

/** A Unique Identifier (UI): digits and dots, at most 64 characters. */
export function uidForMessage(value: string): string {
  const trimmed = value.replace(/\0+$/, '').trim();
  return /^[0-9.]{1,64}$/.test(trimmed) ? trimmed : '(a value that is not a valid UID)';
}
