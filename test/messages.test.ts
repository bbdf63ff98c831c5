import assert from 'node:assert/strict';
import { test } from 'node:test';
import { progressReporter } from '../src/cli/progress.ts';
import { formatLabels } from '../src/util/labels.ts';
import { plural } from '../src/util/plural.ts';

test('counts take the right number: 1 epoch, 2 epochs, 1,000 steps', () => {
  assert.equal(plural(1, 'epoch'), '1 epoch');
  assert.equal(plural(2, 'epoch'), '2 epochs');
  assert.equal(plural(1000, 'step'), '1,000 steps');
  assert.equal(plural(0, 'class', 'classes'), '0 classes');
  let written = '';
  const stream = {
    isTTY: false,
    write: (text: string) => (written += text),
  } as unknown as NodeJS.WriteStream;
  progressReporter(stream)({
    type: 'start',
    totalSteps: 1,
    step: 0,
    epochs: 1,
    trainable: 6274,
    resumed: false,
  });
  assert.equal(written, 'training 6,274 parameters for 1 epoch, 1 step\n');
});

test("class lists are unambiguous: BreastMNIST's 'normal, benign' is one class of two", () => {
  assert.equal(formatLabels(['malignant', 'normal, benign']), '2 classes: "malignant", "normal, benign"');
  assert.equal(formatLabels(['only']), '1 class: "only"');
});
