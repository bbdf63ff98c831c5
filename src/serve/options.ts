import type { Backbone } from '../checkpoints/load.ts';
import { DEFAULT_MAX_PIXELS } from '../imaging/limits.ts';
import type { PacsAuth } from '../pacs/dicomweb.ts';

/** Everything `melo serve` can be told; `buildApp` fills in the defaults below. */
export interface ServeOptions {
  /** Checkpoint directory, or a backbone already loaded (tests, benchmarks). */
  readonly backbone: string | Backbone;
  /** Adapters root: one sub-directory per adapter, watched for changes. */
  readonly adapters: string;
  /** Bearer token every route but /healthz, /readyz and the web page's files then requires. */
  readonly token?: string;
  /** Host names requests must be addressed to (default: any; `startServer` passes loopback names when bound to loopback). */
  readonly allowedHosts?: readonly string[];
  /** Rows (image × task) per model call. */
  readonly maxBatch?: number;
  /** How long a row waits for others before its batch runs anyway. */
  readonly maxWaitMs?: number;
  /** Rows allowed to wait; beyond it requests get 503 with Retry-After. */
  readonly maxQueueRows?: number;
  /** A request not answered by then gets 503. */
  readonly requestTimeoutMs?: number;
  /** Largest request body. */
  readonly bodyLimitBytes?: number;
  /** Largest image (width × height, per DICOM frame), checked from its header before decoding. */
  readonly maxPixels?: number;
  /** Threads that decode uploads (default: half the cores, 1 to 4). */
  readonly decodeThreads?: number;
  /** ONNX Runtime intra-op threads (default: every core). */
  readonly threads?: number;
  /** Adapters whose weights stay in memory at most; the least recently used beyond it are read again on demand. */
  readonly maxResidentAdapters?: number;
  /**
   * Start serving once the backbone is loaded and the adapters directory listed, loading the adapters
   * after (each served as it loads; a request naming one not loaded yet waits for the first scan).
   * Default false: `buildApp` resolves with every adapter loaded.
   */
  readonly loadAdaptersInBackground?: boolean;
  /** Adapter directory polling, a fallback for missed fs.watch events; 0 disables. */
  readonly rescanMs?: number;
  readonly watch?: boolean;
  readonly debounceMs?: number;
  /** Push mode: STOW-RS at /dicom-web/studies, SRs delivered through a durable outbox (src/pacs). */
  readonly dicomweb?: DicomwebServeOptions;
  /** fastify's `logger` option: false, true, or pino options (level, stream, …). */
  readonly logger?: boolean | Record<string, unknown>;
}

export interface DicomwebServeOptions {
  /** Outbox directory: received instances and their SRs until delivered. */
  readonly outbox: string;
  /** DICOMweb base URL the SRs are stored to (STOW-RS). */
  readonly resultsUrl: string;
  readonly auth?: PacsAuth;
  readonly retryBaseMs?: number;
  readonly retryMaxMs?: number;
}

type OptionalServeOptions =
  | 'token'
  | 'allowedHosts'
  | 'threads'
  | 'decodeThreads'
  | 'logger'
  | 'dicomweb'
  | 'maxResidentAdapters';

export type ResolvedServeOptions = Required<Omit<ServeOptions, OptionalServeOptions>> &
  Pick<ServeOptions, OptionalServeOptions>;

export const SERVE_DEFAULTS = {
  maxBatch: 16,
  maxWaitMs: 5,
  maxQueueRows: 256,
  requestTimeoutMs: 30_000,
  bodyLimitBytes: 64 * 1024 * 1024,
  maxPixels: DEFAULT_MAX_PIXELS,
  rescanMs: 1000,
  watch: true,
  debounceMs: 100,
  loadAdaptersInBackground: false,
} as const;

export function resolveServeOptions(options: ServeOptions): ResolvedServeOptions {
  const defined = Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined));
  return { ...SERVE_DEFAULTS, ...defined } as ResolvedServeOptions;
}
