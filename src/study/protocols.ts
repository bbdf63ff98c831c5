import { MeloError } from '../errors.ts';
import type { TrainingMethod } from '../model/task-graph.ts';

/**
 * A named training budget for `melo study`: everything that decides how each (dataset, method, seed)
 * run is trained. The doc names the protocol that produced each table, and runs of different protocols
 * never share an output directory.
 */
export interface StudyProtocol {
  readonly name: StudyProtocolName;
  readonly description: string;
  readonly epochs: number;
  readonly batchSize: number;
  /** At most this many training (and validation) images per run; undefined: the whole split. */
  readonly limit?: number;
  /** Peak learning rate per method. */
  readonly lr: Readonly<Record<TrainingMethod, number>>;
  /** `melo train` flags for the optimiser, schedule, clipping and loss (the same for every method). */
  readonly trainFlags: readonly string[];
}

export const STUDY_PROTOCOL_NAMES = ['small-budget', 'melo-paper'] as const;
export type StudyProtocolName = (typeof STUDY_PROTOCOL_NAMES)[number];

export const STUDY_PROTOCOLS: Readonly<Record<StudyProtocolName, StudyProtocol>> = {
  /**
   * The budget docs/study.md was first written with: 500 seeded, stratified training images per run,
   * 3 epochs, AdamW (weight decay 0.01), 10 warm-up steps then cosine to 0, gradient norm clipped at 1,
   * balanced class weights; learning rates picked on the bundled tasks.
   */
  'small-budget': {
    name: 'small-budget',
    description: 'at most 500 training images, 3 epochs, AdamW, warm-up + cosine, balanced class weights',
    epochs: 3,
    batchSize: 32,
    limit: 500,
    lr: { linear: 3e-3, lora: 3e-3, full: 3e-4 },
    trainFlags: ['--warmup-steps', '10', '--class-weights', 'balanced'],
  },
  /**
   * The official MeLo training script (JamesQFreeman/LoRA-ViT, train.py): the full training split,
   * 20 epochs, torch.optim.Adam at 1e-3 for every method (no weight decay, no clipping, no warm-up),
   * CosineAnnealingLR down to 1e-6, plain cross-entropy; LoRA rank 4, alpha 4 on query and value.
   * Differences, stated in docs/study.md: the official scheduler steps once per epoch, melo's cosine per
   * optimiser step (the same curve sampled finer); batch 32 here instead of the script's 128 on a GPU.
   */
  'melo-paper': {
    name: 'melo-paper',
    description: 'full training split, 20 epochs, Adam 1e-3, cosine to 1e-6 (the official MeLo script)',
    epochs: 20,
    batchSize: 32,
    lr: { linear: 1e-3, lora: 1e-3, full: 1e-3 },
    trainFlags: ['--weight-decay', '0', '--warmup-steps', '0', '--min-lr', '1e-6', '--max-grad-norm', '0'],
  },
};

export function studyProtocol(name: string): StudyProtocol {
  if (!(STUDY_PROTOCOL_NAMES as readonly string[]).includes(name))
    throw new MeloError('USAGE', `--protocol ${name}: use one of ${STUDY_PROTOCOL_NAMES.join(', ')}`);
  return STUDY_PROTOCOLS[name as StudyProtocolName];
}

/** One LoRA configuration of an ablation: rank and targets (alpha = rank, so the scale stays 1). */
export interface LoraVariant {
  readonly rank: number;
  readonly targets: readonly string[];
}

/** MeLo's own configuration, the one every non-ablation run uses. */
export const MELO_VARIANT: LoraVariant = { rank: 4, targets: ['query', 'value'] };

export function variantKey(variant: LoraVariant): string {
  return `r${variant.rank}-${variant.targets.join('+')}`;
}

export function variantLabel(variant: LoraVariant): string {
  return `LoRA r=${variant.rank} (${variant.targets.map((t) => TARGET_SHORT[t] ?? t).join(',')})`;
}

const TARGET_SHORT: Readonly<Record<string, string>> = {
  query: 'q',
  key: 'k',
  value: 'v',
  output: 'o',
  fc1: 'fc1',
  fc2: 'fc2',
};

/**
 * `--ablation-ranks 4,8,16 --ablation-targets "query,value;query,key,value,output"`: every rank with every
 * target set.
 */
export function ablationVariants(ranks: string, targetSets: string): LoraVariant[] {
  const parsedRanks = ranks.split(',').map((item) => {
    const rank = Number(item.trim());
    if (!Number.isInteger(rank) || rank <= 0)
      throw new MeloError('USAGE', `--ablation-ranks: '${item}' is not a positive integer`);
    return rank;
  });
  const sets = targetSets.split(';').map((set) =>
    set
      .split(',')
      .map((t) => t.trim())
      .filter((t) => t.length > 0),
  );
  if (sets.some((set) => set.length === 0))
    throw new MeloError('USAGE', '--ablation-targets: an empty target set (separate sets with ;)');
  return parsedRanks.flatMap((rank) => sets.map((targets) => ({ rank, targets })));
}
