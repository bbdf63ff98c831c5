/**
 * The per-image predictions of an evaluation as CSV: one row per image with its item id, its true
 * label(s), the decision and every class probability, so results can be checked or re-analysed elsewhere.
 */
import { stringify } from 'csv-stringify/sync';
import { writeFileAtomic } from '../../io/atomic.ts';
import type { TaskEvaluation } from '../run.ts';

/** Separates label names in the multi-label `true_label` and `predicted_label` cells. */
export const MULTILABEL_SEPARATOR = '|';

/** Column header of a class's probability. */
export function probabilityColumn(className: string): string {
  return `p_${className}`;
}

/** The predicted class indices of one row, by the conventions `evaluate()` uses. */
export function predictedClasses(
  probabilities: readonly number[],
  taskType: TaskEvaluation['taskType'],
  threshold: number | null,
): number[] {
  const cut = threshold ?? 0.5;
  if (taskType === 'multilabel') return probabilities.flatMap((p, c) => (p >= cut ? [c] : []));
  if (taskType === 'binary') return [probabilities[probabilities.length - 1] >= cut ? 1 : 0];
  let best = 0;
  for (let c = 1; c < probabilities.length; c++) if (probabilities[c] > probabilities[best]) best = c;
  return [best];
}

/** Columns: image, true_label, predicted_label, then p_<class> per class (shortest exact decimals). */
export function predictionsCsv(evaluation: TaskEvaluation): string {
  const { classNames, taskType, summary } = evaluation;
  const names = (indices: readonly number[]) => indices.map((c) => classNames[c]).join(MULTILABEL_SEPARATOR);
  const header = ['image', 'true_label', 'predicted_label', ...classNames.map(probabilityColumn)];
  const records = evaluation.rows.map((row) => [
    row.id,
    names(row.labels),
    names(predictedClasses(row.probabilities, taskType, summary.threshold)),
    ...row.probabilities,
  ]);
  return stringify([header, ...records], { record_delimiter: 'unix' });
}

export async function writePredictionsCsv(path: string, evaluation: TaskEvaluation): Promise<void> {
  await writeFileAtomic(path, predictionsCsv(evaluation));
}
