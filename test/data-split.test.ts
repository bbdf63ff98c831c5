import assert from 'node:assert/strict';
import { test } from 'node:test';
import { classCounts, type DataItem, type Dataset, type TaskType } from '../src/data/dataset.ts';
import {
  foldAssignments,
  kFoldSplit,
  stratifiedSplit,
  subsample,
  subsamplePerClass,
} from '../src/data/split.ts';

function syntheticDataset(labels: number[][], taskType: TaskType = 'multiclass', classCount = 4): Dataset {
  const items: DataItem[] = labels.map((itemLabels, index) => ({
    id: `item-${index}`,
    labels: itemLabels,
    load: async () => ({ width: 1, height: 1, channels: 1, data: new Float32Array([index]) }),
  }));
  return {
    name: 'synthetic',
    source: 'memory',
    taskType,
    classes: Array.from({ length: classCount }, (_, i) => `c${i}`),
    items,
  };
}

/** 1000 items: 500 of class 0, 300 of 1, 150 of 2, 50 of 3, interleaved. */
function imbalanced(): Dataset {
  const labels: number[][] = [];
  const counts = [500, 300, 150, 50];
  const left = [...counts];
  while (left.some((n) => n > 0)) {
    for (let c = 0; c < 4; c++) {
      if (left[c] > 0) {
        labels.push([c]);
        left[c]--;
      }
    }
  }
  return syntheticDataset(labels);
}

const ids = (dataset: Dataset) => dataset.items.map((item) => item.id);
const positions = (dataset: Dataset, all: Dataset) => dataset.items.map((item) => all.items.indexOf(item));

test('stratifiedSplit keeps class proportions exactly, is disjoint and complete, and keeps order', () => {
  const dataset = imbalanced();
  const { train, val } = stratifiedSplit(dataset, 0.2, 7);
  assert.equal(val.items.length, 200);
  assert.deepEqual(classCounts(val), [100, 60, 30, 10]);
  assert.deepEqual(classCounts(train), [400, 240, 120, 40]);
  const seen = new Set([...ids(train), ...ids(val)]);
  assert.equal(seen.size, 1000);
  for (const part of [train, val]) {
    const order = positions(part, dataset);
    assert.deepEqual(
      order,
      [...order].sort((a, b) => a - b),
    );
  }
  assert.equal(train.classes, dataset.classes);
});

test('stratifiedSplit is deterministic for a seed and different for another seed', () => {
  const dataset = imbalanced();
  assert.deepEqual(ids(stratifiedSplit(dataset, 0.1, 3).val), ids(stratifiedSplit(dataset, 0.1, 3).val));
  assert.notDeepEqual(ids(stratifiedSplit(dataset, 0.1, 3).val), ids(stratifiedSplit(dataset, 0.1, 4).val));
});

test('stratifiedSplit rounds by largest remainder and keeps both sides non-empty', () => {
  // 7 of class 0, 3 of class 1; 25% → 2.5 items → 3 in val: 1.75 → 2 and 0.75 → 1.
  const dataset = syntheticDataset([[0], [0], [0], [0], [0], [0], [0], [1], [1], [1]], 'binary', 2);
  const { val } = stratifiedSplit(dataset, 0.25, 1);
  assert.deepEqual(classCounts(val), [2, 1]);
  const tiny = syntheticDataset([[0], [1], [0]], 'binary', 2);
  assert.equal(stratifiedSplit(tiny, 0.01, 1).val.items.length, 1);
  assert.equal(stratifiedSplit(tiny, 0.99, 1).train.items.length, 1);
  assert.throws(() => stratifiedSplit(tiny, 0, 1), /validation fraction must be between 0 and 1/);
  assert.throws(() => stratifiedSplit(syntheticDataset([[0]]), 0.5, 1), /memory: cannot split 1 item\(s\)/);
});

test('stratifiedSplit stratifies multi-label data on the label combination', () => {
  const labels: number[][] = [];
  for (let i = 0; i < 40; i++) labels.push([]);
  for (let i = 0; i < 40; i++) labels.push([0, 2]);
  for (let i = 0; i < 20; i++) labels.push([1]);
  const dataset = syntheticDataset(labels, 'multilabel', 3);
  const { val } = stratifiedSplit(dataset, 0.25, 5);
  const combos = new Map<string, number>();
  for (const item of val.items)
    combos.set(item.labels.join(','), (combos.get(item.labels.join(',')) ?? 0) + 1);
  assert.deepEqual(Object.fromEntries(combos), { '': 10, '0,2': 10, '1': 5 });
});

test('k-fold: the val folds partition the data, with balanced sizes and classes', () => {
  const dataset = imbalanced();
  const k = 7;
  const valIds: string[] = [];
  for (let fold = 0; fold < k; fold++) {
    const { train, val } = kFoldSplit(dataset, fold, k, 11);
    assert.equal(train.items.length + val.items.length, 1000);
    assert.ok(Math.abs(val.items.length - 1000 / k) < 1, `fold ${fold} has ${val.items.length}`);
    const counts = classCounts(val);
    [500, 300, 150, 50].forEach((total, c) => {
      assert.ok(Math.abs(counts[c] - total / k) < 1, `fold ${fold} class ${c}: ${counts[c]}`);
    });
    const trainIds = new Set(ids(train));
    for (const id of ids(val)) assert.ok(!trainIds.has(id));
    valIds.push(...ids(val));
  }
  assert.equal(valIds.length, 1000);
  assert.equal(new Set(valIds).size, 1000);
  assert.deepEqual(foldAssignments(dataset, k, 11), foldAssignments(dataset, k, 11));
  assert.notDeepEqual(foldAssignments(dataset, k, 11), foldAssignments(dataset, k, 12));
  assert.throws(() => kFoldSplit(dataset, 7, 7, 0), /fold index must be an integer from 0 to 6, got 7/);
  assert.throws(() => kFoldSplit(dataset, 0, 1, 0), /fold count must be an integer >= 2/);
  assert.throws(
    () => foldAssignments(syntheticDataset([[0], [1]]), 3, 0),
    /cannot make 3 folds from 2 items/,
  );
});

test('subsample takes a seeded, stratified subset; subsamplePerClass caps each class', () => {
  const dataset = imbalanced();
  const small = subsample(dataset, 40, 9);
  assert.equal(small.items.length, 40);
  assert.deepEqual(classCounts(small), [20, 12, 6, 2]);
  assert.deepEqual(ids(subsample(dataset, 40, 9)), ids(small));
  assert.notDeepEqual(ids(subsample(dataset, 40, 10)), ids(small));
  assert.equal(subsample(dataset, 5000, 9), dataset);
  const capped = subsamplePerClass(dataset, 60, 9);
  assert.deepEqual(classCounts(capped), [60, 60, 60, 50]);
  assert.throws(() => subsample(dataset, 0, 1), /limit must be a positive integer/);
});
