import { extname } from 'node:path';
import type { Backbone } from './checkpoints/load.ts';
import { npyBytes } from './data/npy.ts';
import { MeloError } from './errors.ts';
import { writeFileAtomic } from './io/atomic.ts';
import { BackboneClassifier } from './model/inference.ts';
import { type PredictOptions, preparePixels } from './predict.ts';
import { firstNonFinite } from './util/finite.ts';

/** Which pooled features `melo embed` returns for a backbone without a projection. */
export type EmbedPooling = 'cls' | 'cls+mean';

export interface EmbedOptions extends PredictOptions {
  /**
   * DINOv2-style backbones: the CLS token (default, `Dinov2Model`'s pooler output) or CLS concatenated
   * with the mean patch token (what `Dinov2ForImageClassification` feeds its head). Backbones with a
   * projection (CLIP, open_clip) always give the projected image embedding.
   */
  readonly pool?: EmbedPooling;
}

export interface Embeddings {
  readonly images: readonly string[];
  /** Values per image. */
  readonly dims: number;
  /** [images, dims], row-major. */
  readonly values: Float32Array;
}

/** The backbone's image embeddings for image files, in the order given. */
export async function embedImages(
  backbone: Backbone,
  images: readonly string[],
  options: EmbedOptions = {},
): Promise<Embeddings> {
  const embedding = embeddingBackbone(backbone, options.pool);
  const model = await BackboneClassifier.create(embedding, options);
  try {
    const rows: Float32Array[] = [];
    const batchSize = options.batchSize ?? 8;
    let dims = 0;
    for (let start = 0; start < images.length; start += batchSize) {
      const paths = images.slice(start, start + batchSize);
      const pixels = await preparePixels(embedding, paths, options);
      const { features } = await model.run(pixels, paths.length);
      dims = features.shape[1]!;
      paths.forEach((image, row) => {
        const values = features.data.slice(row * dims, (row + 1) * dims);
        const bad = firstNonFinite(values);
        if (bad >= 0)
          throw new MeloError('BAD_IMAGE', `embedding value ${bad} is ${values[bad]} (an overflow)`, {
            file: image,
          });
        rows.push(values);
      });
    }
    const values = new Float32Array(rows.length * dims);
    rows.forEach((row, i) => {
      values.set(row, i * dims);
    });
    return { images: [...images], dims, values };
  } finally {
    await model.release();
  }
}

/** The backbone as `embedImages` runs it: the requested pooling, no classifier head. */
function embeddingBackbone(backbone: Backbone, pool: EmbedPooling | undefined): Backbone {
  const config = backbone.config;
  if (pool !== undefined && config.projectionSize > 0 && pool !== 'cls') {
    throw new MeloError(
      'USAGE',
      `--pool ${pool}: this backbone's projection reads its pooled CLS token; --pool applies to backbones without a projection (DINOv2, ViT, MAE)`,
      { file: backbone.dir },
    );
  }
  const pooling = pool ?? (config.projectionSize > 0 ? config.pooling : defaultPooling(config.pooling));
  return { ...backbone, config: { ...config, pooling, numClasses: 0 } };
}

/** A checkpoint whose head reads CLS ++ mean (Dinov2ForImageClassification) still embeds as CLS by default. */
function defaultPooling(pooling: Backbone['config']['pooling']): Backbone['config']['pooling'] {
  return pooling === 'cls+mean' ? 'cls' : pooling;
}

/** `{"embeddings":[{"image":…,"embedding":[…]}]}`, one JSON document. */
export function embeddingsJson(result: Embeddings): string {
  const embeddings = result.images.map((image, i) => ({
    image,
    embedding: Array.from(result.values.subarray(i * result.dims, (i + 1) * result.dims)),
  }));
  return `${JSON.stringify({ embeddings })}\n`;
}

/**
 * Writes the embeddings atomically: `.npy` (float32 [images, dims], rows in the order of the images) or
 * `.csv` (a header `image,0,1,…`, then one row per image; paths quoted as RFC 4180 wants).
 */
export async function writeEmbeddings(path: string, result: Embeddings): Promise<void> {
  if (embeddingsFileKind(path) === 'npy') {
    await writeFileAtomic(path, npyBytes([result.images.length, result.dims], result.values));
    return;
  }
  const header = ['image', ...Array.from({ length: result.dims }, (_, i) => String(i))].join(',');
  const rows = result.images.map((image, i) => {
    const values = Array.from(result.values.subarray(i * result.dims, (i + 1) * result.dims), String);
    return [csvField(image), ...values].join(',');
  });
  await writeFileAtomic(path, `${[header, ...rows].join('\n')}\n`);
}

/** The output format an --out path names; checked before any work is done. */
export function embeddingsFileKind(path: string): 'npy' | 'csv' {
  const kind = extname(path).toLowerCase();
  if (kind === '.npy' || kind === '.csv') return kind === '.npy' ? 'npy' : 'csv';
  throw new MeloError('USAGE', '--out must end in .npy or .csv', { file: path });
}

function csvField(value: string): string {
  return /[",\r\n]/.test(value) ? `"${value.replaceAll('"', '""')}"` : value;
}
