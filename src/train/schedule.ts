/**
 * Learning-rate schedules. `step` counts optimizer updates already done (after gradient accumulation):
 * update number 0 uses learningRate(schedule, 0, total), which is what torch's LambdaLR/StepLR give when
 * scheduler.step() follows every optimizer.step(). Hence with warm-up the very first update has rate 0,
 * exactly as transformers' schedules do.
 */
import { MeloError } from '../errors.ts';

export type ScheduleConfig =
  /**
   * Linear warm-up from 0 to `lr` over `warmupSteps` (default 0), then half a cosine from `lr` down to
   * `minLr` (default 0) at `totalSteps`. With minLr 0 this is transformers.get_cosine_schedule_with_warmup:
   * lr·0.5·(1 + cos(π·progress)), progress = (step − warmup) / (total − warmup). Past the end it stays at minLr.
   */
  | { readonly kind: 'cosine'; readonly lr: number; readonly warmupSteps?: number; readonly minLr?: number }
  /** `lr` throughout after the same optional linear warm-up (transformers.get_constant_schedule_with_warmup). */
  | { readonly kind: 'constant'; readonly lr: number; readonly warmupSteps?: number }
  /**
   * torch's StepLR: lr·gamma^⌊step / stepSize⌋, gamma default 0.1, stepSize default ⌈totalSteps / 3⌉ (so the
   * run falls into three equal-length stretches, the last possibly shorter).
   */
  | { readonly kind: 'step'; readonly lr: number; readonly gamma?: number; readonly stepSize?: number };

export type ScheduleKind = ScheduleConfig['kind'];

export function learningRate(schedule: ScheduleConfig, step: number, totalSteps: number): number {
  checkCount('step', step, 0);
  checkCount('totalSteps', totalSteps, 1);
  const lr = schedule.lr;
  if (!(Number.isFinite(lr) && lr >= 0)) usage(`lr must be a finite number ≥ 0, got ${lr}`);
  if (schedule.kind === 'step') {
    const gamma = schedule.gamma ?? 0.1;
    if (!(Number.isFinite(gamma) && gamma > 0)) usage(`gamma must be a finite number > 0, got ${gamma}`);
    const stepSize = schedule.stepSize ?? Math.max(1, Math.ceil(totalSteps / 3));
    checkCount('stepSize', stepSize, 1);
    return lr * gamma ** Math.floor(step / stepSize);
  }
  const warmup = schedule.warmupSteps ?? 0;
  checkCount('warmupSteps', warmup, 0);
  if (step < warmup) return (lr * step) / Math.max(1, warmup);
  if (schedule.kind === 'constant') return lr;
  const minLr = schedule.minLr ?? 0;
  if (!(minLr >= 0 && minLr <= lr)) usage(`minLr must be between 0 and lr (${lr}), got ${minLr}`);
  const progress = Math.min(1, (step - warmup) / Math.max(1, totalSteps - warmup));
  return minLr + (lr - minLr) * 0.5 * (1 + Math.cos(Math.PI * progress));
}

function checkCount(name: string, value: number, least: number): void {
  if (!(Number.isInteger(value) && value >= least))
    usage(`${name} must be an integer ≥ ${least}, got ${value}`);
}

function usage(message: string): never {
  throw new MeloError('USAGE', `learning-rate schedule: ${message}`);
}
