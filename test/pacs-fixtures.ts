import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Backbone } from '../src/checkpoints/load.ts';
import type { Adapter } from '../src/model/adapter.ts';
import type { DicomwebPacs } from '../src/pacs/dicomweb.ts';
import { readInstanceHeader } from '../src/pacs/instance.ts';
import type { TaskRouting } from '../src/pacs/routing.ts';
import { srInstanceUid } from '../src/pacs/uid.ts';
import { dciodvfy, dsrdump } from './helpers/orthanc.ts';
import { readMeloSr } from './helpers/sr-read.ts';
import { makeAdapter, writeAdapter } from './serve-fixtures.ts';

export const REPO = new URL('..', import.meta.url).pathname;
export const TINY = join(REPO, 'models/melo-vit-tiny-fmnist');
const BIN = join(REPO, 'bin/melo.js');
export const DICOM_DIR =
  process.env.MELO_DICOM_DIR ?? resolve(REPO, '../shared/data/dicom/pydicom-test-files');

/** Shared DICOM files of four modalities melo decodes, and their patients (for the leak scan). */
export const SOURCES = [
  { file: 'CT_small.dcm', modality: 'CT' },
  { file: 'MR_small.dcm', modality: 'MR' },
  { file: 'ExplVR_BigEnd.dcm', modality: 'US' },
  { file: 'SC_rgb_jpeg_dcmtk.dcm', modality: 'OT' },
] as const;

/** JPEG Extended 12-bit: stored by the PACS, refused by melo's decoder (the failure path). */
export const UNDECODABLE = 'JPEG-lossy.dcm';

/** Patient names and IDs of the files above (dcmdump), which logs and summaries must never show. */
export const PATIENT_IDENTIFIERS = ['CompressedSamples', '1CT1', '4MR1', '8NM1', 'Lestrade', 'Anonymized'];

export const sourcePath = (file: string) => join(DICOM_DIR, file);

/** Routed adapters: one per modality group and one without routing (applies to everything). */
export const ROUTED_TASKS: readonly {
  task: string;
  routing?: TaskRouting;
  seed: number;
  labels: string[];
}[] = [
  { task: 'ct-nodule', routing: { modalities: ['CT'] }, seed: 11, labels: ['benign', 'malignant'] },
  { task: 'mr-lesion', routing: { modalities: ['MR'] }, seed: 12, labels: ['absent', 'present'] },
  { task: 'us-ot-grade', routing: { modalities: ['US', 'OT'] }, seed: 13, labels: ['g0', 'g1', 'g2'] },
  { task: 'quality', seed: 14, labels: ['poor', 'good'] },
];

export async function writeRoutedAdapters(backbone: Backbone, root: string): Promise<void> {
  for (const spec of ROUTED_TASKS) {
    const adapter: Adapter = makeAdapter(backbone, { task: spec.task, labels: spec.labels, seed: spec.seed });
    const metadata = spec.routing ? { ...adapter.metadata, routing: spec.routing } : adapter.metadata;
    await writeAdapter(root, spec.task, { ...adapter, metadata });
  }
}

/** Tasks routed to a modality. */
export function tasksFor(modality: string): string[] {
  return ROUTED_TASKS.filter(
    (spec) => !spec.routing?.modalities || spec.routing.modalities.includes(modality),
  ).map((spec) => spec.task);
}

/** Fails naming the identifier when any text carries a test patient's name or ID. */
export function findPatientData(text: string): string | undefined {
  return PATIENT_IDENTIFIERS.find((identifier) => text.includes(identifier));
}

/** `melo serve` as a child process (push-mode tests kill it with SIGKILL). */
export class MeloServer {
  readonly output: string[] = [];
  private constructor(
    readonly port: number,
    readonly child: ChildProcess,
  ) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  static async start(args: readonly string[], port: number): Promise<MeloServer> {
    const child = spawn(process.execPath, [BIN, 'serve', '--port', String(port), ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const server = new MeloServer(port, child);
    child.stdout?.on('data', (chunk) => server.output.push(String(chunk)));
    child.stderr?.on('data', (chunk) => server.output.push(String(chunk)));
    const deadline = Date.now() + 120_000;
    while (Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`melo serve exited: ${server.output.join('')}`);
      try {
        if ((await fetch(`${server.url}/healthz`)).ok) return server;
      } catch {
        // not listening yet
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    child.kill('SIGKILL');
    throw new Error(`melo serve did not start: ${server.output.join('')}`);
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.kill(signal);
    await exited;
  }
}

/** Polls until `check` returns true or the time is up. */
export async function waitFor(
  what: string,
  check: () => Promise<boolean>,
  timeoutMs = 90_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/**
 * The PACS holds exactly one SR for the source file, in its study: valid for dciodvfy and dsrdump, with
 * the routed tasks and the probabilities `predicted` gives (melo predict on the same file) to 1e-5.
 */
export async function verifySrInPacs(
  pacs: DicomwebPacs,
  file: string,
  modality: string,
  predicted: Map<string, number[]>,
  scratch: string,
): Promise<void> {
  const source = readInstanceHeader(await readFile(sourcePath(file)), file);
  const srs = await pacs.searchInstances({ studyInstanceUid: source.studyInstanceUid, modality: 'SR' });
  assert.deepEqual(
    srs.map((sr) => sr.sopInstanceUid),
    [srInstanceUid(source.sopInstanceUid)],
    `${file}: exactly one SR in its study`,
  );
  const bytes = await pacs.retrieveInstance(srs[0]!);
  const path = join(scratch, `${modality}-sr.dcm`);
  await writeFile(path, bytes);
  assert.deepEqual(dciodvfy(path).errors, [], `${file}: dciodvfy errors`);
  const dump = dsrdump(path);
  assert.equal(dump.status, 0, dump.messages);
  assert.doesNotMatch(dump.messages, /^[EF]:/m);
  const { dataset, tasks } = readMeloSr(bytes);
  assert.equal(dataset.StudyInstanceUID, source.studyInstanceUid);
  assert.deepEqual(tasks.map((t) => t.task).sort(), tasksFor(modality).sort(), `${file}: routed tasks`);
  for (const task of tasks) {
    const spec = ROUTED_TASKS.find((s) => s.task === task.task)!;
    const expected = predicted.get(task.task)!;
    spec.labels.forEach((label, i) => {
      const got = task.probabilities.get(label)!;
      assert.ok(
        Math.abs(got - expected[i]!) <= 1e-5,
        `${file} ${task.task} ${label}: ${got} vs ${expected[i]}`,
      );
    });
  }
}
