import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { type Command, InvalidArgumentError } from 'commander';
import { loadBackbone } from '../../checkpoints/load.ts';
import { MeloError } from '../../errors.ts';
import { ADAPTER_CONFIG_FILE } from '../../io/peft.ts';
import { DicomwebPacs, type PacsAuth } from '../../pacs/dicomweb.ts';
import { isValidUid } from '../../pacs/instance.ts';
import { type PullSummary, pullAndClassify, type SrDestination } from '../../pacs/pull.ts';
import { parseCodeList } from '../../pacs/routing.ts';
import { loadTasks } from '../../predict.ts';
import { parsePositiveInt } from '../options.ts';

interface PullFlags {
  dicomweb: string;
  backbone: string;
  adapters: string;
  study?: string;
  since?: string;
  modality?: string;
  resultsDicomweb?: string;
  out?: string;
  token?: string;
  user?: string;
  threads?: number;
  batchSize: number;
  json?: boolean;
}

function parseUrl(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InvalidArgumentError(`expected an http(s) URL, got '${value}'`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new InvalidArgumentError(`expected an http(s) URL, got '${value}'`);
  return value.replace(/\/+$/, '');
}

function parseDate(value: string): string {
  if (!/^\d{8}$/.test(value)) throw new InvalidArgumentError(`expected YYYYMMDD, got '${value}'`);
  return value;
}

function parseUid(value: string): string {
  if (!isValidUid(value)) throw new InvalidArgumentError(`'${value}' is not a DICOM UID`);
  return value;
}

/** The adapters under a directory: the directory itself when it is one, else each sub-directory that is. */
export async function adapterDirs(root: string): Promise<string[]> {
  if (existsSync(join(root, ADAPTER_CONFIG_FILE))) return [root];
  let entries: string[];
  try {
    entries = (await readdir(root, { withFileTypes: true }))
      .filter((entry) => entry.isDirectory() && !entry.name.startsWith('.'))
      .map((entry) => entry.name)
      .sort();
  } catch {
    throw new MeloError('NOT_FOUND', 'no such adapters directory', { file: root });
  }
  const dirs = entries
    .map((name) => join(root, name))
    .filter((dir) => existsSync(join(dir, ADAPTER_CONFIG_FILE)));
  if (dirs.length === 0)
    throw new MeloError('BAD_ADAPTER', 'no adapter directories (adapter_config.json) in it', { file: root });
  return dirs;
}

function formatSummary(summary: PullSummary): string {
  const lines = [
    `classified ${summary.instances.length} instance(s), skipped ${summary.skipped.length}, failed ${summary.failed.length}`,
    ...summary.instances.map(
      (item) => `  ${item.sopInstanceUid}  ${item.tasks.join(',')}  -> SR ${item.srSopInstanceUid}`,
    ),
    ...summary.skipped.map((item) => `  ${item.sopInstanceUid}  skipped: ${item.reason}`),
    ...summary.failed.map((item) => `  ${item.sopInstanceUid}  failed: ${item.error}`),
  ];
  return `${lines.join('\n')}\n`;
}

export function registerPacsCommand(program: Command): void {
  const pacs = program
    .command('pacs')
    .description('work with a DICOMweb PACS: pull, classify, write DICOM SRs');
  pacs
    .command('pull')
    .description(
      'find instances by QIDO-RS, retrieve them by WADO-RS, classify each with the tasks whose routing matches, and store one DICOM SR per instance',
    )
    .requiredOption(
      '--dicomweb <url>',
      'DICOMweb base URL of the PACS, e.g. http://pacs:8042/dicom-web',
      parseUrl,
    )
    .requiredOption('--backbone <dir>', 'checkpoint directory')
    .requiredOption('--adapters <dir>', 'an adapter directory, or a directory of them')
    .option('--study <uid>', 'only this study', parseUid)
    .option('--since <YYYYMMDD>', 'only studies on or after this date', parseDate)
    .option('--modality <codes>', 'only these modalities, e.g. CR,DX')
    .option('--results-dicomweb <url>', 'store SRs here by STOW-RS (default: the --dicomweb PACS)', parseUrl)
    .option('--out <dir>', 'write SRs as files <SR SOP Instance UID>.dcm here instead of storing them')
    .option('--token <token>', 'bearer token for the PACS (default: $MELO_PACS_TOKEN)')
    .option('--user <user:password>', 'HTTP basic authentication for the PACS (default: $MELO_PACS_USER)')
    .option('--threads <n>', 'ONNX Runtime threads (default: all cores)', parsePositiveInt)
    .option('--batch-size <n>', 'instances retrieved and classified together', parsePositiveInt, 8)
    .option('--json', 'print the summary as JSON (UIDs only)')
    .action(async (flags: PullFlags) => {
      if (flags.out !== undefined && flags.resultsDicomweb !== undefined)
        throw new MeloError('USAGE', 'give --results-dicomweb or --out, not both');
      const token = flags.token ?? process.env.MELO_PACS_TOKEN;
      const user = flags.user ?? process.env.MELO_PACS_USER;
      if (user !== undefined && !user.includes(':'))
        throw new MeloError('USAGE', '--user must be user:password');
      const auth: PacsAuth = { ...(token ? { token } : {}), ...(user ? { basic: user } : {}) };
      const modalities =
        flags.modality !== undefined ? parseCodeList(flags.modality, '--modality') : undefined;
      const backbone = await loadBackbone(flags.backbone);
      const tasks = await loadTasks(backbone, await adapterDirs(flags.adapters));
      const source = new DicomwebPacs(flags.dicomweb, auth);
      const destination: SrDestination =
        flags.out !== undefined
          ? { kind: 'files', dir: flags.out }
          : {
              kind: 'dicomweb',
              pacs: flags.resultsDicomweb ? new DicomwebPacs(flags.resultsDicomweb, auth) : source,
            };
      const summary = await pullAndClassify({
        source,
        destination,
        backbone,
        tasks,
        ...(flags.study ? { studyInstanceUid: flags.study } : {}),
        ...(flags.since ? { since: flags.since } : {}),
        ...(modalities ? { modalities } : {}),
        ...(flags.threads ? { threads: flags.threads } : {}),
        batchSize: flags.batchSize,
        log: (line) => process.stderr.write(`melo pacs pull: ${line}\n`),
      });
      process.stdout.write(flags.json ? `${JSON.stringify(summary)}\n` : formatSummary(summary));
      if (summary.failed.length > 0) process.exitCode = 1;
    });
}
