import type { Command } from 'commander';
import { loadBackbone } from '../../checkpoints/load.ts';
import { loadTasks, type Prediction, predict, predictTasks } from '../../predict.ts';
import { parsePositiveInt, parseWindow } from '../options.ts';

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
    .option('--threads <n>', 'ONNX Runtime threads (default: all cores)', parsePositiveInt)
    .option('--window <center,width>', 'DICOM VOI window overriding the file', parseWindow)
    .option('--json', 'print one JSON document on stdout')
    .argument('<image...>', 'image files')
    .action(
      async (
        images: string[],
        options: {
          backbone: string;
          adapter: string[];
          threads?: number;
          json?: boolean;
          window?: { center: number; width: number };
        },
      ) => {
        const backbone = await loadBackbone(options.backbone);
        const settings = {
          ...(options.threads ? { threads: options.threads } : {}),
          ...(options.window ? { window: options.window } : {}),
        };
        const predictions =
          options.adapter.length > 0
            ? await predictTasks(backbone, await loadTasks(backbone, options.adapter), images, settings)
            : await predict(backbone, images, settings);
        process.stdout.write(
          options.json ? `${JSON.stringify({ predictions })}\n` : formatTable(predictions),
        );
      },
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
