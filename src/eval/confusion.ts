/**
 * Confusion matrices in scikit-learn's layout: rows are the true class, columns the predicted class; for a
 * binary problem that is [[TN, FP], [FN, TP]].
 */
import { MeloError } from '../errors.ts';

export interface BinaryCounts {
  tp: number;
  fp: number;
  fn: number;
  tn: number;
}

/**
 * k × k counts for class indices in [0, k). `weights` (bootstrap multiplicities) count a sample that many
 * times.
 */
export function confusionMatrix(
  yTrue: ArrayLike<number>,
  yPred: ArrayLike<number>,
  numClasses: number,
  weights?: ArrayLike<number>,
): number[][] {
  if (yTrue.length !== yPred.length) {
    throw new MeloError(
      'BAD_INPUT',
      `confusionMatrix: ${yTrue.length} labels but ${yPred.length} predictions`,
    );
  }
  const matrix = Array.from({ length: numClasses }, () => new Array<number>(numClasses).fill(0));
  for (let i = 0; i < yTrue.length; i++) {
    const t = yTrue[i];
    const p = yPred[i];
    if (
      !Number.isInteger(t) ||
      t < 0 ||
      t >= numClasses ||
      !Number.isInteger(p) ||
      p < 0 ||
      p >= numClasses
    ) {
      throw new MeloError(
        'BAD_INPUT',
        `confusionMatrix: sample ${i} has label ${t} and prediction ${p}, expected classes 0..${numClasses - 1}`,
      );
    }
    matrix[t][p] += weights === undefined ? 1 : weights[i];
  }
  return matrix;
}

/** One-vs-rest counts for class `c` of a k × k confusion matrix. */
export function classCounts(matrix: readonly (readonly number[])[], c: number): BinaryCounts {
  let total = 0;
  let trueC = 0;
  let predictedC = 0;
  for (let i = 0; i < matrix.length; i++) {
    for (let j = 0; j < matrix.length; j++) total += matrix[i][j];
    trueC += matrix[c][i];
    predictedC += matrix[i][c];
  }
  const tp = matrix[c][c];
  return { tp, fn: trueC - tp, fp: predictedC - tp, tn: total - trueC - predictedC + tp };
}
