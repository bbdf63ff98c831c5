import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Option } from 'commander';
import { TRAIN_DEFAULTS } from '../src/api/train.ts';
import { buildProgram } from '../src/cli/main.ts';
import * as melo from '../src/index.ts';

test("trainAdapter's defaults are melo train's option defaults", () => {
  const command = buildProgram().commands.find((c) => c.name() === 'train')!;
  const defaults = Object.fromEntries(
    (command.options as readonly Option[]).map((option) => [option.attributeName(), option.defaultValue]),
  );
  assert.equal(defaults.method, TRAIN_DEFAULTS.method);
  assert.equal(defaults.rank, TRAIN_DEFAULTS.rank);
  assert.equal(defaults.epochs, TRAIN_DEFAULTS.epochs);
  assert.equal(defaults.batchSize, TRAIN_DEFAULTS.batchSize);
  assert.equal(defaults.seed, TRAIN_DEFAULTS.seed);
  assert.equal(defaults.maxGradNorm, TRAIN_DEFAULTS.maxGradNorm);
  assert.equal(defaults.metric, TRAIN_DEFAULTS.metric);
  assert.equal(defaults.schedule, 'cosine');
  assert.equal(defaults.optimizer, 'adamw');
});

test('the library entry exports the documented surface', () => {
  const functions = {
    loadBackbone: melo.loadBackbone,
    openDataSplits: melo.openDataSplits,
    trainAdapter: melo.trainAdapter,
    loadAdapter: melo.loadAdapter,
    saveAdapter: melo.saveAdapter,
    loadTasks: melo.loadTasks,
    predict: melo.predict,
    predictTasks: melo.predictTasks,
    evaluateTask: melo.evaluateTask,
    buildApp: melo.buildApp,
    startServer: melo.startServer,
    MeloError: melo.MeloError,
  };
  for (const [name, value] of Object.entries(functions)) assert.equal(typeof value, 'function', name);
  assert.match(melo.MELO_VERSION, /^\d+\.\d+\.\d+/);
});
