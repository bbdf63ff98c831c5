import { join } from 'node:path';
import { openBccd } from '../data/bccd.ts';
import type { DataSplits } from '../data/dataset.ts';
import { fetchMedmnist, medmnistCacheDir } from '../data/medmnist-fetch.ts';
import { memoizeEightBit } from '../data/memo.ts';
import { openDataSplits } from '../data/open.ts';
import { MeloError } from '../errors.ts';
import { pathExists } from '../util/fs.ts';

/** One task of the demo: four clinical modalities, as in the MeLo paper's spirit of one backbone, many tasks. */
export interface DemoTask {
  readonly name: string;
  readonly modality: string;
  /** Binary tasks: the class the binary metrics are about, recorded in the adapter. */
  readonly positive?: string;
  /** The labels are ordered grades (recorded in the adapter; evaluation adds weighted kappa). */
  readonly ordinal?: boolean;
  /** Opens train/val/test; `log` reports where the data came from. */
  open(sources: DemoSources, log: (line: string) => void): Promise<DataSplits>;
}

export interface DemoSources {
  /** MedMNIST .npz directory (--data-dir, else MELO_DATA_DIR); downloaded into the cache when absent. */
  readonly medmnistDir?: string;
  /** Directory holding BCCD/ (MELO_BCCD_DIR or --bccd); downloaded when absent. */
  readonly bccdDir: () => Promise<string>;
  readonly seed: number;
}

/** A MedMNIST file from MELO_DATA_DIR (any of the given names), else the official record, md5-checked. */
function medmnist(fileNames: readonly string[]): DemoTask['open'] {
  return async (sources, log) => {
    const dirs = [sources.medmnistDir, medmnistCacheDir()].filter((dir): dir is string => dir !== undefined);
    for (const dir of dirs) {
      for (const fileName of fileNames) {
        const path = join(dir, `${fileName}.npz`);
        if (await pathExists(path)) {
          log(`data: ${path}`);
          return openDataSplits(path, { seed: sources.seed });
        }
      }
    }
    const fetched = await fetchMedmnist(fileNames[0]!, { onProgress: () => {} }).catch((error: unknown) => {
      if (!(error instanceof MeloError) || error.code !== 'NOT_FOUND') throw error;
      throw new MeloError(
        'NOT_FOUND',
        `${error.message} (offline? pass --data-dir <dir> or set MELO_DATA_DIR to a directory holding ${fileNames[0]}.npz)`,
      );
    });
    log(`data: downloaded ${fetched.path} (md5 ${fetched.md5})`);
    return openDataSplits(fetched.path, { seed: sources.seed });
  };
}

export const DEMO_TASKS: readonly DemoTask[] = [
  {
    name: 'breast-ultrasound',
    modality: 'ultrasound (BreastMNIST)',
    // BreastMNIST's classes are 'malignant' and 'normal, benign': the finding is the first one.
    positive: 'malignant',
    open: medmnist(['breastmnist']),
  },
  {
    name: 'chest-xray',
    modality: 'chest X-ray (PneumoniaMNIST)',
    open: medmnist(['pneumoniamnist', 'pneumoniamnist_subset']),
  },
  {
    name: 'fundus',
    modality: 'fundus photography (RetinaMNIST)',
    // Diabetic retinopathy grades 0–4.
    ordinal: true,
    open: medmnist(['retinamnist']),
  },
  {
    name: 'blood-cells',
    modality: 'microscopy (BCCD cells)',
    open: async (sources, log) => {
      const dir = await sources.bccdDir();
      log(
        `data: ${dir} (cells cropped from the Pascal VOC boxes; at most 2 RBC per image, to balance the classes)`,
      );
      const splits = await openBccd(dir, { maxPerImage: { RBC: 2 }, margin: 4, seed: sources.seed });
      // Each crop needs its whole JPEG decoded: keep the crops after the first epoch.
      return {
        ...(splits.train ? { train: memoizeEightBit(splits.train) } : {}),
        ...(splits.val ? { val: memoizeEightBit(splits.val) } : {}),
        ...(splits.test ? { test: splits.test } : {}),
      };
    },
  },
];
