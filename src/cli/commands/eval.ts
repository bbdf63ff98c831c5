import { type Command, InvalidArgumentError } from 'commander';
import { loadBackbone } from '../../checkpoints/load.ts';
import {
  type Dataset,
  normalizeSplitName,
  presentSplits,
  type SplitName,
  withItems,
} from '../../data/dataset.ts';
import { openDataSplits, parseDataSpec } from '../../data/open.ts';
import { MeloError } from '../../errors.ts';
import { renderEvalReport } from '../../eval/report/html.ts';
import { predictionsCsv } from '../../eval/report/predictions-csv.ts';
import { type EvalSplit, formatEvalText } from '../../eval/report/text.ts';
import { type EvaluatedModel, evaluateTask, type TaskEvaluation } from '../../eval/run.ts';
import { writeFileAtomic } from '../../io/atomic.ts';
import { withPrecision } from '../../model/backbone.ts';
import { loadTasks } from '../../predict.ts';
import { type BackbonePrecision, backbonePrecisionOption, parsePositiveInt } from '../options.ts';

interface EvalCommandOptions {
  backbone: string;
  adapter?: string;
  data: string;
  split?: string;
  json?: boolean;
  predictions?: string;
  report?: string;
  batchSize?: number;
  threads?: number;
  workers?: number;
  bootstrap: number;
  seed: number;
  positive?: string;
  ordinal?: boolean;
  backbonePrecision: BackbonePrecision;
}

function parseNonNegativeInt(value: string): number {
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed < 0 || value.trim() === '')
    throw new InvalidArgumentError(`expected an integer ≥ 0, got '${value}'`);
  return parsed;
}

/** The split named by --split or by the spec's own `:split` suffix, if any. */
function namedSplit(spec: string, option: string | undefined): SplitName | undefined {
  if (option !== undefined) {
    const split = normalizeSplitName(option);
    if (split === undefined) throw new MeloError('USAGE', `--split '${option}' is not train, val or test`);
    return split;
  }
  return parseDataSpec(spec).split;
}

/**
 * What `melo eval` evaluates: the named split; else the test split when the data has one; else every
 * item (a flat folder or a manifest without a split column has nothing else to offer).
 */
async function chooseDataset(
  spec: string,
  option: string | undefined,
): Promise<{ dataset: Dataset; split: EvalSplit }> {
  const named = namedSplit(spec, option);
  if (named !== undefined) {
    const dataset = (await openDataSplits(spec, { split: named }))[named];
    if (dataset === undefined)
      throw new MeloError('NOT_FOUND', `has no ${named} split`, { file: parseDataSpec(spec).path });
    return { dataset, split: named };
  }
  const splits = await openDataSplits(spec, { valFraction: 0 });
  if (splits.test) return { dataset: splits.test, split: 'test' };
  const present = presentSplits(splits).map(([, dataset]) => dataset);
  if (present.length === 0)
    throw new MeloError('BAD_DATA', 'holds no items', { file: parseDataSpec(spec).path });
  return {
    dataset: withItems(
      present[0]!,
      present.flatMap((dataset) => dataset.items),
    ),
    split: 'all',
  };
}

/** The JSON document `--json` prints: the contract's fields first, then the rest of the summary. */
export function evalJson(evaluation: TaskEvaluation, split: string, data: string): Record<string, unknown> {
  const { summary } = evaluation;
  return {
    task: evaluation.task,
    taskType: evaluation.taskType,
    data,
    split,
    n: summary.n,
    classes: evaluation.classNames,
    threshold: summary.threshold,
    metrics: summary.metrics,
    ci: summary.ci,
    bootstrap: summary.bootstrap,
    perClass: summary.perClass,
    confusionMatrix: summary.confusionMatrix,
    calibration: summary.calibration,
    notes: summary.notes,
  };
}

