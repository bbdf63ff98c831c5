import type { Command } from 'commander';
import { loadBackbone } from '../../checkpoints/load.ts';
import {
  type EmbedPooling,
  embeddingsFileKind,
  embeddingsJson,
  embedImages,
  writeEmbeddings,
} from '../../embed.ts';
import { MeloError } from '../../errors.ts';
import { withPrecision } from '../../model/backbone.ts';
import {
  type BackbonePrecision,
  backbonePrecisionOption,
  parsePositiveInt,
  parseWindow,
} from '../options.ts';

export const EMBED_SUMMARY =
  "print or save a backbone's image embeddings (CLIP/open_clip: projected; DINOv2, ViT: CLS, or --pool cls+mean) for retrieval, clustering and probes";

/** `melo embed --backbone <dir> [--json] [--out file.npy|file.csv] [--pool cls|cls+mean] <image…>`. */
export function registerEmbedCommand(program: Command): void {
  program
    .command('embed')
    .description(EMBED_SUMMARY)
    .requiredOption('--backbone <dir>', 'checkpoint directory (Hugging Face, timm or open_clip layout)')
    .option('--out <file>', 'write the embeddings to a .npy (float32 [images, dims]) or .csv file')
    .option('--json', 'print {"embeddings":[{"image","embedding"}]} on stdout')
    .option('--pool <pool>', 'backbones without a projection: cls (default) or cls+mean', parsePool)
    .option('--threads <n>', 'ONNX Runtime threads (default: all cores)', parsePositiveInt)
    .option('--window <center,width>', 'DICOM VOI window overriding the file', parseWindow)
    .addOption(backbonePrecisionOption())
    .argument('<image...>', 'image files (PNG, JPEG, TIFF, WebP, DICOM)')
    .action(
      async (
        images: string[],
        options: {
          backbone: string;
          out?: string;
          json?: boolean;
          pool?: EmbedPooling;
          threads?: number;
          window?: { center: number; width: number };
          backbonePrecision: BackbonePrecision;
        },
      ) => {
        if (options.out) embeddingsFileKind(options.out);
        const backbone = withPrecision(await loadBackbone(options.backbone), options.backbonePrecision);
        const result = await embedImages(backbone, images, {
          ...(options.pool ? { pool: options.pool } : {}),
          ...(options.threads ? { threads: options.threads } : {}),
          ...(options.window ? { window: options.window } : {}),
        });
        if (options.out) await writeEmbeddings(options.out, result);
        if (options.json) {
          process.stdout.write(embeddingsJson(result));
          return;
        }
        const where = options.out ? ` → ${options.out}` : '';
        process.stdout.write(`${result.images.length} images, ${result.dims} values each${where}\n`);
        if (!options.out) {
          result.images.forEach((image, i) => {
            const row = result.values.subarray(
              i * result.dims,
              Math.min((i + 1) * result.dims, i * result.dims + 4),
            );
            const head = Array.from(row, (v) => v.toFixed(4)).join(', ');
            process.stdout.write(`${image}  [${head}${result.dims > 4 ? ', …' : ''}]\n`);
          });
        }
      },
    );
}

function parsePool(value: string): EmbedPooling {
  if (value !== 'cls' && value !== 'cls+mean')
    throw new MeloError('USAGE', `--pool must be cls or cls+mean, got '${value}'`);
  return value;
}
