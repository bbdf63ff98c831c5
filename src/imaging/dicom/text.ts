/**
 * DICOM text values as error messages may show them. A crafted file can put any text (patient names,
 * report text) in any element, and error messages reach logs and HTTP clients, so a value is shown only
 * when it is well-formed for its VR, and capped at that VR's length; anything else is described, not
 * echoed. Values of free-text VRs (PN, LO, SH, LT, ST, UT, DS, IS) are never shown.
 */

/** A Code String (CS): upper-case letters, digits, space and underscore, at most 16 characters. */
export function codeStringForMessage(value: string): string {
  return /^[A-Z0-9_ ]{1,16}$/.test(value) ? value : '(a value that is not a valid code string)';
}

/** A Unique Identifier (UI): digits and dots, at most 64 characters. */
export function uidForMessage(value: string): string {
  const trimmed = value.replace(/\0+$/, '').trim();
  return /^[0-9.]{1,64}$/.test(trimmed) ? trimmed : '(a value that is not a valid UID)';
}
