import dcmjs from 'dcmjs';
import { MELO_VERSION } from '../cli/root.ts';
import type { InstanceHeader, PatientStudy } from './instance.ts';
import { nameBasedUid, srInstanceUid, srSeriesUid } from './uid.ts';

/**
 * melo's results as a DICOM Comprehensive SR, one per classified instance. The content tree follows
 * DICOM TID 1500 (Measurement Report) where it fits: language, device observer, procedure reported, an
 * image library naming the source image, and one measurement group per task holding its tracking
 * identifiers, algorithm identification (TID 4019), the predicted label (Finding), each label's
 * probability (NUM, UCUM unit "1") and the decision rule; then a "research use only" comment.
 * docs/pacs.md shows the tree as dsrdump prints it.
 */

export const COMPREHENSIVE_SR = '1.2.840.10008.5.1.4.1.1.88.33';
const EXPLICIT_VR_LITTLE_ENDIAN = '1.2.840.10008.1.2.1';
/** melo's implementation class UID (name-based, so stable across versions). */
const IMPLEMENTATION_CLASS_UID = nameBasedUid('melo-implementation');
const DEVICE_OBSERVER_UID = nameBasedUid('melo-device-observer');
/** melo's own codes: a private coding scheme designator starts with "99" (PS3.16 8.2). */
export const MELO_SCHEME = '99MELO';

export const RESEARCH_ONLY =
  'Research use only, not for diagnosis. Produced automatically by melo; not reviewed by a clinician.';

/** One task's result on the instance. */
export interface SrTaskResult {
  readonly task: string;
  readonly labels: readonly string[];
  readonly probabilities: readonly number[];
  readonly prediction: string;
  readonly taskType: 'binary' | 'multiclass' | 'multilabel';
  readonly adapterFingerprint: string;
}

export interface SrInput {
  readonly source: InstanceHeader;
  readonly backboneFingerprint: string;
  readonly results: readonly SrTaskResult[];
  /** When the SR was made (default: now); fixed in tests. */
  readonly now?: Date;
}

interface Code {
  readonly CodeValue: string;
  readonly CodingSchemeDesignator: string;
  readonly CodeMeaning: string;
}

const code = (value: string, scheme: string, meaning: string): Code => ({
  CodeValue: value,
  CodingSchemeDesignator: scheme,
  // LO: at most 64 characters.
  CodeMeaning: meaning.length > 64 ? `${meaning.slice(0, 63)}…` : meaning,
});

const DCM = (value: string, meaning: string) => code(value, 'DCM', meaning);

type Item = Record<string, unknown>;

const container = (relationship: string | undefined, name: Code, children: Item[]): Item => ({
  ...(relationship ? { RelationshipType: relationship } : {}),
  ValueType: 'CONTAINER',
  ConceptNameCodeSequence: [name],
  ContinuityOfContent: 'SEPARATE',
  ContentSequence: children,
});
const text = (relationship: string, name: Code, value: string): Item => ({
  RelationshipType: relationship,
  ValueType: 'TEXT',
  ConceptNameCodeSequence: [name],
  TextValue: value,
});
const codeItem = (relationship: string, name: Code, value: Code): Item => ({
  RelationshipType: relationship,
  ValueType: 'CODE',
  ConceptNameCodeSequence: [name],
  ConceptCodeSequence: [value],
});
const uidref = (relationship: string, name: Code, value: string): Item => ({
  RelationshipType: relationship,
  ValueType: 'UIDREF',
  ConceptNameCodeSequence: [name],
  UID: value,
});
const num = (name: Code, value: number, unit: Code): Item => ({
  RelationshipType: 'CONTAINS',
  ValueType: 'NUM',
  ConceptNameCodeSequence: [name],
  MeasuredValueSequence: [{ MeasurementUnitsCodeSequence: [unit], NumericValue: decimalString(value) }],
});

/** DS holds at most 16 characters; 10 significant digits keep a probability exact to 1e-10. */
export function decimalString(value: number): string {
  if (!Number.isFinite(value)) throw new Error(`not a finite number: ${value}`);
  let digits = 10;
  let text = Number(value.toPrecision(digits)).toString();
  while (text.length > 16 && digits > 1) text = Number(value.toPrecision(--digits)).toString();
  return text;
}

/** The code melo gives label i of a task (its meaning is the label). */
export const labelCode = (labels: readonly string[], index: number): Code =>
  code(`LABEL${index}`, MELO_SCHEME, labels[index]!);
export const probabilityCode = (labels: readonly string[], index: number): Code =>
  code(`PROB${index}`, MELO_SCHEME, `Probability of ${labels[index]}`);

export function decisionRule(taskType: SrTaskResult['taskType']): string {
  return taskType === 'multilabel'
    ? 'Each label whose sigmoid probability is at least 0.5 is predicted ("none" when no label is).'
    : 'The label with the highest softmax probability is predicted.';
}

