import { type Command, Option } from 'commander';
import { type Backbone, loadBackbone } from '../../checkpoints/load.ts';
import { errorMessage, MeloError } from '../../errors.ts';
import { DEFAULT_MAX_PIXELS, imageLimits } from '../../imaging/limits.ts';
import type { ReadImageOptions } from '../../imaging/read.ts';
import { withPrecision } from '../../model/backbone.ts';
import { readRoutingKeys } from '../../pacs/instance.ts';
import { routingMatches } from '../../pacs/routing.ts';
import {
  type LoadedTask,
  loadTasks,
  type Prediction,
  predict,
  predictTasks,
  preparePixels,
} from '../../predict.ts';
import {
  type BackbonePrecision,
  backbonePrecisionOption,
  parsePositiveInt,
  parseWindow,
} from '../options.ts';

export function registerPredictCommand(program: Command): void {
  program
    .command('predict')
    .description(
      'classify images (PNG, JPEG, TIFF, WebP, DICOM) with a backbone and its head or task adapters',
    )
    .requiredOption('--backbone <dir>', 'checkpoint directory (Hugging Face or timm layout)')
    .option(
      '--adapter <dir>',
      'task adapter (PEFT LoRA directory); repeat for several tasks',
      collect,
      [] as string[],
    )
    .option(
      '--tasks <names>',
      "tasks to run, comma-separated, or 'all' (default: for DICOM images, the tasks whose routing matches the image's modality and body part; for other images, all)",
    )
    .option('--threads <n>', 'ONNX Runtime threads (default: all cores)', parsePositiveInt)
    .addOption(backbonePrecisionOption())
    .option('--window <center,width>', 'DICOM VOI window overriding the file', parseWindow)
    .option(
      '--max-pixels <n>',
      `largest image (width × height, per DICOM frame), checked from the header before decoding (default ${DEFAULT_MAX_PIXELS})`,
      parsePositiveInt,
    )
    .option('--json', 'print one JSON document on stdout')
    .addOption(
      new Option(
        '--on-bad-image <action>',
        'an unreadable image: fail (stop, print nothing) or skip (results for the others, the bad ones on stderr, exit status 2)',
      )
        .choices(['fail', 'skip'])
        .default('fail'),
    )
    .argument('<image...>', 'image files')
    .action(
      async (
        images: string[],
        options: {
          backbone: string;
          adapter: string[];
          threads?: number;
          tasks?: string;
          json?: boolean;
          window?: { center: number; width: number };
          backbonePrecision: BackbonePrecision;
          maxPixels?: number;
          onBadImage: 'fail' | 'skip';
        },
      ) => {
        const backbone = withPrecision(await loadBackbone(options.backbone), options.backbonePrecision);
        const settings = {
          ...(options.threads ? { threads: options.threads } : {}),
          ...(options.window ? { window: options.window } : {}),
          ...(options.maxPixels ? { limits: imageLimits({ maxPixels: options.maxPixels }) } : {}),
        };
        const bad = options.onBadImage === 'skip' ? await unreadableImages(backbone, images, settings) : [];
        for (const { error } of bad) process.stderr.write(`skipped ${errorMessage(error)}\n`);
        images = images.filter((image) => !bad.some((entry) => entry.image === image));
        let predictions: Prediction[];
        if (options.adapter.length > 0) {
          const tasks = await loadTasks(backbone, options.adapter);
          const selection = await selectTasks(tasks, images, options.tasks);
          for (const [i, chosen] of selection.entries()) {
            if (chosen?.size === 0)
              process.stderr.write(
                `${images[i]}: no task's routing matches this image; none run (--tasks all runs every task)\n`,
              );
          }
          predictions = await predictTasks(backbone, tasks, images, { ...settings, selection });
        } else {
          if (options.tasks !== undefined)
            throw new MeloError('USAGE', '--tasks needs task adapters (--adapter <dir>)');
          predictions = await predict(backbone, images, settings);
        }
        process.stdout.write(
          options.json ? `${JSON.stringify({ predictions })}\n` : formatTable(predictions),
        );
        // Results were printed, but not for every file: a script must be able to tell.
        if (bad.length > 0) process.exitCode = 2;
      },
    );
}

/** The images that cannot be read, decoded or preprocessed, each with its error (decoded once more later). */
async function unreadableImages(
  backbone: Backbone,
  images: readonly string[],
  options: ReadImageOptions,
): Promise<{ image: string; error: unknown }[]> {
  const bad: { image: string; error: unknown }[] = [];
  for (const image of images) {
    try {
      await preparePixels(backbone, [image], options);
    } catch (error) {
      bad.push({ image, error });
    }
  }
  return bad;
}

/** Per image, the tasks to run: named ones, all, or (default) those whose routing matches a DICOM image. */
async function selectTasks(
  tasks: readonly LoadedTask[],
  images: readonly string[],
  asked: string | undefined,
): Promise<(ReadonlySet<string> | undefined)[]> {
  const names = tasks.map((task) => task.name);
  if (asked !== undefined && asked.trim() !== 'all') {
    const chosen = asked
      .split(',')
      .map((name) => name.trim())
      .filter((name) => name !== '');
    const unknown = chosen.find((name) => !names.includes(name));
    if (unknown !== undefined || chosen.length === 0)
      throw new MeloError(
        'USAGE',
        `--tasks: '${unknown ?? asked}' is not one of the loaded tasks (${names.join(', ')})`,
      );
    return images.map(() => new Set(chosen));
  }
  if (asked !== undefined) return images.map(() => undefined);
  return Promise.all(
    images.map(async (image) => {
      const keys = await readRoutingKeys(image);
      if (!keys) return undefined;
      return new Set(
        tasks.filter((task) => routingMatches(task.adapter.metadata.routing, keys)).map((task) => task.name),
      );
    }),
  );
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function formatTable(predictions: readonly Prediction[]): string {
  const rows = predictions.map((p) => {
    const confidence = Math.max(...p.probabilities);
    return [p.image, p.task, p.prediction, `${(confidence * 100).toFixed(1)}%`];
  });
  const header = ['image', 'task', 'prediction', 'probability'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) =>
    `${cells
      .map((cell, i) => cell.padEnd(widths[i]!))
      .join('  ')
      .trimEnd()}\n`;
  return line(header) + rows.map(line).join('');
}
