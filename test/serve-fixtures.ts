import { cp, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Backbone } from '../src/checkpoints/load.ts';
import { saveAdapter } from '../src/io/peft.ts';
import { type Adapter, initAdapter, type TaskType } from '../src/model/adapter.ts';
import type { LoraTarget } from '../src/model/anatomy.ts';
import { Random } from '../src/util/random.ts';

/** Test adapters for the serving tests: they differ in rank, scale, targets, layers, classes and kind. */
export interface TestAdapterSpec {
  readonly task: string;
  readonly labels: readonly string[];
  readonly taskType?: TaskType;
  readonly rank?: number;
  readonly alpha?: number;
  readonly targets?: readonly LoraTarget[];
  readonly layers?: readonly number[];
  /** A linear probe: a head and no LoRA pairs. */
  readonly linear?: boolean;
  readonly seed: number;
  /** Reuse another adapter's head, so only the LoRA factors tell the two tasks apart. */
  readonly headFrom?: Adapter;
}

export const FIXTURES = new URL('./fixtures/vit/', import.meta.url).pathname;

/** Like a trained adapter: A as initialised, B random (not zero), so every task really changes the backbone. */
export function makeAdapter(backbone: Backbone, spec: TestAdapterSpec): Adapter {
  const random = new Random(spec.seed);
  const rank = spec.rank ?? 2;
  const adapter = initAdapter(
    backbone.config,
    {
      rank,
      alpha: spec.alpha ?? rank,
      dropout: 0,
      targets: [...(spec.targets ?? ['query', 'value'])],
      ...(spec.layers ? { layers: [...spec.layers] } : {}),
    },
    {
      task: spec.task,
      taskType: spec.taskType ?? (spec.labels.length === 2 ? 'binary' : 'multiclass'),
      labels: [...spec.labels],
      backboneFingerprint: backbone.fingerprint,
    },
    random,
    spec.headFrom?.head,
  );
  if (spec.linear) return { ...adapter, pairs: new Map() };
  for (const pair of adapter.pairs.values()) {
    for (let i = 0; i < pair.B.data.length; i++) pair.B.data[i] = random.uniform(-0.6, 0.6);
  }
  return adapter;
}

export async function writeAdapter(root: string, dirName: string, adapter: Adapter): Promise<string> {
  const dir = join(root, dirName);
  await saveAdapter(dir, adapter);
  return dir;
}

/** The committed fixture adapter (PEFT files without melo metadata: named after its directory). */
export async function copyFixtureAdapter(root: string, dirName: string): Promise<string> {
  const dir = join(root, dirName);
  await mkdir(dir, { recursive: true });
  await cp(join(FIXTURES, 'lora_adapter'), dir, { recursive: true });
  return dir;
}

/** A mixed set: two tasks sharing a head (only LoRA differs), several ranks/targets/layers, a linear probe, multi-label. */
export function adapterSet(backbone: Backbone): Record<string, Adapter> {
  const alpha = makeAdapter(backbone, {
    task: 'alpha',
    labels: ['a0', 'a1', 'a2'],
    rank: 2,
    alpha: 4,
    seed: 1,
  });
  return {
    alpha,
    twin: makeAdapter(backbone, {
      task: 'twin',
      labels: ['a0', 'a1', 'a2'],
      rank: 2,
      alpha: 4,
      seed: 2,
      headFrom: alpha,
    }),
    wide: makeAdapter(backbone, {
      task: 'wide',
      labels: ['w0', 'w1', 'w2', 'w3', 'w4'],
      rank: 4,
      alpha: 2,
      targets: ['query', 'key', 'output', 'fc1', 'fc2'],
      layers: [1],
      seed: 3,
    }),
    probe: makeAdapter(backbone, { task: 'probe', labels: ['no', 'yes'], linear: true, seed: 4 }),
    multi: makeAdapter(backbone, {
      task: 'multi',
      labels: ['m0', 'm1', 'm2', 'm3'],
      taskType: 'multilabel',
      rank: 1,
      alpha: 3,
      targets: ['value'],
      seed: 5,
    }),
  };
}
