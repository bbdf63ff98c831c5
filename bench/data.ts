/**
 * `npm run bench:data`: the training loader's throughput (JPEG decode + augmentation to the 224 px
 * ViT-B/16 input, assembled into batches) on its worker pool and in-process, against the images/s of a
 * ViT-B/16 LoRA training step measured in the same run. The loader must outpace training by ≥ 5× so
 * that data is never what a training run waits for. Contenders run in alternating rounds, one at a
 * time, so that load from other work on the machine falls on all of them alike. A last contender runs
 * training steps fed by the loader (decoding in the workers while ORT computes), which shows what the
 * overlap costs when both share the cores. Writes bench/results/data.json.
 *
 *   npm run bench:data [-- --images 96 --batch 16 --workers N --rounds 2 --train-batch 16
 *                          --train-steps 1 --threads N --out FILE]
 *   MELO_BCCD_DIR   the BCCD dataset directory, as for `melo demo` (its BCCD/JPEGImages is used), or a folder of
 *                   JPEGs (default ../shared/data/bccd)
 */

import { existsSync, readdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { Dataset } from '../src/data/dataset.ts';
import { fileItem } from '../src/data/file-item.ts';
import { DecodePool, defaultWorkerCount, type LoaderOptions, loadBatches } from '../src/data/loader.ts';
import { DEFAULT_AUGMENT } from '../src/imaging/augment.ts';
import { writeJsonAtomic } from '../src/io/atomic.ts';
import { initAdapter } from '../src/model/adapter.ts';
import { MELO_LORA_DEFAULTS } from '../src/model/lora-config.ts';
import { adapterFeeds } from '../src/model/task-graph.ts';
import { vitConfig } from '../src/model/vit-config.ts';
import type { HostTensor } from '../src/tensor.ts';
import { TrainStep } from '../src/train/train-step.ts';
import { Random } from '../src/util/random.ts';
import { integerOption } from './lib/args.ts';
import { loadAverage, machineInfo } from './lib/machine.ts';
import { formatBytes, peakRssBytes } from './lib/memory.ts';
import { randomBackbone, randomPixels } from './lib/random-vit.ts';
import { median } from './lib/timing.ts';

const MODEL = 'vit-b16-224';
const TARGET_RATIO = 5;
const CLASSES = 3;
/** Pause between contenders so that one's threads have gone quiet before the next is timed. */
const SETTLE_MS = 250;

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..');

interface Options {
  imagesDir: string;
  images: number;
  batch: number;
  workers: number;
  rounds: number;
  trainBatch: number;
  trainSteps: number;
  threads: number;
  out: string;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      images: { type: 'string', default: '96' },
      batch: { type: 'string', default: '16' },
      workers: { type: 'string', default: String(defaultWorkerCount()) },
      rounds: { type: 'string', default: '2' },
      'train-batch': { type: 'string', default: '16' },
      'train-steps': { type: 'string', default: '1' },
      threads: { type: 'string', default: String(availableParallelism()) },
      out: { type: 'string', default: join(here, 'results', 'data.json') },
    },
  });
  return {
    imagesDir: bccdImagesDir(process.env.MELO_BCCD_DIR ?? resolve(repo, '../shared/data/bccd')),
    images: integerOption('images', values.images, 1),
    batch: integerOption('batch', values.batch, 1),
    workers: integerOption('workers', values.workers, 1),
    rounds: integerOption('rounds', values.rounds, 1),
    trainBatch: integerOption('train-batch', values['train-batch'], 1),
    trainSteps: integerOption('train-steps', values['train-steps'], 1),
    threads: integerOption('threads', values.threads, 1),
    out: values.out,
  };
}

/** The dataset directory's BCCD/JPEGImages when it has one, else the directory itself. */
function bccdImagesDir(dir: string): string {
  const nested = join(dir, 'BCCD', 'JPEGImages');
  return existsSync(nested) ? nested : dir;
}

function jpegDataset(dir: string, count: number): Dataset {
  const files = readdirSync(dir)
    .filter((name) => /\.jpe?g$/i.test(name))
    .sort();
  if (files.length === 0) throw new Error(`no JPEG files in ${dir} (set MELO_BCCD_DIR)`);
  // Cycle through the folder when more images are asked for than it holds.
  const items = Array.from({ length: count }, (_, i) =>
    fileItem(join(dir, files[i % files.length]!), [i % CLASSES]),
  );
  return { name: 'bccd', source: dir, taskType: 'multiclass', classes: ['a', 'b', 'c'], items };
}

