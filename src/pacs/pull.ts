import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Backbone } from '../checkpoints/load.ts';
import { errorMessage } from '../errors.ts';
import { writeFileAtomic } from '../io/atomic.ts';
import { type LoadedTask, type Prediction, TaskPredictor } from '../predict.ts';
import type { DicomwebPacs, InstanceRef } from './dicomweb.ts';
import { fingerprintAdapter } from './fingerprint.ts';
import { type InstanceHeader, readInstanceHeader } from './instance.ts';
import { routingMatches } from './routing.ts';
import { type SrTaskResult, writeSr } from './sr.ts';
import { srInstanceUid } from './uid.ts';

/** Where SRs go: back to a PACS by STOW-RS, or as files `<srSopInstanceUid>.dcm` in a directory. */
export type SrDestination =
  | { readonly kind: 'dicomweb'; readonly pacs: DicomwebPacs }
  | { readonly kind: 'files'; readonly dir: string };

export interface PullOptions {
  readonly source: DicomwebPacs;
  readonly destination: SrDestination;
  readonly backbone: Backbone;
  readonly tasks: readonly LoadedTask[];
  readonly studyInstanceUid?: string;
  readonly since?: string;
  readonly modalities?: readonly string[];
  readonly threads?: number;
  /** Instances retrieved, classified and delivered together. */
  readonly batchSize?: number;
  /** Progress lines (UIDs and counts only, never patient data). */
  readonly log?: (line: string) => void;
}

/** The pull's outcome: UIDs, task names and reasons only. */
export interface PullSummary {
  readonly instances: { sopInstanceUid: string; tasks: string[]; srSopInstanceUid: string }[];
  readonly skipped: { sopInstanceUid: string; reason: string }[];
  readonly failed: { sopInstanceUid: string; error: string }[];
}

/** Instances that are not images to classify: SRs (melo's own among them), key objects, presentation states. */
function isNonImage(ref: InstanceRef): boolean {
  const modality = ref.modality?.toUpperCase();
  if (modality && ['SR', 'KO', 'PR', 'DOC', 'RTSTRUCT', 'RTPLAN', 'REG', 'ECG'].includes(modality))
    return true;
  const sopClass = ref.sopClassUid ?? '';
  return (
    sopClass.startsWith('1.2.840.10008.5.1.4.1.1.88.') || sopClass.startsWith('1.2.840.10008.5.1.4.1.1.11.')
  );
}

/**
 * `melo pacs pull`: QIDO-RS search, skip instances that already have melo's SR (its UID is derived from
 * the source instance's, so it is known before anything is retrieved), WADO-RS retrieve into a private
 * spool directory, classify with the tasks whose routing matches each instance (the same code as
 * `melo predict`), write one SR per instance and deliver it.
 */
export async function pullAndClassify(options: PullOptions): Promise<PullSummary> {
  const log = options.log ?? (() => {});
  const summary: PullSummary = { instances: [], skipped: [], failed: [] };
  const refs = await search(options);
  const candidates = refs.filter((ref) => !isNonImage(ref));
  log(`found ${candidates.length} image instance(s)`);
  const existing = await existingSrs(options, candidates);
  const todo: InstanceRef[] = [];
  for (const ref of candidates) {
    if (existing.has(srInstanceUid(ref.sopInstanceUid)))
      summary.skipped.push({ sopInstanceUid: ref.sopInstanceUid, reason: 'already has a melo SR' });
    else if (!mayMatch(options.tasks, ref))
      summary.skipped.push({ sopInstanceUid: ref.sopInstanceUid, reason: "no task's routing matches" });
    else todo.push(ref);
  }
  if (todo.length === 0) return summary;
  const fingerprints = new Map(options.tasks.map((task) => [task.name, fingerprintAdapter(task.adapter)]));
  const predictor = await TaskPredictor.create(options.backbone, options.tasks, {
    ...(options.threads ? { threads: options.threads } : {}),
  });
  const spool = await mkdtemp(join(tmpdir(), 'melo-pull-'));
  try {
    const batchSize = options.batchSize ?? 8;
    const batches: InstanceRef[][] = [];
    for (let start = 0; start < todo.length; start += batchSize)
      batches.push(todo.slice(start, start + batchSize));
    // A pipeline: batch k+1 is retrieved and batch k-1's SRs are stored while batch k is classified,
    // so the PACS's latency hides behind the model (retrieval and delivery record their own failures).
    let retrieving = retrieveBatch(options, batches[0]!, spool, summary);
    let delivering: Promise<void> = Promise.resolve();
    let done = 0;
    for (let k = 0; k < batches.length; k++) {
      const ready = await retrieving;
      if (k + 1 < batches.length) retrieving = retrieveBatch(options, batches[k + 1]!, spool, summary);
      const srs = await classifyBatch(options, predictor, fingerprints, ready, summary);
      await delivering;
      delivering = deliver(options.destination, srs, summary).then(async () => {
        await Promise.all(ready.map((item) => rm(item.path, { force: true })));
        done += batches[k]!.length;
        log(`${done}/${todo.length} instance(s) done`);
      });
    }
    await delivering;
  } finally {
    await predictor.release();
    await rm(spool, { recursive: true, force: true });
  }
  return summary;
}

