import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { type InstanceHeader, readInstanceHeader } from '../src/pacs/instance.ts';
import { conformingPatientStudy, decimalString, RESEARCH_ONLY, writeSr } from '../src/pacs/sr.ts';
import { nameBasedUid, srInstanceUid, srSeriesUid } from '../src/pacs/uid.ts';
import { dciodvfy, dsrdump, orthancMissing } from './helpers/orthanc.ts';
import { readMeloSr } from './helpers/sr-read.ts';
import { sourcePath } from './pacs-fixtures.ts';

const noTools = orthancMissing();
let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'melo-pacs-sr-'));
});
after(() => rm(dir, { recursive: true, force: true }));

test('UIDs: 2.25 form of a version-5 UUID, at most 64 characters, the same for the same name', () => {
  const uid = nameBasedUid('melo-sr/1.2.3');
  assert.match(uid, /^2\.25\.(0|[1-9]\d*)$/);
  assert.ok(uid.length <= 64);
  const hex = BigInt(uid.slice(5)).toString(16).padStart(32, '0');
  assert.equal(hex[12], '5', 'version nibble');
  assert.ok(['8', '9', 'a', 'b'].includes(hex[16]!), 'RFC variant');
  assert.equal(srInstanceUid('1.2.3'), uid);
  assert.notEqual(srInstanceUid('1.2.4'), uid);
  assert.notEqual(srSeriesUid('1.2.3'), uid);
});

test('decimalString: at most 16 characters, 10 significant digits', () => {
  assert.equal(decimalString(0.12345678901234), '0.123456789');
  assert.equal(decimalString(1), '1');
  assert.equal(decimalString(0), '0');
  assert.equal(decimalString(1.234567890123e-12), '1.23456789e-12');
  for (const value of [Math.PI / 1e7, 1 - 1e-12, 0.5, 2 ** -40]) {
    const text = decimalString(value);
    assert.ok(text.length <= 16, text);
    assert.ok(Math.abs(Number(text) - value) <= Math.abs(value) * 1e-9 + 1e-15, text);
  }
  assert.throws(() => decimalString(Number.NaN), /not a finite number/);
});

test('patient and study values that break their VR are normalised or left empty', () => {
  const fixed = conformingPatientStudy({
    PatientName: 'Doe^Jane',
    PatientID: 'X'.repeat(80),
    PatientBirthDate: '1997.04.24',
    PatientSex: 'female',
    StudyDate: '20240101',
    StudyTime: '10:30:00',
    ReferringPhysicianName: '',
    StudyID: 'S1234567890123456789',
    AccessionNumber: 'A1',
  });
  assert.equal(fixed.PatientBirthDate, '19970424');
  assert.equal(fixed.PatientSex, '');
  assert.equal(fixed.StudyTime, '103000');
  assert.equal(fixed.PatientID.length, 64);
  assert.equal(fixed.StudyID, 'S123456789012345');
});

function header(
  file: string,
  changes: Partial<InstanceHeader['patientStudy']> = {},
): Promise<InstanceHeader> {
  return readFile(sourcePath(file)).then((bytes) => {
    const read = readInstanceHeader(bytes, file);
    return { ...read, patientStudy: { ...read.patientStudy, ...changes } };
  });
}

test('SR: multi-label findings, non-ASCII names in UTF-8, RT objects referenced as COMPOSITE; valid for dciodvfy and dsrdump', {
  skip: noTools,
}, async () => {
  const source = await header('CT_small.dcm', { PatientName: 'Müller^Jörg' });
  const sr = writeSr({
    source,
    backboneFingerprint: 'sha256:00',
    results: [
      {
        task: 'findings',
        labels: ['effusion', 'nodule', 'pneumothorax'],
        probabilities: [0.9, 0.2, 0.75],
        prediction: 'effusion|pneumothorax',
        taskType: 'multilabel',
        adapterFingerprint: 'sha256:11',
      },
    ],
    now: new Date('2026-01-02T03:04:05Z'),
  });
  assert.equal(sr.sopInstanceUid, srInstanceUid(source.sopInstanceUid));
  const path = join(dir, 'multilabel.dcm');
  await writeFile(path, sr.bytes);
  assert.deepEqual(dciodvfy(path).errors, []);
  const dump = dsrdump(path);
  assert.equal(dump.status, 0, dump.messages);
  assert.doesNotMatch(dump.messages, /^[EF]:/m);
  const { dataset, tasks } = readMeloSr(sr.bytes);
  assert.equal(dataset.SpecificCharacterSet, 'ISO_IR 192');
  assert.equal((dataset.PatientName as { Alphabetic: string }[])[0]!.Alphabetic, 'Müller^Jörg');
  assert.equal(dataset.ContentDate, '20260102');
  assert.equal(dataset.ContentTime, '030405');
  assert.deepEqual(tasks[0]!.findings, ['effusion', 'pneumothorax']);
  assert.deepEqual([...tasks[0]!.probabilities.values()], [0.9, 0.2, 0.75]);
  assert.match(dump.listing, /at least 0\.5/);
  assert.ok(dump.listing.includes(RESEARCH_ONLY.slice(0, 30)));

  // RT Dose has pixel data but is no image to an SR: the reference is COMPOSITE, and dsrdump accepts it.
  const rt = writeSr({
    source: await header('rtdose_1frame.dcm'),
    backboneFingerprint: 'sha256:00',
    results: [
      {
        task: 't',
        labels: ['a', 'b'],
        probabilities: [0.4, 0.6],
        prediction: 'b',
        taskType: 'binary',
        adapterFingerprint: 'sha256:11',
      },
    ],
  });
  const rtPath = join(dir, 'rt.dcm');
  await writeFile(rtPath, rt.bytes);
  assert.deepEqual(dciodvfy(rtPath).errors, []);
  const rtDump = dsrdump(rtPath);
  assert.equal(rtDump.status, 0, rtDump.messages);
  assert.match(rtDump.listing, /contains COMPOSITE/);
});
