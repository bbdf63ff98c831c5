import { readFile } from 'node:fs/promises';
import { type Command, InvalidArgumentError, Option } from 'commander';
import type { FastifyInstance } from 'fastify';
import { type Backbone, loadBackbone } from '../../checkpoints/load.ts';
import { errorMessage, MeloError } from '../../errors.ts';
import { withPrecision } from '../../model/backbone.ts';
import { type DicomwebServeOptions, SERVE_DEFAULTS } from '../../serve/options.ts';
import { DEFAULT_HOST, DEFAULT_PORT, startServer } from '../../serve/server.ts';
import { collectGarbage } from '../../util/gc.ts';
import {
  type BackbonePrecision,
  backbonePrecisionOption,
  parseNonNegativeNumber,
  parsePositiveInt,
} from '../options.ts';

interface ServeCommandOptions {
  backbone: string;
  backbonePrecision: BackbonePrecision;
  adapters: string;
  port: number;
  host: string;
  token?: string;
  tokenFile?: string;
  allowedHost: string[];
  maxBatch: number;
  maxWaitMs: number;
  maxQueue: number;
  timeoutMs: number;
  maxBodyMb: number;
  maxPixels: number;
  threads?: number;
  maxResidentAdapters?: number;
  decodeThreads?: number;
  rescanMs: number;
  logLevel: string;
  resultsDicomweb?: string;
  outbox?: string;
  pacsToken?: string;
  pacsUser?: string;
  retryMaxMs?: number;
  logFormat?: 'json' | 'pretty';
}

/** Pretty, coloured lines for a person at a terminal; one JSON object per line for everything else. */
export function serveLogFormat(flag: 'json' | 'pretty' | undefined, stdoutIsTTY: boolean): 'json' | 'pretty' {
  return flag ?? (stdoutIsTTY ? 'pretty' : 'json');
}

