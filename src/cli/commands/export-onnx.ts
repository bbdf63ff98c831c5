import { type Command, InvalidArgumentError, Option } from 'commander';
import { loadBackbone } from '../../checkpoints/load.ts';
import { exportOnnx, ONNX_INPUT_NAME, ONNX_OUTPUT_NAME } from '../../io/onnx-export.ts';
import { withPrecision } from '../../model/backbone.ts';
import { loadTasks } from '../../predict.ts';
import { type BackbonePrecision, backbonePrecisionOption } from '../options.ts';

export interface ExportOnnxCommandOutput {
  readonly stdout: (text: string) => void;
}

const processOutput: ExportOnnxCommandOutput = { stdout: (text) => process.stdout.write(text) };

function parseImageSize(value: string): [number, number] {
  const parts = value.split(/[,x]/).map(Number);
  const [height, width] = parts.length === 1 ? [parts[0], parts[0]] : parts;
  if (
    parts.length > 2 ||
    !Number.isInteger(height) ||
    !Number.isInteger(width) ||
    height! <= 0 ||
    width! <= 0
  )
    throw new InvalidArgumentError(`expected <size> or <height>,<width> in pixels, got '${value}'`);
  return [height!, width!];
}

/** `melo export-onnx`: one task (LoRA merged) as a standalone ONNX classifier. */
export function registerExportOnnxCommand(
  program: Command,
  output: ExportOnnxCommandOutput = processOutput,
): void {
  program
    .command('export-onnx')
    .description(
      `export one task as a plain ONNX model (LoRA merged, standard ops, opset 18): input ${ONNX_INPUT_NAME} [batch, 3, H, W], output ${ONNX_OUTPUT_NAME}; labels and preprocessing in its metadata`,
    )
    .requiredOption('--backbone <dir>', 'checkpoint directory (Hugging Face or timm layout)')
    .option('--adapter <dir>', 'task adapter to merge; without it the backbone is exported with its own head')
    .requiredOption('--out <file>', 'ONNX file to write, e.g. model.onnx')
    .option(
      '--image-size <px>',
      'input resolution, <size> or <height>,<width> (default: the backbone’s)',
      parseImageSize,
    )
    .option('--json', 'print a JSON summary')
    .addOption(backbonePrecisionOption())
    .addOption(
      new Option(
        '--int8-weights <encoding>',
        'with --backbone-precision int8: int8 (fastest with AVX-512 VNNI / AVX-VNNI; saturates on AVX2-only CPUs) or uint8 (+128: exact on every CPU) (default: what this machine multiplies exactly)',
      ).choices(['int8', 'uint8']),
    )
    .action(
      async (options: {
        backbone: string;
        adapter?: string;
        out: string;
        imageSize?: [number, number];
        json?: boolean;
        backbonePrecision: BackbonePrecision;
        int8Weights?: 'int8' | 'uint8';
      }) => {
        // The float projections stay: LoRA is merged into them before they are quantised.
        const backbone = withPrecision(await loadBackbone(options.backbone), options.backbonePrecision, {
          keepFloat: true,
        });
        const task = options.adapter ? (await loadTasks(backbone, [options.adapter]))[0] : undefined;
        const result = await exportOnnx(backbone, options.out, {
          ...(task ? { task: { adapter: task.adapter, labels: task.labels } } : {}),
          ...(options.imageSize ? { imageSize: options.imageSize } : {}),
          ...(options.int8Weights ? { int8Weights: options.int8Weights } : {}),
        });
        const summary = {
          file: options.out,
          task: result.task,
          labels: result.labels,
          input: { name: ONNX_INPUT_NAME, shape: ['batch', backbone.config.channels, ...result.imageSize] },
          output: { name: ONNX_OUTPUT_NAME, shape: ['batch', result.labels.length] },
          opset: result.opset,
          bytes: result.bytes,
        };
        output.stdout(
          options.json
            ? `${JSON.stringify(summary)}\n`
            : `wrote ${options.out} (${(result.bytes / 1048576).toFixed(1)} MiB): task '${result.task}', ${result.labels.length} classes, ${ONNX_INPUT_NAME} [batch, ${backbone.config.channels}, ${result.imageSize.join(', ')}] → ${ONNX_OUTPUT_NAME}\n`,
        );
      },
    );
}
