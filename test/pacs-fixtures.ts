import { join, resolve } from 'node:path';
import type { Backbone } from '../src/checkpoints/load.ts';
import type { Adapter } from '../src/model/adapter.ts';
import type { TaskRouting } from '../src/pacs/routing.ts';
import { makeAdapter, writeAdapter } from './serve-fixtures.ts';

export const REPO = new URL('..', import.meta.url).pathname;
export const TINY = join(REPO, 'models/melo-vit-tiny-fmnist');
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
