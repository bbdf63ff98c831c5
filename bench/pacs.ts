/**
 * `npm run bench:pacs`: instances per second through `melo pacs pull` (QIDO-RS search, WADO-RS retrieve,
 * routed classification, one DICOM SR per instance stored back by STOW-RS) against a real Orthanc on
 * loopback, and the overhead of DICOMweb + SR over plain `melo predict` (predictTasks: the same decoder,
 * preprocessing and sessions) on the same files, same adapters, same threads, in the same run.
 *
 * Models: the shipped tiny backbone (models/melo-vit-tiny-fmnist) and ViT-B/16 at 224 px with random
 * weights of the real shapes (bench/lib/random-vit.ts; values do not change the work). Two task adapters
 * (LoRA r=4 on query/value), no routing: every instance runs both. Instances: copies of four shared DICOM
 * files (CT, MR, US, OT) with new SOP Instance UIDs (same length, patched in place).
 *
 * Each model: a warm-up predict, then rounds of plain predict and pull (the SRs deleted from Orthanc after
 * each pull, so every round does the same work), and a last predict; the overhead compares the median
 * pull with the median predict. Every time is recorded, so drift on a shared machine shows.
 *
 *   npm run bench:pacs [-- --tiny-instances 64 --base-instances 16 --threads 2 --rounds 3 --out FILE]
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { type Backbone, loadBackbone } from '../src/checkpoints/load.ts';
import { saveAdapter } from '../src/io/peft.ts';
import { initAdapter } from '../src/model/adapter.ts';
import { vitConfig } from '../src/model/vit-config.ts';
import { DicomwebPacs } from '../src/pacs/dicomweb.ts';
import { readInstanceHeader } from '../src/pacs/instance.ts';
import { pullAndClassify } from '../src/pacs/pull.ts';
import { loadTasks, predictTasks } from '../src/predict.ts';
import { Random } from '../src/util/random.ts';
import { Orthanc } from '../test/helpers/orthanc.ts';
import { integerOption } from './lib/args.ts';
import { loadAverage, machineInfo } from './lib/machine.ts';
import { randomBackbone } from './lib/random-vit.ts';
import { type BenchResult, writeBenchReport } from './lib/results.ts';
import { median } from './lib/timing.ts';
import { vitFlopsPerImage } from './lib/vit-flops.ts';

const here = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(here, '..');
const DICOM_DIR = process.env.MELO_DICOM_DIR ?? resolve(REPO, '../shared/data/dicom/pydicom-test-files');
const SOURCES = ['CT_small.dcm', 'MR_small.dcm', 'ExplVR_BigEnd.dcm', 'SC_rgb_jpeg_dcmtk.dcm'];

function parseOptions() {
  const { values } = parseArgs({
    options: {
      'tiny-instances': { type: 'string', default: '64' },
      'base-instances': { type: 'string', default: '16' },
      threads: { type: 'string', default: '2' },
      rounds: { type: 'string', default: '3' },
      out: { type: 'string', default: join(here, 'results', 'pacs.json') },
    },
  });
  return {
    tinyInstances: integerOption('tiny-instances', values['tiny-instances']!, 4),
    baseInstances: integerOption('base-instances', values['base-instances']!, 0),
    threads: integerOption('threads', values.threads!, 1),
    rounds: integerOption('rounds', values.rounds!, 1),
    out: values.out!,
  };
}

/** `count` instances: the sources in turn, each copy with a new SOP Instance UID of the same length. */
async function makeInstances(dir: string, count: number): Promise<string[]> {
  const sources = await Promise.all(SOURCES.map((file) => readFile(join(DICOM_DIR, file))));
  const paths: string[] = [];
  for (let i = 0; i < count; i++) {
    const bytes = Buffer.from(sources[i % sources.length]!);
    const uid = readInstanceHeader(bytes, SOURCES[i % sources.length]!).sopInstanceUid;
    const last = uid.slice(uid.lastIndexOf('.') + 1);
    // A last component of the same width, no leading zero: 1 followed by the copy number.
    const replacement = `${uid.slice(0, uid.lastIndexOf('.') + 1)}1${String(i).padStart(last.length - 1, '0')}`;
    if (replacement.length !== uid.length) throw new Error(`cannot renumber ${uid}`);
    const from = Buffer.from(uid, 'latin1');
    const to = Buffer.from(replacement, 'latin1');
    for (let at = bytes.indexOf(from); at >= 0; at = bytes.indexOf(from, at + from.length))
      to.copy(bytes, at);
    const path = join(dir, `instance-${i}.dcm`);
    await writeFile(path, bytes);
    paths.push(path);
  }
  return paths;
}