function taskGroup(result: SrTaskResult, input: SrInput, imageItem: (relationship: string) => Item): Item {
  const { source } = input;
  const predicted = result.prediction.split('|');
  const findings = predicted
    .map((label) => result.labels.indexOf(label))
    .filter((index) => index >= 0)
    .map((index) => codeItem('CONTAINS', DCM('121071', 'Finding'), labelCode(result.labels, index)));
  return container('CONTAINS', DCM('125007', 'Measurement Group'), [
    text('HAS OBS CONTEXT', DCM('112039', 'Tracking Identifier'), result.task),
    uidref(
      'HAS OBS CONTEXT',
      DCM('112040', 'Tracking Unique Identifier'),
      nameBasedUid(`melo-tracking/${source.sopInstanceUid}/${result.task}`),
    ),
    text('HAS CONCEPT MOD', DCM('111001', 'Algorithm Name'), result.task),
    text('HAS CONCEPT MOD', DCM('111003', 'Algorithm Version'), MELO_VERSION),
    text('HAS CONCEPT MOD', code('ADAPTERFP', MELO_SCHEME, 'Adapter fingerprint'), result.adapterFingerprint),
    text(
      'HAS CONCEPT MOD',
      code('BACKBONEFP', MELO_SCHEME, 'Backbone fingerprint'),
      input.backboneFingerprint,
    ),
    text(
      'HAS CONCEPT MOD',
      code('DECISIONRULE', MELO_SCHEME, 'Decision rule'),
      decisionRule(result.taskType),
    ),
    imageItem('CONTAINS'),
    ...findings,
    ...result.probabilities.map((probability, index) =>
      num(probabilityCode(result.labels, index), probability, code('1', 'UCUM', 'no units')),
    ),
  ]);
}

/**
 * The source's values where they conform to their VR, else the nearest conforming value or empty
 * (all are type 2): old files carry dates such as 1997.04.24 and times such as 10:30:00.
 */
export function conformingPatientStudy(study: PatientStudy): PatientStudy {
  const date = (value: string) => {
    const digits = value.replace(/[.\-/]/g, '');
    return /^\d{8}$/.test(digits) ? digits : '';
  };
  const time = (value: string) => {
    const compact = value.replace(/:/g, '');
    return /^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$/.test(compact) ? compact : '';
  };
  const fit = (value: string, max: number) => value.replace(/\\/g, ' ').slice(0, max);
  return {
    PatientName: fit(study.PatientName, 64 * 3),
    PatientID: fit(study.PatientID, 64),
    PatientBirthDate: date(study.PatientBirthDate),
    PatientSex: ['M', 'F', 'O'].includes(study.PatientSex) ? study.PatientSex : '',
    StudyDate: date(study.StudyDate),
    StudyTime: time(study.StudyTime),
    ReferringPhysicianName: fit(study.ReferringPhysicianName, 64 * 3),
    StudyID: fit(study.StudyID, 16),
    AccessionNumber: fit(study.AccessionNumber, 16),
    ...(study.StudyDescription ? { StudyDescription: fit(study.StudyDescription, 64) } : {}),
    ...(study.IssuerOfPatientID ? { IssuerOfPatientID: fit(study.IssuerOfPatientID, 64) } : {}),
  };
}

/** RT objects (RT Dose carries pixel data) are not images to an SR: they are referenced as COMPOSITE. */
function isRadiotherapyObject(sopClassUid: string): boolean {
  return sopClassUid.startsWith('1.2.840.10008.5.1.4.1.1.481.');
}

function dicomDate(date: Date): string {
  return date.toISOString().slice(0, 10).replaceAll('-', '');
}

function dicomTime(date: Date): string {
  return date.toISOString().slice(11, 19).replaceAll(':', '');
}

