import { readFile } from 'node:fs/promises';
import type { DataSet } from 'dicom-parser';
import { MeloError } from '../errors.ts';
import { isDicom } from '../imaging/dicom/index.ts';
import { parseDicomBytes } from '../imaging/dicom/parse.ts';
import type { ImageLimits } from '../imaging/limits.ts';
import type { RoutingKeys } from './routing.ts';

/**
 * What melo needs from a DICOM instance besides its pixels: the identifiers that place it (and the SR
 * written about it), the attributes routing looks at, and the Patient and General Study modules the SR
 * copies. Read with the same parser the image decoder uses, so a file melo classifies is a file melo
 * can describe.
 */
export interface InstanceHeader extends RoutingKeys {
  readonly sopClassUid: string;
  readonly sopInstanceUid: string;
  readonly studyInstanceUid: string;
  readonly seriesInstanceUid: string;
  /** Patient and General Study module values (keyword → value), copied into the SR as they are. */
  readonly patientStudy: PatientStudy;
}

/** The Patient and General Study module attributes the SR carries (type 2: present, possibly empty). */
export interface PatientStudy {
  readonly PatientName: string;
  readonly PatientID: string;
  readonly PatientBirthDate: string;
  readonly PatientSex: string;
  readonly StudyDate: string;
  readonly StudyTime: string;
  readonly ReferringPhysicianName: string;
  readonly StudyID: string;
  readonly AccessionNumber: string;
  readonly StudyDescription?: string;
  readonly IssuerOfPatientID?: string;
}

const TAGS = {
  SpecificCharacterSet: 'x00080005',
  SOPClassUID: 'x00080016',
  SOPInstanceUID: 'x00080018',
  StudyDate: 'x00080020',
  StudyTime: 'x00080030',
  AccessionNumber: 'x00080050',
  Modality: 'x00080060',
  ReferringPhysicianName: 'x00080090',
  StudyDescription: 'x00081030',
  PatientName: 'x00100010',
  PatientID: 'x00100020',
  IssuerOfPatientID: 'x00100021',
  PatientBirthDate: 'x00100030',
  PatientSex: 'x00100040',
  BodyPartExamined: 'x00180015',
  StudyInstanceUID: 'x0020000d',
  SeriesInstanceUID: 'x0020000e',
  StudyID: 'x00200010',
} as const;

/** A DICOM UID: digits and dots, components without leading zeros, at most 64 characters. */
const UID = /^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$/;

export function isValidUid(value: string): boolean {
  return value.length <= 64 && UID.test(value);
}

export function readInstanceHeader(bytes: Uint8Array, file: string): InstanceHeader {
  if (!isDicom(bytes)) throw new MeloError('BAD_DICOM', 'not a DICOM instance', { file });
  const { dataSet } = parseDicomBytes(bytes, file);
  const text = textReader(dataSet);
  const uid = (keyword: 'SOPClassUID' | 'SOPInstanceUID' | 'StudyInstanceUID' | 'SeriesInstanceUID') => {
    const value = text(keyword);
    if (!value) throw new MeloError('BAD_DICOM', `missing ${keyword}`, { file });
    // UIDs become file names and URL parts: anything but a well-formed UID is refused here.
    if (!isValidUid(value)) throw new MeloError('BAD_DICOM', `${keyword} is not a valid UID`, { file });
    return value;
  };
  const optional = (keyword: 'StudyDescription' | 'IssuerOfPatientID') => {
    const value = text(keyword);
    return value ? { [keyword]: value } : {};
  };
  const modality = text('Modality');
  const bodyPart = text('BodyPartExamined');
  return {
    sopClassUid: uid('SOPClassUID'),
    sopInstanceUid: uid('SOPInstanceUID'),
    studyInstanceUid: uid('StudyInstanceUID'),
    seriesInstanceUid: uid('SeriesInstanceUID'),
    ...(modality ? { modality: modality.toUpperCase() } : {}),
    ...(bodyPart ? { bodyPart: bodyPart.toUpperCase() } : {}),
    patientStudy: {
      PatientName: text('PatientName'),
      PatientID: text('PatientID'),
      PatientBirthDate: text('PatientBirthDate'),
      PatientSex: text('PatientSex'),
      StudyDate: text('StudyDate'),
      StudyTime: text('StudyTime'),
      ReferringPhysicianName: text('ReferringPhysicianName'),
      StudyID: text('StudyID'),
      AccessionNumber: text('AccessionNumber'),
      ...optional('StudyDescription'),
      ...optional('IssuerOfPatientID'),
    },
  };
}

/**
 * Element values as text. The SR is written in UTF-8 (ISO_IR 192); values are decoded from the source's
 * character set: UTF-8 when it says ISO_IR 192, else Latin-1 (the default repertoire and ISO_IR 100).
 * Other repertoires (ISO 2022 escapes) are decoded as Latin-1 too, which keeps ASCII exact.
 */
function textReader(dataSet: DataSet): (keyword: keyof typeof TAGS) => string {
  const charset = (dataSet.string(TAGS.SpecificCharacterSet) ?? '').toUpperCase();
  const decoder = new TextDecoder(charset.includes('ISO_IR 192') ? 'utf-8' : 'latin1');
  return (keyword) => {
    const element = dataSet.elements[TAGS[keyword]];
    if (!element || element.length === 0 || element.length === 0xffffffff) return '';
    const end = element.dataOffset + element.length;
    if (end > dataSet.byteArray.length) return '';
    const raw = decoder.decode(dataSet.byteArray.subarray(element.dataOffset, end));
    // Strip DICOM padding (space or NUL) and trailing/leading spaces, as dicom-parser's string() does.
    return raw.replace(/\0+$/, '').trim();
  };
}

/** Routing keys of an image file: Modality and Body Part Examined when it is DICOM, else none. */
export async function readRoutingKeys(path: string): Promise<RoutingKeys | undefined> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch {
    return undefined; // the image reader reports a missing or unreadable file in its own words
  }
  return routingKeysOf(bytes, path);
}

/**
 * Modality and Body Part Examined of DICOM bytes; undefined when the bytes are not DICOM. Parsed within
 * `limits` (the image reader's, by default).
 */
export function routingKeysOf(
  bytes: Uint8Array,
  file: string,
  limits?: ImageLimits,
): RoutingKeys | undefined {
  if (!isDicom(bytes)) return undefined;
  const { dataSet } = parseDicomBytes(bytes, file, limits);
  const modality = dataSet.string(TAGS.Modality)?.trim().toUpperCase();
  const bodyPart = dataSet.string(TAGS.BodyPartExamined)?.trim().toUpperCase();
  return { ...(modality ? { modality } : {}), ...(bodyPart ? { bodyPart } : {}) };
}
