import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { DicomwebPacs, type InstanceRef } from '../src/pacs/dicomweb.ts';
import { readInstanceHeader } from '../src/pacs/instance.ts';
import { srInstanceUid } from '../src/pacs/uid.ts';
import { runCli } from './helpers/cli.ts';
import { dciodvfy, dsrdump, Orthanc, orthancMissing } from './helpers/orthanc.ts';
import { readMeloSr } from './helpers/sr-read.ts';
import {
  findPatientData,
  ROUTED_TASKS,
  SOURCES,
  sourcePath,
  TINY,
  tasksFor,
  UNDECODABLE,
  writeRoutedAdapters,
} from './pacs-fixtures.ts';

const skip = orthancMissing();
let dir = '';
let adapters = '';
let orthanc: Orthanc;
/** Everything melo printed in this file's runs, for the patient-data scan. */
const printed: string[] = [];

before(async () => {
  if (skip) return;
  dir = await mkdtemp(join(tmpdir(), 'melo-pacs-pull-'));
  adapters = join(dir, 'adapters');
  await writeRoutedAdapters(await loadBackbone(TINY), adapters);
  orthanc = await Orthanc.start();
  for (const { file } of SOURCES) await orthanc.store(sourcePath(file));
  await orthanc.store(sourcePath(UNDECODABLE));
});
after(async () => {
  await orthanc?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function melo(args: string[]) {
  const result = await runCli(args, { timeoutMs: 180_000 });
  printed.push(result.stdout, result.stderr);
  return result;
}

/** `melo predict --json` on the source file, routed the same way: the numbers the SR must carry. */
async function predictFile(file: string): Promise<Map<string, number[]>> {
  const adapterArgs = ROUTED_TASKS.flatMap((spec) => ['--adapter', join(adapters, spec.task)]);
  const result = await melo([
    'predict',
    '--backbone',
    TINY,
    ...adapterArgs,
    '--threads',
    '1',
    '--json',
    sourcePath(file),
  ]);
  assert.equal(result.code, 0, result.stderr);
  const predictions = JSON.parse(result.stdout).predictions as { task: string; probabilities: number[] }[];
  return new Map(predictions.map((p) => [p.task, p.probabilities]));
}

test('melo pacs pull: one valid SR per instance in the same study, routed, equal to melo predict; a second run skips', {
  skip,
}, async () => {
  const pacs = new DicomwebPacs(orthanc.dicomweb);
  const pull = await melo([
    'pacs',
    'pull',
    '--dicomweb',
    orthanc.dicomweb,
    '--backbone',
    TINY,
    '--adapters',
    adapters,
    '--threads',
    '1',
    '--json',
  ]);
  // The JPEG 12-bit instance cannot be decoded: it is reported (by UID) and the exit status says so.
  assert.equal(pull.code, 1, pull.stderr);
  const summary = JSON.parse(pull.stdout);
  const undecodable = readInstanceHeader(await readFile(sourcePath(UNDECODABLE)), UNDECODABLE);
  assert.deepEqual(
    summary.failed.map((f: { sopInstanceUid: string }) => f.sopInstanceUid),
    [undecodable.sopInstanceUid],
  );
  assert.match(summary.failed[0].error, /JPEG Extended 12-bit/);
  assert.equal(summary.instances.length, SOURCES.length);

  for (const { file, modality } of SOURCES) {
    const source = readInstanceHeader(await readFile(sourcePath(file)), file);
    const entry = summary.instances.find(
      (i: { sopInstanceUid: string }) => i.sopInstanceUid === source.sopInstanceUid,
    );
    assert.ok(entry, `${file} is in the summary`);
    assert.deepEqual([...entry.tasks].sort(), tasksFor(modality).sort(), `${file}: routed tasks`);
    assert.equal(entry.srSopInstanceUid, srInstanceUid(source.sopInstanceUid));
    assert.match(entry.srSopInstanceUid, /^2\.25\.\d+$/);

    // QIDO-RS: exactly one SR in the source's study, in a series of its own.
    const srs = await pacs.searchInstances({ studyInstanceUid: source.studyInstanceUid, modality: 'SR' });
    assert.deepEqual(
      srs.map((sr) => sr.sopInstanceUid),
      [entry.srSopInstanceUid],
      `${file}: one SR in its study`,
    );
    assert.notEqual(srs[0]!.seriesInstanceUid, source.seriesInstanceUid);
    const bytes = await pacs.retrieveInstance(srs[0] as InstanceRef);
    const path = join(dir, `${modality}-sr.dcm`);
    await writeFile(path, bytes);
    assert.deepEqual(dciodvfy(path).errors, [], `${file}: dciodvfy errors`);
    const dump = dsrdump(path);
    assert.equal(dump.status, 0, dump.messages);
    assert.doesNotMatch(dump.messages, /^[EF]:/m);
    assert.match(dump.listing, /Research use only, not for/);

    const { dataset, tasks } = readMeloSr(bytes);
    assert.equal(dataset.StudyInstanceUID, source.studyInstanceUid);
    assert.equal(dataset.Modality, 'SR');
    assert.equal(dataset.PatientID, source.patientStudy.PatientID);
    const reference = await predictFile(file);
    assert.deepEqual(tasks.map((t) => t.task).sort(), [...reference.keys()].sort());
    for (const task of tasks) {
      const spec = ROUTED_TASKS.find((s) => s.task === task.task)!;
      const expected = reference.get(task.task)!;
      spec.labels.forEach((label, i) => {
        const got = task.probabilities.get(label)!;
        assert.ok(
          Math.abs(got - expected[i]!) <= 1e-5,
          `${file} ${task.task} ${label}: ${got} vs ${expected[i]}`,
        );
      });
      assert.match(task.adapterFingerprint ?? '', /^sha256:[0-9a-f]{32}$/);
      assert.match(task.backboneFingerprint ?? '', /^sha256:[0-9a-f]{32}$/);
      const best = spec.labels[expected.indexOf(Math.max(...expected))];
      assert.deepEqual(task.findings, [best]);
    }
  }

  // A second run finds the SRs and classifies nothing again.
  const again = await melo([
    'pacs',
    'pull',
    '--dicomweb',
    orthanc.dicomweb,
    '--backbone',
    TINY,
    '--adapters',
    adapters,
    '--json',
  ]);
  const second = JSON.parse(again.stdout);
  assert.equal(second.instances.length, 0);
  assert.equal(
    second.skipped.filter((s: { reason: string }) => s.reason === 'already has a melo SR').length,
    SOURCES.length,
  );
  assert.equal((await orthanc.find('Instance', { Modality: 'SR' })).length, SOURCES.length);
});

test('melo pacs pull --study --modality --out writes SR files, and skips them on a second run', {
  skip,
}, async () => {
  const ct = readInstanceHeader(await readFile(sourcePath('CT_small.dcm')), 'CT_small.dcm');
  const out = join(dir, 'out');
  const args = [
    'pacs',
    'pull',
    '--dicomweb',
    orthanc.dicomweb,
    '--backbone',
    TINY,
    '--adapters',
    adapters,
    '--study',
    ct.studyInstanceUid,
    '--modality',
    'ct,mr',
    '--since',
    '19000101',
    '--out',
    out,
    '--json',
  ];
  const first = await melo(args);
  assert.equal(first.code, 0, first.stderr);
  const summary = JSON.parse(first.stdout);
  assert.deepEqual(
    summary.instances.map((i: { sopInstanceUid: string }) => i.sopInstanceUid),
    [ct.sopInstanceUid],
  );
  assert.deepEqual(await readdir(out), [`${srInstanceUid(ct.sopInstanceUid)}.dcm`]);
  assert.deepEqual(dciodvfy(join(out, `${srInstanceUid(ct.sopInstanceUid)}.dcm`)).errors, []);
  const second = JSON.parse((await melo(args)).stdout);
  assert.equal(second.instances.length, 0);
  assert.equal(second.skipped.length, 1);

  const future = await melo([...args.slice(0, -5), '--since', '30000101', '--out', out, '--json']);
  assert.deepEqual(JSON.parse(future.stdout), { instances: [], skipped: [], failed: [] });
});

test('melo pacs pull: instances no task is routed to are not even retrieved', { skip }, async () => {
  const out = join(dir, 'out-ct-only');
  const result = await melo([
    'pacs',
    'pull',
    '--dicomweb',
    orthanc.dicomweb,
    '--backbone',
    TINY,
    '--adapters',
    join(adapters, 'ct-nodule'),
    '--out',
    out,
    '--json',
  ]);
  // The undecodable NM instance is not retrieved either, so nothing fails.
  assert.equal(result.code, 0, result.stderr);
  const summary = JSON.parse(result.stdout);
  const ct = readInstanceHeader(await readFile(sourcePath('CT_small.dcm')), 'CT_small.dcm');
  assert.deepEqual(summary.instances, [
    {
      sopInstanceUid: ct.sopInstanceUid,
      tasks: ['ct-nodule'],
      srSopInstanceUid: srInstanceUid(ct.sopInstanceUid),
    },
  ]);
  assert.equal(summary.skipped.length, SOURCES.length);
  for (const skipped of summary.skipped) assert.equal(skipped.reason, "no task's routing matches");
  assert.deepEqual(summary.failed, []);
});

test('melo pacs pull: a PACS that does not answer is one clear line; bad options are refused', {
  skip,
}, async () => {
  const down = await melo([
    'pacs',
    'pull',
    '--dicomweb',
    'http://127.0.0.1:9/dicom-web',
    '--backbone',
    TINY,
    '--adapters',
    adapters,
  ]);
  assert.equal(down.code, 1);
  assert.equal(
    down.stderr.trim(),
    'melo: error: http://127.0.0.1:9/dicom-web: QIDO-RS search: no answer from the PACS',
  );
  const both = await melo([
    'pacs',
    'pull',
    '--dicomweb',
    orthanc.dicomweb,
    '--backbone',
    TINY,
    '--adapters',
    adapters,
    '--out',
    dir,
    '--results-dicomweb',
    orthanc.dicomweb,
  ]);
  assert.match(both.stderr, /give --results-dicomweb or --out, not both/);
  const date = await melo([
    'pacs',
    'pull',
    '--dicomweb',
    orthanc.dicomweb,
    '--backbone',
    TINY,
    '--adapters',
    adapters,
    '--since',
    '2024-01-01',
  ]);
  assert.match(date.stderr, /expected YYYYMMDD, got '2024-01-01'/);
});

test('pull output (summaries, progress, errors) never carries patient names or IDs', { skip }, () => {
  assert.ok(printed.length > 0);
  for (const text of printed) assert.equal(findPatientData(text), undefined, text.slice(0, 500));
});