function parsePort(value: string): number {
  const port = Number(value);
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    throw new InvalidArgumentError(`expected a port 0..65535, got '${value}'`);
  return port;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/**
 * The bearer token: --token, else the first line of --token-file, else $MELO_TOKEN. The file and the
 * environment keep the token out of the process list (`ps` shows command lines to every user).
 */
async function resolveToken(options: ServeCommandOptions): Promise<string | undefined> {
  if (options.token !== undefined) return options.token;
  if (options.tokenFile !== undefined) {
    let text: string;
    try {
      text = await readFile(options.tokenFile, 'utf8');
    } catch (error) {
      throw new MeloError(
        'BAD_INPUT',
        `cannot read the token file (${(error as NodeJS.ErrnoException).code ?? errorMessage(error)})`,
        {
          file: options.tokenFile,
        },
      );
    }
    const token = (text.split(/\r?\n/)[0] ?? '').trim();
    if (token === '')
      throw new MeloError('BAD_INPUT', 'the token file is empty', { file: options.tokenFile });
    return token;
  }
  const fromEnvironment = process.env.MELO_TOKEN?.trim();
  return fromEnvironment ? fromEnvironment : undefined;
}

function parseLogLevel(value: string): string {
  const levels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
  if (!levels.includes(value)) throw new InvalidArgumentError(`expected one of ${levels.join(', ')}`);
  return value;
}

/** Resolves when the process is asked to stop and the server has drained. */
function closeOnSignal(app: FastifyInstance): Promise<void> {
  return new Promise((resolve) => {
    const stop = (signal: NodeJS.Signals) => {
      app.log.info({ signal }, 'shutting down');
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      void app.close().then(resolve, resolve);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
}

function dicomwebOptions(options: ServeCommandOptions): DicomwebServeOptions | undefined {
  if (options.resultsDicomweb === undefined && options.outbox === undefined) return undefined;
  if (options.resultsDicomweb === undefined || options.outbox === undefined)
    throw new MeloError('USAGE', '--results-dicomweb and --outbox go together (push mode needs both)');
  try {
    const url = new URL(options.resultsDicomweb);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error('not http');
  } catch {
    throw new MeloError(
      'USAGE',
      `--results-dicomweb: expected an http(s) URL, got '${options.resultsDicomweb}'`,
    );
  }
  const token = options.pacsToken ?? process.env.MELO_PACS_TOKEN;
  const user = options.pacsUser ?? process.env.MELO_PACS_USER;
  if (user !== undefined && !user.includes(':'))
    throw new MeloError('USAGE', '--pacs-user must be user:password');
  const auth = { ...(token ? { token } : {}), ...(user ? { basic: user } : {}) };
  return {
    outbox: options.outbox,
    resultsUrl: options.resultsDicomweb,
    ...(token || user ? { auth } : {}),
    ...(options.retryMaxMs ? { retryMaxMs: options.retryMaxMs } : {}),
  };
}

export function registerServeCommand(program: Command): void {
  program
    .command('serve')
    .description(
      'serve every task adapter in a directory over HTTP: mixed-task dynamic batches on one shared backbone',
    )
    .requiredOption('--backbone <dir>', 'checkpoint directory (Hugging Face or timm layout)')
    .requiredOption('--adapters <dir>', 'one sub-directory per adapter; watched for added, changed, removed')
    .option('--port <n>', 'TCP port (0: any free port)', parsePort, DEFAULT_PORT)
    .option('--host <address>', 'address to bind (loopback unless told otherwise)', DEFAULT_HOST)
    .option(
      '--token <token>',
      'require "Authorization: Bearer <token>" (visible in ps: prefer --token-file or $MELO_TOKEN)',
    )
    .option('--token-file <file>', 'read the token from the first line of this file')
    .option(
      '--allowed-host <name>',
      'a Host name the server answers to (repeatable; default when bound to loopback: localhost, 127.0.0.1, [::1])',
      collect,
      [],
    )
    .option(
      '--max-batch <n>',
      'rows (image × task) per model call',
      parsePositiveInt,
      SERVE_DEFAULTS.maxBatch,
    )
    .option(
      '--max-wait-ms <ms>',
      'how long a row waits for others before its batch runs',
      parseNonNegativeNumber,
      SERVE_DEFAULTS.maxWaitMs,
    )
    .option(
      '--max-queue <rows>',
      'rows allowed to wait; beyond it requests get 503',
      parsePositiveInt,
      SERVE_DEFAULTS.maxQueueRows,
    )
    .option('--timeout-ms <ms>', 'per-request timeout', parsePositiveInt, SERVE_DEFAULTS.requestTimeoutMs)
    .option(
      '--max-body-mb <n>',
      'largest upload in MiB',
      parsePositiveInt,
      SERVE_DEFAULTS.bodyLimitBytes / 2 ** 20,
    )
    .option(
      '--max-pixels <n>',
      'largest image (width × height, per DICOM frame), checked from the header before decoding; beyond it 413',
      parsePositiveInt,
      SERVE_DEFAULTS.maxPixels,
    )
    .option(
      '--decode-threads <n>',
      'threads that decode uploads (default: half the cores, 1 to 4)',
      parsePositiveInt,
    )
    .option('--threads <n>', 'ONNX Runtime threads (default: all cores)', parsePositiveInt)
    .addOption(backbonePrecisionOption())
    .option(
      '--max-resident-adapters <n>',
      'keep at most n adapters in memory; the least recently used are read from disk again when asked for (default: all)',
      parsePositiveInt,
    )
    .option(
      '--rescan-ms <ms>',
      'adapter directory polling besides fs.watch (0: off)',
      parseNonNegativeNumber,
      SERVE_DEFAULTS.rescanMs,
    )
    .option(
      '--results-dicomweb <url>',
      'push mode: accept STOW-RS at /dicom-web/studies and store one DICOM SR per instance at this DICOMweb URL (needs --outbox)',
    )
    .option('--outbox <dir>', 'durable queue of received instances and SRs until delivered')
    .option('--pacs-token <token>', 'bearer token for --results-dicomweb (default: $MELO_PACS_TOKEN)')
    .option(
      '--pacs-user <user:password>',
      'basic authentication for --results-dicomweb (default: $MELO_PACS_USER)',
    )
    .option('--retry-max-ms <ms>', 'longest wait between SR delivery attempts', parsePositiveInt)
    .option('--log-level <level>', 'fatal, error, warn, info, debug, trace or silent', parseLogLevel, 'info')
    .addOption(
      new Option(
        '--log-format <format>',
        'log lines (default: pretty on a terminal, JSON otherwise)',
      ).choices(['json', 'pretty']),
    )
    .action(async (options: ServeCommandOptions) => {
      const token = await resolveToken(options);
      const dicomweb = dicomwebOptions(options);
      const pretty = serveLogFormat(options.logFormat, process.stdout.isTTY === true) === 'pretty';
      const stream = pretty
        ? (await import('pino-pretty')).default({ translateTime: 'SYS:HH:MM:ss', ignore: 'pid,hostname' })
        : undefined;
      const app = await startServer({
        backbone: await loadServingBackbone(options.backbone, options.backbonePrecision),
        adapters: options.adapters,
        host: options.host,
        port: options.port,
        ...(token ? { token } : {}),
        ...(options.allowedHost.length > 0 ? { allowedHosts: options.allowedHost } : {}),
        maxBatch: options.maxBatch,
        maxWaitMs: options.maxWaitMs,
        maxQueueRows: options.maxQueue,
        requestTimeoutMs: options.timeoutMs,
        bodyLimitBytes: options.maxBodyMb * 2 ** 20,
        maxPixels: options.maxPixels,
        ...(options.threads ? { threads: options.threads } : {}),
        ...(options.maxResidentAdapters ? { maxResidentAdapters: options.maxResidentAdapters } : {}),
        ...(options.decodeThreads ? { decodeThreads: options.decodeThreads } : {}),
        rescanMs: options.rescanMs,
        // Listening as soon as the backbone is loaded; adapters serve as they load (GET /readyz).
        loadAdaptersInBackground: true,
        logger: { level: options.logLevel, ...(stream ? { stream } : {}) },
        ...(dicomweb ? { dicomweb } : {}),
      });
      await closeOnSignal(app);
    });
}

/**
 * The backbone in the precision asked for, and the garbage of loading it collected at once: the file's
 * bytes once converted to melo's layout, and in int8 the float copies it was quantised from (327 MiB for
 * ViT-B/16). A server that then mostly waits for requests may not run a full GC for a long time, and
 * until it does they stay resident.
 */
async function loadServingBackbone(dir: string, precision: BackbonePrecision): Promise<Backbone> {
  const backbone = withPrecision(await loadBackbone(dir), precision);
  collectGarbage();
  return backbone;
}
