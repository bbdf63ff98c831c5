import { join } from 'node:path';
import type { Command } from 'commander';
import { readSafetensorsHeader } from '../../checkpoints/safetensors.ts';
import { MeloError } from '../../errors.ts';
import { ADAPTER_WEIGHTS_FILE, loadAdapter, saveAdapter } from '../../io/peft.ts';
import type { TaskMetadata } from '../../model/adapter.ts';
import { describeRouting, parseCodeList, type TaskRouting } from '../../pacs/routing.ts';

interface SetFlags {
  modality?: string;
  bodyPart?: string;
  clearRouting?: boolean;
}

/**
 * Changes an adapter's routing in place. The adapter is rewritten through saveAdapter (weights first,
 * config last, each renamed into place), in its own dtype, so a crash leaves the old or the new adapter.
 */
export async function setAdapterRouting(dir: string, flags: SetFlags): Promise<TaskRouting | undefined> {
  if (flags.modality === undefined && flags.bodyPart === undefined && !flags.clearRouting)
    throw new MeloError('USAGE', 'nothing to set: give --modality, --body-part or --clear-routing');
  if (flags.clearRouting && (flags.modality !== undefined || flags.bodyPart !== undefined))
    throw new MeloError('USAGE', '--clear-routing cannot be combined with --modality or --body-part');
  const adapter = await loadAdapter(dir);
  if (!adapter.hasMeloMetadata)
    throw new MeloError(
      'BAD_ADAPTER',
      "has no melo metadata (task, labels); import it with 'melo adapter convert' or retrain with melo first",
      { file: dir },
    );
  const header = await readSafetensorsHeader(join(dir, ADAPTER_WEIGHTS_FILE));
  const dtypes = new Set([...header.tensors.values()].map((tensor) => tensor.dtype));
  const dtype = dtypes.size === 1 && dtypes.has('F16') ? 'F16' : 'F32';
  const { routing: previous, ...rest } = adapter.metadata;
  const routing: TaskRouting | undefined = flags.clearRouting
    ? undefined
    : {
        ...previous,
        ...(flags.modality !== undefined ? { modalities: parseCodeList(flags.modality, '--modality') } : {}),
        ...(flags.bodyPart !== undefined ? { bodyParts: parseCodeList(flags.bodyPart, '--body-part') } : {}),
      };
  const metadata: TaskMetadata = routing ? { ...rest, routing } : rest;
  await saveAdapter(
    dir,
    { lora: adapter.lora, pairs: adapter.pairs, head: adapter.head, metadata },
    { dtype, family: adapter.family, ...(adapter.peftNote ? { peftNote: adapter.peftNote } : {}) },
  );
  return routing;
}

export function registerAdapterSetCommand(adapter: Command, stdout: (text: string) => void): void {
  adapter
    .command('set')
    .description('change an adapter in place: which DICOM modalities and body parts its task applies to')
    .argument('<dir>', 'adapter directory (PEFT, with melo metadata)')
    .option('--modality <codes>', 'DICOM Modality codes, e.g. CR,DX')
    .option('--body-part <codes>', 'DICOM Body Part Examined values, e.g. CHEST')
    .option('--clear-routing', 'remove the routing: the task applies to every image')
    .action(async (dir: string, flags: SetFlags) => {
      const routing = await setAdapterRouting(dir, flags);
      stdout(`wrote ${dir} (routing: ${describeRouting(routing)})\n`);
    });
}
