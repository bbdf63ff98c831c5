/**
 * The resumable training checkpoint: ONE safetensors file, `checkpoint/checkpoint.safetensors`, holding
 * the trainable parameters (`parameter.<name>`), the optimiser's moments (`optimizer.<name>`), the optimiser
 * step and hyper-parameters and the trainer's position (both in `__metadata__`). It is written to a
 * temporary file and published by a single rename, so a kill at any instant leaves the previous checkpoint
 * or the new one, never parts of two. (Earlier versions wrote three files renamed one by one; a kill
 * between the renames left step-50 parameters beside step-25 moments and position, and resuming from that
 * silently changed every value of the final adapter.)
 */
import { mkdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { readSafetensors, writeSafetensors } from '../checkpoints/safetensors.ts';
import { MeloError } from '../errors.ts';
import { removeStaleTemporaries } from '../io/atomic.ts';
import type { HostTensor } from '../tensor.ts';
import { assertFiniteTensors } from '../util/finite.ts';
import { writeBoundary } from '../util/write-boundary.ts';
import {
  type OptimizerState,
  optimizerStateFromSafetensors,
  optimizerStateToSafetensors,
} from './optimizer.ts';

export const CHECKPOINT_DIR = 'checkpoint';
export const CHECKPOINT_FILE = 'checkpoint.safetensors';
const STATE_METADATA_KEY = 'melo_trainer_state';
const PARAMETER_PREFIX = 'parameter.';
const OPTIMIZER_PREFIX = 'optimizer.';
/** The three-file layout of earlier versions, whose parts cannot be shown to come from one step. */
const LEGACY_FILES = ['trainer-state.json', 'parameters.safetensors', 'optimizer.safetensors'];

/** What the trainer needs to continue: its own position (with the optimiser step it was taken at). */
export interface CheckpointState {
  readonly step: number;
}

export interface Checkpoint<State extends CheckpointState> {
  readonly path: string;
  readonly state: State;
  readonly parameters: Map<string, HostTensor>;
  readonly optimizer: OptimizerState;
}

export function checkpointPath(outDir: string): string {
  return join(outDir, CHECKPOINT_DIR, CHECKPOINT_FILE);
}

/**
 * Writes the checkpoint as one file. Parameters and moments must be finite: a diverged run keeps its last
 * good checkpoint rather than replacing it with NaN.
 */
export async function writeCheckpoint(
  outDir: string,
  state: CheckpointState,
  parameters: ReadonlyMap<string, HostTensor>,
  optimizer: OptimizerState,
): Promise<void> {
  const path = checkpointPath(outDir);
  if (optimizer.step !== state.step) {
    throw new Error(`checkpoint at step ${state.step} with an optimiser at step ${optimizer.step}`);
  }
  assertFiniteTensors(parameters, { code: 'BAD_CHECKPOINT', file: path, maxAbs: Number.MAX_VALUE });
  await mkdir(join(outDir, CHECKPOINT_DIR), { recursive: true });
  const { tensors: moments, metadata } = optimizerStateToSafetensors(optimizer);
  const tensors = new Map<string, HostTensor>();
  for (const [name, tensor] of parameters) tensors.set(`${PARAMETER_PREFIX}${name}`, tensor);
  for (const [name, tensor] of moments) tensors.set(`${OPTIMIZER_PREFIX}${name}`, tensor);
  await writeSafetensors(path, tensors, {
    metadata: { ...metadata, [STATE_METADATA_KEY]: JSON.stringify(state) },
  });
  // An older layout beside the new file would only mislead a reader; the new file is already published.
  for (const legacy of LEGACY_FILES) await rm(join(outDir, CHECKPOINT_DIR, legacy), { force: true });
  writeBoundary('removed legacy checkpoint files');
}

/**
 * Reads the checkpoint of `outDir` and checks that its parts belong together: the trainer's step, the
 * optimiser's step and a full set of finite parameters.
 */
export async function readCheckpoint<State extends CheckpointState>(
  outDir: string,
): Promise<Checkpoint<State>> {
  const dir = join(outDir, CHECKPOINT_DIR);
  const path = checkpointPath(outDir);
  if (!(await isFile(path))) {
    const legacy = await Promise.all(LEGACY_FILES.map((name) => isFile(join(dir, name))));
    if (legacy.some(Boolean)) {
      throw new MeloError(
        'BAD_CHECKPOINT',
        'holds the three-file checkpoint of an earlier melo, whose parts cannot be shown to come from one step; start again without --resume',
        { file: dir },
      );
    }
    throw new MeloError('NOT_FOUND', `no resumable checkpoint (${CHECKPOINT_FILE}) here`, { file: dir });
  }
  const file = await readSafetensors(path);
  const stateText = file.metadata[STATE_METADATA_KEY];
  let state: State;
  try {
    state = JSON.parse(stateText ?? '') as State;
  } catch {
    throw new MeloError('BAD_CHECKPOINT', `no trainer state ('${STATE_METADATA_KEY}' metadata)`, {
      file: path,
    });
  }
  const parameters = new Map<string, HostTensor>();
  const moments = new Map<string, HostTensor>();
  for (const [name, tensor] of file.tensors) {
    if (name.startsWith(PARAMETER_PREFIX)) parameters.set(name.slice(PARAMETER_PREFIX.length), tensor);
    else if (name.startsWith(OPTIMIZER_PREFIX)) moments.set(name.slice(OPTIMIZER_PREFIX.length), tensor);
    else throw new MeloError('BAD_CHECKPOINT', `unexpected tensor '${name}'`, { file: path });
  }
  const optimizer = optimizerStateFromSafetensors(moments, file.metadata, path);
  if (typeof state?.step !== 'number' || state.step !== optimizer.step) {
    throw new MeloError(
      'BAD_CHECKPOINT',
      `mixed checkpoint: the trainer is at step ${state?.step} but the optimiser at step ${optimizer.step}; refusing to resume`,
      { file: path },
    );
  }
  assertFiniteTensors(parameters, { code: 'BAD_CHECKPOINT', file: path, maxAbs: Number.MAX_VALUE });
  assertFiniteTensors(moments, { code: 'BAD_CHECKPOINT', file: path, maxAbs: Number.MAX_VALUE });
  return { path, state, parameters, optimizer };
}

/** Removes what a killed writer left behind in the output folder and its checkpoint folder. */
export async function removeLeftovers(outDir: string): Promise<string[]> {
  return [
    ...(await removeStaleTemporaries(outDir)),
    ...(await removeStaleTemporaries(join(outDir, CHECKPOINT_DIR))),
  ];
}

async function isFile(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isFile() ?? false;
}