/** One pass over the dataset; returns seconds. Every pixel is touched so no work can be skipped. */
async function loaderPass(data: Dataset, epoch: number, loader: LoaderOptions): Promise<number> {
  const start = performance.now();
  let images = 0;
  for await (const batch of loadBatches(data, epoch, loader)) {
    if (!Number.isFinite(batch.pixels[batch.pixels.length - 1]!))
      throw new Error('loader produced a non-finite pixel');
    images += batch.items.length;
  }
  if (images !== data.items.length)
    throw new Error(`loader yielded ${images} of ${data.items.length} images`);
  return (performance.now() - start) / 1e3;
}

function stepInputs(batch: number): { targets: Float32Array; sampleWeights: Float32Array } {
  const targets = new Float32Array(batch * CLASSES);
  for (let i = 0; i < batch; i++) targets[i * CLASSES + (i % CLASSES)] = 1;
  return { targets, sampleWeights: new Float32Array(batch).fill(1 / batch) };
}

function checkLoss(loss: number): void {
  if (!Number.isFinite(loss)) throw new Error(`training step produced a non-finite loss (${loss})`);
}

interface LoaderSamples {
  seconds: number[];
}

async function main(): Promise<void> {
  const options = parseOptions();
  const machine = machineInfo();
  const config = vitConfig('base', { numClasses: 1000 });
  console.log(
    `machine: ${machine.cpuModel}, ${machine.cores} cores, load average ${machine.loadAverageAtStart}`,
  );
  console.log(`node ${machine.node}, onnxruntime-node ${machine.onnxruntimeNode}`);
  if (machine.loadAverageAtStart > machine.cores / 2) {
    console.log(
      `note: the machine was busy at start (load ${machine.loadAverageAtStart}); absolute numbers will be low`,
    );
  }

  const backbone = randomBackbone(config, 1);
  const data = jpegDataset(options.imagesDir, options.images);
  const loaderBase = {
    batchSize: options.batch,
    preprocess: backbone.preprocess,
    channels: 3,
    augment: DEFAULT_AUGMENT,
    seed: 1,
    shuffle: true,
  } as const satisfies LoaderOptions;
  console.log(
    `loader: ${data.items.length} BCCD JPEGs (640×480) → ${backbone.preprocess.inputSize.join('×')} with the default augmentation, batch ${options.batch}`,
  );

  // Pools start before the ORT session is built, so their threads are up by the time they are timed.
  const pool = DecodePool.create(options.workers);
  const fedPool = DecodePool.create(options.workers);
  const buildStart = performance.now();
  const trainStep = await TrainStep.create({
    backbone,
    method: 'lora',
    lora: MELO_LORA_DEFAULTS,
    numClasses: CLASSES,
    batchSize: options.trainBatch,
    loss: 'softmax',
    threads: options.threads,
  });
  const adapter = initAdapter(
    config,
    MELO_LORA_DEFAULTS,
    { task: 'bench', taskType: 'multiclass', labels: ['a', 'b', 'c'] },
    new Random(2),
  );
  const parameters: Map<string, HostTensor> = adapterFeeds(adapter);
  console.log(
    `${MODEL} LoRA (rank ${MELO_LORA_DEFAULTS.rank}, ${MELO_LORA_DEFAULTS.targets.join('+')}) training step, batch ${options.trainBatch}, ${options.threads} ORT threads: built in ${((performance.now() - buildStart) / 1e3).toFixed(1)} s`,
  );
  const { targets, sampleWeights } = stepInputs(options.trainBatch);
  const syntheticPixels = randomPixels(config, options.trainBatch, config.imageSize, 3);

  // Training steps fed by a loader on the second pool. A timed unit is one step plus the wait for the
  // next batch, which was decoding in the workers during the step: with enough prefetch the wait is ~0.
  const fedData = jpegDataset(options.imagesDir, options.trainBatch * (options.trainSteps + 1));
  const fedRound = async (epoch: number): Promise<number[]> => {
    const taken: number[] = [];
    const iterator = loadBatches(fedData, epoch, {
      ...loaderBase,
      batchSize: options.trainBatch,
      pool: fedPool,
    });
    let current = await iterator.next(); // fills the pipeline; not timed
    for (let step = 0; step < options.trainSteps; step++) {
      if (current.done) throw new Error('fed loader ran out of batches');
      const start = performance.now();
      const { loss } = await trainStep.run(
        { pixels: current.value.pixels, targets, sampleWeights },
        parameters,
      );
      checkLoss(loss);
      current = await iterator.next();
      taken.push(performance.now() - start);
    }
    await iterator.return(undefined);
    return taken;
  };

  const workersPass: LoaderSamples = { seconds: [] };
  const inProcessPass: LoaderSamples = { seconds: [] };
  const stepMs: number[] = [];
  const fedStepMs: number[] = [];
  const loadPerRound: number[] = [];
  try {
    console.log('warm-up: one pass per loader, one training step');
    await loaderPass(data, 0, { ...loaderBase, pool });
    await loaderPass(data, 0, { ...loaderBase, workers: 0 });
    checkLoss((await trainStep.run({ pixels: syntheticPixels, targets, sampleWeights }, parameters)).loss);

    const contenders: Array<[string, (round: number) => Promise<void>]> = [
      [
        'loader-workers',
        async (round) =>
          void workersPass.seconds.push(await loaderPass(data, round + 1, { ...loaderBase, pool })),
      ],
      [
        'loader-in-process',
        async (round) =>
          void inProcessPass.seconds.push(await loaderPass(data, round + 1, { ...loaderBase, workers: 0 })),
      ],
      [
        'lora-train-step',
        async () => {
          for (let step = 0; step < options.trainSteps; step++) {
            const start = performance.now();
            checkLoss(
              (await trainStep.run({ pixels: syntheticPixels, targets, sampleWeights }, parameters)).loss,
            );
            stepMs.push(performance.now() - start);
          }
        },
      ],
      ['lora-train-step-fed', async (round) => void fedStepMs.push(...(await fedRound(round + 1)))],
    ];
    for (let round = 0; round < options.rounds; round++) {
      loadPerRound.push(loadAverage());
      for (let i = 0; i < contenders.length; i++) {
        const [name, run] = contenders[(round + i) % contenders.length]!;
        await sleep(SETTLE_MS);
        const start = performance.now();
        await run(round);
        console.log(
          `round ${round + 1}/${options.rounds}: ${name} ${((performance.now() - start) / 1e3).toFixed(1)} s (load ${loadAverage()})`,
        );
      }
    }
  } finally {
    await trainStep.release();
    await pool.close();
    await fedPool.close();
  }

  const loaderResult = (name: string, workers: number, samples: LoaderSamples) => {
    const seconds = median(samples.seconds);
    return {
      name,
      imagesPerSecond: data.items.length / seconds,
      workers,
      batch: options.batch,
      images: data.items.length,
      imageSize: backbone.preprocess.inputSize,
      medianSecondsPerPass: seconds,
      samplesSeconds: samples.seconds,
    };
  };
  const stepResult = (name: string, samplesMs: number[], extra: Record<string, unknown> = {}) => {
    const medianMs = median(samplesMs);
    return {
      name,
      model: MODEL,
      method: 'lora',
      lora: {
        rank: MELO_LORA_DEFAULTS.rank,
        alpha: MELO_LORA_DEFAULTS.alpha,
        targets: MELO_LORA_DEFAULTS.targets,
      },
      batch: options.trainBatch,
      threads: options.threads,
      imagesPerSecond: options.trainBatch / (medianMs / 1e3),
      medianMsPerStep: medianMs,
      samplesMs,
      ...extra,
    };
  };
  const workers = loaderResult('loader-workers', options.workers, workersPass);
  const inProcess = loaderResult('loader-in-process', 0, inProcessPass);
  const step = stepResult('lora-train-step', stepMs, { pixels: 'synthetic (no loader)' });
  const fed = stepResult('lora-train-step-fed', fedStepMs, {
    pixels: `loader, ${options.workers} workers, prefetch 2`,
    workers: options.workers,
  });
  const ratio = workers.imagesPerSecond / step.imagesPerSecond;
  const loadAtEnd = loadAverage();

  console.log('\nname                  images/s');
  for (const r of [workers, inProcess, step, fed])
    console.log(`${r.name.padEnd(20)} ${r.imagesPerSecond.toFixed(2).padStart(9)}`);
  console.log(
    `\nloader (${options.workers} workers) ÷ LoRA training step: ${ratio.toFixed(1)}× (target ≥ ${TARGET_RATIO}×) ${ratio >= TARGET_RATIO ? 'MET' : 'MISSED'}`,
  );
  console.log(
    `in-process loader ÷ LoRA training step: ${(inProcess.imagesPerSecond / step.imagesPerSecond).toFixed(1)}×`,
  );
  console.log(
    `training step fed by the loader vs synthetic pixels: ${(fed.imagesPerSecond / step.imagesPerSecond).toFixed(2)}× the images/s`,
  );
  console.log(
    `load average: ${machine.loadAverageAtStart} at start, ${loadAtEnd} at end; peak RSS ${formatBytes(peakRssBytes())}`,
  );

  await writeJsonAtomic(options.out, {
    benchmark: 'data',
    machine,
    loadAverage: { start: machine.loadAverageAtStart, rounds: loadPerRound, end: loadAtEnd },
    source: {
      dir: options.imagesDir,
      images: data.items.length,
      format: 'JPEG 640×480 (BCCD)',
      augment: DEFAULT_AUGMENT,
    },
    results: [workers, inProcess, step, fed],
    ratio,
    target: { ratio: TARGET_RATIO, met: ratio >= TARGET_RATIO },
    peakRssBytes: peakRssBytes(),
  });
  console.log(`wrote ${options.out}`);
}

await main();