async function writeAdapters(dir: string, backbone: Backbone): Promise<string[]> {
  const dirs: string[] = [];
  for (let i = 0; i < 2; i++) {
    const random = new Random(500 + i);
    const name = `task${i}`;
    const adapter = initAdapter(
      backbone.config,
      { rank: 4, alpha: 4, dropout: 0, targets: ['query', 'value'] },
      { task: name, taskType: 'binary', labels: ['no', 'yes'], backboneFingerprint: backbone.fingerprint },
      random,
    );
    for (const pair of adapter.pairs.values())
      for (let j = 0; j < pair.B.data.length; j++) pair.B.data[j] = random.uniform(-0.05, 0.05);
    await saveAdapter(join(dir, name), adapter);
    dirs.push(join(dir, name));
  }
  return dirs;
}

async function seconds(run: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await run();
  return (performance.now() - start) / 1000;
}

async function measure(
  name: string,
  model: string,
  backbone: Backbone,
  count: number,
  threads: number,
  rounds: number,
  work: string,
): Promise<BenchResult> {
  const dir = await mkdtemp(join(work, `${name}-`));
  const files = await makeInstances(dir, count);
  const tasks = await loadTasks(backbone, await writeAdapters(dir, backbone));
  const orthanc = await Orthanc.start();
  try {
    for (const file of files) await orthanc.store(file);
    const loadBefore = loadAverage();
    const predict = () => predictTasks(backbone, tasks, files, { threads, batchSize: 8 });
    const pacs = new DicomwebPacs(orthanc.dicomweb);
    const pull = async () => {
      const summary = await pullAndClassify({
        source: pacs,
        destination: { kind: 'dicomweb', pacs },
        backbone,
        tasks,
        threads,
        batchSize: 8,
      });
      if (summary.failed.length > 0) throw new Error(`pull failed: ${JSON.stringify(summary.failed[0])}`);
      if (summary.instances.length !== count)
        throw new Error(`pull classified ${summary.instances.length} of ${count} instances`);
      const srs = await orthanc.find('Instance', { Modality: 'SR' });
      if (srs.length !== count) throw new Error(`Orthanc holds ${srs.length} SRs for ${count} instances`);
      // Removed again, so the next round's pull has the same work to do.
      for (const id of srs) await orthanc.deleteInstance(id);
    };
    // Warm-up (codecs, JIT), then alternating rounds: predict, pull, …, predict.
    await predict();
    const predictTimes: number[] = [];
    const pullTimes: number[] = [];
    for (let round = 0; round < rounds; round++) {
      process.stderr.write(
        `${name}: round ${round + 1}/${rounds}: melo predict, then melo pacs pull, on ${count} instances…\n`,
      );
      predictTimes.push(await seconds(predict));
      pullTimes.push(await seconds(pull));
    }
    predictTimes.push(await seconds(predict));
    const pullMedian = median(pullTimes);
    const predictMedian = median(predictTimes);
    const flops = vitFlopsPerImage(backbone.config).total * tasks.length;
    return {
      name,
      model,
      batch: 8,
      threads,
      instances: count,
      tasksPerInstance: tasks.length,
      imagesPerSecond: count / pullMedian,
      gflops: (flops * count) / pullMedian / 1e9,
      pullSeconds: pullTimes,
      predictSeconds: predictTimes,
      predictImagesPerSecond: count / predictMedian,
      overheadOverPredict: pullMedian / predictMedian - 1,
      loadAverage: { before: loadBefore, after: loadAverage() },
    };
  } finally {
    await orthanc.close();
    await rm(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const options = parseOptions();
  const machine = machineInfo();
  const work = await mkdtemp(join(tmpdir(), 'melo-bench-pacs-'));
  const results: BenchResult[] = [];
  try {
    const tiny = await loadBackbone(join(REPO, 'models/melo-vit-tiny-fmnist'));
    results.push(
      await measure(
        'pull-tiny',
        'melo-vit-tiny-fmnist',
        tiny,
        options.tinyInstances,
        options.threads,
        options.rounds,
        work,
      ),
    );
    if (options.baseInstances > 0) {
      const base = randomBackbone(vitConfig('base', { numClasses: 0 }), 7);
      results.push(
        await measure(
          'pull-vit-b16',
          'vit-b16-224',
          base,
          options.baseInstances,
          options.threads,
          options.rounds,
          work,
        ),
      );
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  for (const result of results) {
    process.stdout.write(
      `${result.name}: ${result.imagesPerSecond.toFixed(2)} instances/s through pull, plain predict ${(result.predictImagesPerSecond as number).toFixed(2)} images/s, overhead ${((result.overheadOverPredict as number) * 100).toFixed(1)}%\n`,
    );
  }
  await writeBenchReport(options.out, {
    benchmark: 'pacs',
    date: new Date().toISOString(),
    machine,
    note: 'measured on a shared 2-core machine while other jobs ran (see loadAverage per result); compare the pull with the predict of the same result only',
    results,
  });
}

await main();