/** The SR as a naturalised dcmjs data set (tests read it; `writeSr` encodes it). */
export function buildSr(input: SrInput): Record<string, unknown> {
  const { source } = input;
  const now = input.now ?? new Date();
  const reference = {
    ReferencedSOPClassUID: source.sopClassUid,
    ReferencedSOPInstanceUID: source.sopInstanceUid,
  };
  // TID 1601 lists the library's image without a concept name; a measurement group names it its source.
  const imageItem = (relationship: string, named = true): Item => ({
    RelationshipType: relationship,
    ValueType: isRadiotherapyObject(source.sopClassUid) ? 'COMPOSITE' : 'IMAGE',
    ...(named ? { ConceptNameCodeSequence: [DCM('121112', 'Source of Measurement')] } : {}),
    ReferencedSOPSequence: [reference],
  });
  const study = conformingPatientStudy(source.patientStudy);
  const labels = input.results.flatMap((result) => [result.task, ...result.labels]);
  // ASCII is the default repertoire; anything else is written as UTF-8 (ISO_IR 192).
  const ascii = [...Object.values(study), ...labels].every((value) => /^[\x20-\x7e]*$/.test(value ?? ''));
  return {
    ...(ascii ? {} : { SpecificCharacterSet: 'ISO_IR 192' }),
    InstanceCreationDate: dicomDate(now),
    InstanceCreationTime: dicomTime(now),
    SOPClassUID: COMPREHENSIVE_SR,
    SOPInstanceUID: srInstanceUid(source.sopInstanceUid),
    // Patient and General Study modules: the source's values, so the SR files under the same patient and study.
    PatientName: study.PatientName,
    PatientID: study.PatientID,
    ...(study.IssuerOfPatientID ? { IssuerOfPatientID: study.IssuerOfPatientID } : {}),
    PatientBirthDate: study.PatientBirthDate,
    PatientSex: study.PatientSex,
    StudyInstanceUID: source.studyInstanceUid,
    StudyDate: study.StudyDate,
    StudyTime: study.StudyTime,
    ReferringPhysicianName: study.ReferringPhysicianName,
    StudyID: study.StudyID,
    AccessionNumber: study.AccessionNumber,
    ...(study.StudyDescription ? { StudyDescription: study.StudyDescription } : {}),
    // SR Document Series: a new series beside the source's.
    Modality: 'SR',
    SeriesInstanceUID: srSeriesUid(source.seriesInstanceUid),
    SeriesNumber: 9901,
    SeriesDescription: 'melo AI results (research use only)',
    ReferencedPerformedProcedureStepSequence: [],
    // General Equipment.
    Manufacturer: 'melo',
    ManufacturerModelName: 'melo',
    SoftwareVersions: MELO_VERSION,
    // SR Document General.
    InstanceNumber: 1,
    CompletionFlag: 'COMPLETE',
    VerificationFlag: 'UNVERIFIED',
    ContentDate: dicomDate(now),
    ContentTime: dicomTime(now),
    PerformedProcedureCodeSequence: [],
    CurrentRequestedProcedureEvidenceSequence: [
      {
        StudyInstanceUID: source.studyInstanceUid,
        ReferencedSeriesSequence: [
          { SeriesInstanceUID: source.seriesInstanceUid, ReferencedSOPSequence: [reference] },
        ],
      },
    ],
    // SR Document Content: the root container and its tree (TID 1500).
    ValueType: 'CONTAINER',
    ConceptNameCodeSequence: [DCM('126000', 'Imaging Measurement Report')],
    ContinuityOfContent: 'SEPARATE',
    ContentTemplateSequence: [{ MappingResource: 'DCMR', TemplateIdentifier: '1500' }],
    ContentSequence: [
      codeItem(
        'HAS CONCEPT MOD',
        DCM('121049', 'Language of Content Item and Descendants'),
        code('eng', 'RFC5646', 'English'),
      ),
      codeItem('HAS OBS CONTEXT', DCM('121005', 'Observer Type'), DCM('121007', 'Device')),
      uidref('HAS OBS CONTEXT', DCM('121012', 'Device Observer UID'), DEVICE_OBSERVER_UID),
      text('HAS OBS CONTEXT', DCM('121013', 'Device Observer Name'), 'melo'),
      text('HAS OBS CONTEXT', DCM('121014', 'Device Observer Manufacturer'), 'melo'),
      codeItem('HAS CONCEPT MOD', DCM('121058', 'Procedure reported'), code('363679005', 'SCT', 'Imaging')),
      container('CONTAINS', DCM('111028', 'Image Library'), [
        container('CONTAINS', DCM('126200', 'Image Library Group'), [imageItem('CONTAINS', false)]),
      ]),
      container(
        'CONTAINS',
        DCM('126010', 'Imaging Measurements'),
        input.results.map((result) => taskGroup(result, input, imageItem)),
      ),
      text('CONTAINS', DCM('121106', 'Comment'), RESEARCH_ONLY),
    ],
  };
}

/** The SR as a DICOM Part 10 file (explicit VR little endian). */
export function writeSr(input: SrInput): { sopInstanceUid: string; bytes: Uint8Array } {
  const dataset = buildSr(input);
  const sopInstanceUid = dataset.SOPInstanceUID as string;
  const meta = {
    FileMetaInformationVersion: new Uint8Array([0, 1]).buffer,
    MediaStorageSOPClassUID: COMPREHENSIVE_SR,
    MediaStorageSOPInstanceUID: sopInstanceUid,
    TransferSyntaxUID: EXPLICIT_VR_LITTLE_ENDIAN,
    ImplementationClassUID: IMPLEMENTATION_CLASS_UID,
    ImplementationVersionName: `MELO_${MELO_VERSION}`.slice(0, 16),
  };
  const { DicomDict, DicomMetaDictionary } = dcmjs.data;
  const dict = new DicomDict(DicomMetaDictionary.denaturalizeDataset(meta));
  dict.dict = DicomMetaDictionary.denaturalizeDataset(dataset);
  return { sopInstanceUid, bytes: new Uint8Array(dict.write()) };
}
