import type { Backbone } from '../checkpoints/load.ts';
import { saveHfCheckpoint } from '../checkpoints/save-hf.ts';
import type { TaskMetadata } from '../model/adapter.ts';
import { TASK_HEAD } from '../model/task-graph.ts';
import type { HostTensor } from '../tensor.ts';

/**
 * Full fine-tuning changes every weight, so its result is a whole checkpoint (Hugging Face layout, with
 * the task head as `classifier` and the labels as id2label) that `--backbone` loads like any other.
 */
export async function saveFullCheckpoint(
  dir: string,
  backbone: Backbone,
  parameters: ReadonlyMap<string, HostTensor>,
  metadata: TaskMetadata,
): Promise<void> {
  const weights = new Map<string, HostTensor>();
  for (const [name, tensor] of parameters) {
    if (name === TASK_HEAD.weight) weights.set('head.weight', tensor);
    else if (name === TASK_HEAD.bias) weights.set('head.bias', tensor);
    else weights.set(name, tensor);
  }
  const numClasses = metadata.labels.length;
  await saveHfCheckpoint(
    dir,
    { ...backbone.config, numClasses },
    weights,
    backbone.preprocess,
    metadata.labels,
    {
      melo: JSON.stringify({ version: 1, ...metadata }),
    },
  );
}