/**
 * Whether any task may apply, judged from the Modality QIDO-RS returned, before anything is retrieved
 * (a CT series is hundreds of instances). Body parts are judged after retrieval: not every PACS returns
 * Body Part Examined in its search results.
 */
function mayMatch(tasks: readonly LoadedTask[], ref: InstanceRef): boolean {
  if (ref.modality === undefined) return true;
  return tasks.some((task) => {
    const modalities = task.adapter.metadata.routing?.modalities;
    return routingMatches(modalities ? { modalities } : undefined, { modality: ref.modality });
  });
}

async function search(options: PullOptions): Promise<InstanceRef[]> {
  const base = {
    ...(options.studyInstanceUid ? { studyInstanceUid: options.studyInstanceUid } : {}),
    ...(options.since ? { since: options.since } : {}),
  };
  // One query per modality: QIDO-RS list matching on Modality is not supported everywhere.
  const queries = options.modalities?.length
    ? options.modalities.map((modality) => ({ ...base, modality }))
    : [base];
  const found = new Map<string, InstanceRef>();
  for (const query of queries)
    for (const ref of await options.source.searchInstances(query)) found.set(ref.sopInstanceUid, ref);
  return [...found.values()];
}

/** SOP Instance UIDs of the SRs already in the destination, for the studies at hand. */
async function existingSrs(options: PullOptions, refs: readonly InstanceRef[]): Promise<Set<string>> {
  const { destination } = options;
  if (destination.kind === 'files') {
    return new Set(
      refs
        .map((ref) => srInstanceUid(ref.sopInstanceUid))
        .filter((uid) => existsSync(join(destination.dir, `${uid}.dcm`))),
    );
  }
  const uids = new Set<string>();
  for (const study of new Set(refs.map((ref) => ref.studyInstanceUid))) {
    for (const sr of await destination.pacs.searchInstances({ studyInstanceUid: study, modality: 'SR' }))
      uids.add(sr.sopInstanceUid);
  }
  return uids;
}

interface Retrieved {
  readonly ref: InstanceRef;
  readonly path: string;
  readonly header: InstanceHeader;
}

async function retrieveBatch(
  options: PullOptions,
  batch: readonly InstanceRef[],
  spool: string,
  summary: PullSummary,
): Promise<Retrieved[]> {
  const results = await Promise.all(
    batch.map(async (ref): Promise<Retrieved | undefined> => {
      try {
        const bytes = await options.source.retrieveInstance(ref);
        // Errors name the instance by its UID, never by anything else in the file.
        const header = readInstanceHeader(bytes, ref.sopInstanceUid);
        if (header.sopInstanceUid !== ref.sopInstanceUid)
          throw new Error('the retrieved instance has another SOP Instance UID than the one asked for');
        const path = join(spool, `${ref.sopInstanceUid}.dcm`);
        await writeFile(path, bytes);
        return { ref, path, header };
      } catch (error) {
        summary.failed.push({ sopInstanceUid: ref.sopInstanceUid, error: errorMessage(error) });
        return undefined;
      }
    }),
  );
  return results.filter((item): item is Retrieved => item !== undefined);
}

