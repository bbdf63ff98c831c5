import type { Backbone } from './checkpoints/load.ts';
import { MeloError } from './errors.ts';
import { preprocess } from './imaging/preprocess.ts';
import { type ReadImageOptions, readAnyImage } from './imaging/read.ts';
import { BackboneClassifier } from './model/inference.ts';

export interface Prediction {
  readonly image: string;
  readonly task: string;
  readonly labels: string[];
  readonly logits: number[];
  readonly probabilities: number[];
  readonly prediction: string;
}

export interface PredictOptions extends ReadImageOptions {
  readonly threads?: number;
  /** Images per ORT call. */
  readonly batchSize?: number;
}

/** Classifies image files with the backbone's own head (task "backbone"). */
export async function predict(
  backbone: Backbone,
  images: readonly string[],
  options: PredictOptions = {},
): Promise<Prediction[]> {
  if (backbone.config.numClasses === 0) {
    throw new MeloError(
      'USAGE',
      `backbone has no classifier head; train a task adapter with 'melo train --backbone ${backbone.dir} ...' and pass it with --adapter <dir>`,
      { file: backbone.dir },
    );
  }
  const model = await BackboneClassifier.create(backbone, options);
  try {
    const labels = backbone.labels ?? Array.from({ length: backbone.config.numClasses }, (_, i) => String(i));
    const predictions: Prediction[] = [];
    const batchSize = options.batchSize ?? 8;
    for (let start = 0; start < images.length; start += batchSize) {
      const paths = images.slice(start, start + batchSize);
      const pixels = await preparePixels(backbone, paths, options);
      const { logits } = await model.run(pixels, paths.length);
      paths.forEach((image, row) => {
        const rowLogits = Array.from(logits!.data.subarray(row * labels.length, (row + 1) * labels.length));
        predictions.push(toPrediction(image, 'backbone', labels, rowLogits));
      });
    }
    return predictions;
  } finally {
    await model.release();
  }
}

/** Reads, decodes and preprocesses images into one [batch, C, H, W] buffer. */
export async function preparePixels(
  backbone: Backbone,
  paths: readonly string[],
  options: ReadImageOptions = {},
): Promise<Float32Array> {
  const [height, width] = backbone.preprocess.inputSize;
  const perImage = backbone.config.channels * height * width;
  const pixels = new Float32Array(paths.length * perImage);
  const decoded = await Promise.all(paths.map((path) => readAnyImage(path, options)));
  decoded.forEach((image, i) => {
    pixels.set(preprocess(image, backbone.preprocess, backbone.config.channels as 1 | 3), i * perImage);
  });
  return pixels;
}

export function softmax(logits: readonly number[]): number[] {
  const max = Math.max(...logits);
  const exps = logits.map((value) => Math.exp(value - max));
  const total = exps.reduce((sum, value) => sum + value, 0);
  return exps.map((value) => value / total);
}

export function toPrediction(image: string, task: string, labels: string[], logits: number[]): Prediction {
  const probabilities = softmax(logits);
  let best = 0;
  probabilities.forEach((p, i) => {
    if (p > probabilities[best]!) best = i;
  });
  return { image, task, labels, logits, probabilities, prediction: labels[best]! };
}
