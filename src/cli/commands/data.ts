import { type Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { checkDataset, formatDataCheckReport } from '../../data/check.ts';
import { fetchMedmnist, MEDMNIST_SIZES, type MedmnistSize } from '../../data/medmnist-fetch.ts';
import { type OpenDataOptions, openDataSplits } from '../../data/open.ts';
import { MeloError } from '../../errors.ts';
import { parseNonNegativeNumber, parsePositiveInt } from '../options.ts';

/** Where the command writes; tests pass their own sinks. */
export interface DataCommandOutput {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
}

const processOutput: DataCommandOutput = {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
};

interface CheckCommandOptions {
  split?: string;
  fold?: string;
  valFraction: number;
  seed: number;
  limit?: number;
  limitPerClass?: number;
  pathColumn?: string;
  labelColumns?: string;
  splitColumn?: string;
  labelSeparator?: string;
  minSize: number;
  json?: boolean;
}

interface FetchCommandOptions {
  size: MedmnistSize;
  dir?: string;
  url?: string;
  md5?: string;
  verify: boolean;
  json?: boolean;
}

function parseInteger(value: string): number {
  const parsed = Number(value);
  if (!Number.isSafeInteger(parsed)) throw new InvalidArgumentError(`expected an integer, got '${value}'`);
  return parsed;
}

function parseFraction(value: string): number {
  const parsed = parseNonNegativeNumber(value);
  if (parsed >= 1) throw new InvalidArgumentError(`expected a fraction in [0, 1), got '${value}'`);
  return parsed;
}

function parseSize(value: string): MedmnistSize {
  const parsed = Number(value);
  if (!(MEDMNIST_SIZES as readonly number[]).includes(parsed)) {
    throw new InvalidArgumentError(`expected one of ${MEDMNIST_SIZES.join(', ')}, got '${value}'`);
  }
  return parsed as MedmnistSize;
}

/** `melo data check <spec>` and `melo data fetch medmnist <name>`. */
export function registerDataCommand(program: Command, output: DataCommandOutput = processOutput): void {
  const data = program.command('data').description('inspect and download datasets');

  data
    .command('check')
    .description(
      'read every item of a dataset and list all unreadable or suspicious ones (exit status 1 if any), ' +
        'then class counts per split',
    )
    .argument(
      '<spec>',
      'dataset: a directory (ImageFolder or MNIST idx), .npz, .csv/.tsv, or medmnist:<name>; ' +
        'append :train, :val or :test for one split',
    )
    .option('--split <name>', 'check only this split (train, val, test)')
    .option('--fold <i/k>', 'cross-validation fold i (0-based) of k as val, train+val pooled')
    .option(
      '--val-fraction <f>',
      'carve a stratified val split of this fraction out of train when there is none',
      parseFraction,
      0,
    )
    .option('--seed <n>', 'seed for val split, folds and limits', parseInteger, 0)
    .option('--limit <n>', 'check a seeded, stratified subset of n items per split', parsePositiveInt)
    .option('--limit-per-class <n>', 'at most n items per class per split', parsePositiveInt)
    .option('--path-column <name>', 'manifest column holding image paths')
    .option('--label-columns <names>', 'manifest label column, or several comma-separated 0/1 columns')
    .option('--split-column <name>', 'manifest column holding train/val/test')
    .option(
      '--label-separator <s>',
      "split the manifest label column into several labels on this string (e.g. '|')",
    )
    .option('--min-size <px>', 'report images smaller than this many pixels on a side', parsePositiveInt, 8)
    .option('--json', 'print the report as one JSON document')
    .action(async (spec: string, options: CheckCommandOptions) => {
      const openOptions: OpenDataOptions = {
        split: options.split,
        fold: options.fold,
        valFraction: options.valFraction,
        seed: options.seed,
        limit: options.limit,
        limitPerClass: options.limitPerClass,
        pathColumn: options.pathColumn,
        labelColumns: options.labelColumns?.split(',').map((name) => name.trim()),
        splitColumn: options.splitColumn,
        labelSeparator: options.labelSeparator,
      };
      const splits = await openDataSplits(spec, openOptions);
      const report = await checkDataset(splits, { minSize: options.minSize });
      output.stdout(options.json ? `${JSON.stringify(report)}\n` : formatDataCheckReport(report));
      if (!report.ok) {
        throw new CommanderError(1, 'melo.data.check', `${report.issues.length} problems in ${spec}`);
      }
    });

  data
    .command('fetch')
    .description('download a dataset into the local cache, verifying its md5')
    .argument('<source>', 'where from; only "medmnist" for now')
    .argument('<name>', 'MedMNIST dataset name, e.g. retinamnist')
    .addOption(
      new Option('--size <px>', 'image size')
        .choices(MEDMNIST_SIZES.map(String))
        .argParser(parseSize)
        .default(28),
    )
    .option('--dir <path>', 'cache directory (default $MELO_DATA_DIR, else ~/.cache/melo/medmnist)')
    .option('--url <base>', 'base URL of the files (default $MELO_MEDMNIST_URL, else the Zenodo record)')
    .option('--md5 <hex>', 'expected md5, for files whose md5 melo does not know')
    .option('--no-verify', 'accept the file without an md5 check')
    .option('--json', 'print the result as one JSON document')
    .action(async (source: string, name: string, options: FetchCommandOptions) => {
      if (source !== 'medmnist') {
        throw new MeloError('USAGE', `unknown dataset source '${source}'; only 'medmnist' can be fetched`);
      }
      let lastReport = 0;
      const result = await fetchMedmnist(name, {
        size: options.size,
        cacheDir: options.dir,
        baseUrl: options.url,
        md5: options.md5,
        verify: options.verify,
        onProgress: options.json
          ? undefined
          : (received, total) => {
              if (received - lastReport < 8 << 20 && received !== total) return;
              lastReport = received;
              const of = total === undefined ? '' : ` of ${(total / 1048576).toFixed(1)} MiB`;
              output.stderr(`downloaded ${(received / 1048576).toFixed(1)} MiB${of}\n`);
            },
      });
      if (options.json) {
        output.stdout(`${JSON.stringify(result)}\n`);
        return;
      }
      const how = result.downloaded ? 'downloaded' : 'already cached';
      const check = result.verified ? `md5 ${result.md5} verified` : `md5 ${result.md5} NOT verified`;
      output.stdout(`${result.path} (${how}; ${check})\n`);
    });
}