interface PendingSr {
  readonly sopInstanceUid: string;
  readonly tasks: string[];
  readonly sr: { sopInstanceUid: string; bytes: Uint8Array };
}

async function classifyBatch(
  options: PullOptions,
  predictor: TaskPredictor,
  fingerprints: ReadonlyMap<string, string>,
  items: readonly Retrieved[],
  summary: PullSummary,
): Promise<PendingSr[]> {
  const routed = items.filter((item) => {
    const matches = options.tasks.some((task) => routingMatches(task.adapter.metadata.routing, item.header));
    if (!matches)
      summary.skipped.push({ sopInstanceUid: item.ref.sopInstanceUid, reason: "no task's routing matches" });
    return matches;
  });
  const selection = routed.map(
    (item) =>
      new Set(
        options.tasks
          .filter((task) => routingMatches(task.adapter.metadata.routing, item.header))
          .map((task) => task.name),
      ),
  );
  let predictions: Prediction[] | undefined;
  try {
    predictions = await predictor.run(
      routed.map((item) => item.path),
      { selection, batchSize: routed.length || 1 },
    );
  } catch {
    predictions = undefined; // one undecodable instance fails the batch: find it by running them one by one
  }
  const byPath = new Map<string, Prediction[]>();
  if (predictions) {
    for (const prediction of predictions)
      byPath.set(prediction.image, [...(byPath.get(prediction.image) ?? []), prediction]);
  } else {
    for (const [i, item] of routed.entries()) {
      try {
        byPath.set(item.path, await predictor.run([item.path], { selection: [selection[i]!] }));
      } catch (error) {
        summary.failed.push({ sopInstanceUid: item.ref.sopInstanceUid, error: errorMessage(error) });
      }
    }
  }
  const pending: PendingSr[] = [];
  for (const item of routed) {
    const results = byPath.get(item.path);
    if (!results) continue;
    pending.push({
      sopInstanceUid: item.ref.sopInstanceUid,
      tasks: results.map((result) => result.task),
      sr: writeSr({
        source: item.header,
        backboneFingerprint: options.backbone.fingerprint,
        results: results.map((result) => toSrResult(result, options.tasks, fingerprints)),
      }),
    });
  }
  return pending;
}

export function toSrResult(
  prediction: Pick<Prediction, 'task' | 'labels' | 'probabilities' | 'prediction'>,
  tasks: readonly Pick<LoadedTask, 'name' | 'adapter'>[],
  fingerprints: ReadonlyMap<string, string>,
): SrTaskResult {
  const task = tasks.find((candidate) => candidate.name === prediction.task)!;
  return {
    task: prediction.task,
    labels: prediction.labels,
    probabilities: prediction.probabilities,
    prediction: prediction.prediction,
    taskType: task.adapter.metadata.taskType,
    adapterFingerprint: fingerprints.get(prediction.task)!,
  };
}

async function deliver(
  destination: SrDestination,
  srs: readonly PendingSr[],
  summary: PullSummary,
): Promise<void> {
  if (srs.length === 0) return;
  const done = (item: PendingSr) =>
    summary.instances.push({
      sopInstanceUid: item.sopInstanceUid,
      tasks: item.tasks,
      srSopInstanceUid: item.sr.sopInstanceUid,
    });
  if (destination.kind === 'files') {
    await mkdir(destination.dir, { recursive: true });
    for (const item of srs) {
      await writeFileAtomic(join(destination.dir, `${item.sr.sopInstanceUid}.dcm`), item.sr.bytes);
      done(item);
    }
    return;
  }
  try {
    await destination.pacs.store(srs.map((item) => item.sr.bytes));
    for (const item of srs) done(item);
  } catch (error) {
    for (const item of srs)
      summary.failed.push({ sopInstanceUid: item.sopInstanceUid, error: errorMessage(error) });
  }
}