export function registerEvalCommand(program: Command): void {
  program
    .command('eval')
    .description(
      'evaluate a task adapter (or the backbone head) on a labelled dataset split: metrics with bootstrap CIs, predictions CSV, HTML report',
    )
    .requiredOption('--backbone <dir>', 'checkpoint directory (Hugging Face or timm layout)')
    .option('--adapter <dir>', "task adapter (PEFT LoRA directory); without it, the backbone's own head")
    .requiredOption(
      '--data <spec>',
      'dataset: a directory, .npz, .csv/.tsv manifest or medmnist:<name>, optionally with :<split>',
    )
    .option(
      '--split <name>',
      'split to evaluate: train, val or test (default: test when the data has one, else every item)',
    )
    .option(
      '--positive <label>',
      "binary tasks: the class sensitivity, specificity, F1 and the ROC curve are about (default: the adapter's, set by 'melo train --positive', else the second label)",
    )
    .option(
      '--ordinal',
      "the labels are ordered grades: add quadratic weighted kappa and mean grade error (default: the adapter's, set by 'melo train --ordinal')",
    )
    .option('--json', 'print one JSON document on stdout')
    .option('--predictions <file.csv>', 'write one row per image: id, true label(s), every class probability')
    .option('--report <file.html>', 'write a self-contained HTML report with metrics and plots')
    .option('--batch-size <n>', 'images per inference call (default 32)', parsePositiveInt)
    .option('--threads <n>', 'ONNX Runtime threads (default: all cores)', parsePositiveInt)
    .addOption(backbonePrecisionOption())
    .option(
      '--workers <n>',
      'image decoding threads, 0 = in-process (default: cores − 1)',
      parseNonNegativeInt,
    )
    .option('--bootstrap <n>', 'bootstrap resamples for the 95% CIs, 0 = off', parseNonNegativeInt, 1000)
    .option('--seed <n>', 'bootstrap seed', parseNonNegativeInt, 0)
    .action(async (options: EvalCommandOptions) => {
      const { dataset, split } = await chooseDataset(options.data, options.split);
      if (options.split === undefined && parseDataSpec(options.data).split === undefined)
        process.stderr.write(
          split === 'test'
            ? `evaluating the test split of ${options.data} (${dataset.items.length} items; --split to choose another)\n`
            : `${options.data} has no test split: evaluating all ${dataset.items.length} items\n`,
        );
      const backbone = withPrecision(await loadBackbone(options.backbone), options.backbonePrecision);
      const model: EvaluatedModel =
        options.adapter !== undefined ? (await loadTasks(backbone, [options.adapter]))[0] : 'backbone';
      const showProgress = process.stderr.isTTY === true && !options.json;
      const evaluation = await evaluateTask(backbone, model, dataset, {
        bootstrap: options.bootstrap,
        seed: options.seed,
        ...(options.positive !== undefined ? { positive: options.positive } : {}),
        ...(options.ordinal ? { ordinal: true } : {}),
        ...(options.batchSize !== undefined ? { batchSize: options.batchSize } : {}),
        ...(options.threads !== undefined ? { threads: options.threads } : {}),
        ...(options.workers !== undefined ? { workers: options.workers } : {}),
        ...(showProgress
          ? {
              onProgress: (done: number, total: number) =>
                process.stderr.write(`\revaluating ${done}/${total} images\u001b[K`),
            }
          : {}),
      });
      if (showProgress) process.stderr.write('\r\u001b[K');

      // Every output is produced before any is written: a report that fails (it once did inside Vega for a
      // class named 'constructor') must not leave a predictions CSV from the same run behind.
      const csv = options.predictions !== undefined ? predictionsCsv(evaluation) : undefined;
      const html =
        options.report !== undefined
          ? await renderEvalReport(evaluation, {
              data: options.data,
              split,
              backbone: options.backbone,
              ...(options.adapter !== undefined ? { adapter: options.adapter } : {}),
              generatedAt: new Date(),
            })
          : undefined;
      if (options.predictions !== undefined && csv !== undefined)
        await writeFileAtomic(options.predictions, csv);
      if (options.report !== undefined && html !== undefined) await writeFileAtomic(options.report, html);
      if (options.json) {
        process.stdout.write(`${JSON.stringify(evalJson(evaluation, split, options.data))}\n`);
        return;
      }
      let text = formatEvalText(evaluation, { data: options.data, split });
      if (options.predictions !== undefined) text += `predictions: ${options.predictions}\n`;
      if (options.report !== undefined) text += `report: ${options.report}\n`;
      process.stdout.write(text);
    });
}
