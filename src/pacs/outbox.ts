import { mkdir, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { errorMessage } from '../errors.ts';
import { writeFileAtomic, writeJsonAtomic } from '../io/atomic.ts';
import { PacsError } from './dicomweb.ts';
import { type InstanceHeader, isValidUid, readInstanceHeader } from './instance.ts';

/**
 * The durable outbox between a STOW-RS acknowledgement and the SR's delivery. Layout under its directory:
 *
 *   jobs/<SOP Instance UID>.dcm     a received instance, written (fsync, rename, directory fsync) before
 *                                   the sender is answered
 *   results/<SOP Instance UID>.dcm  its SR, written before the job is removed
 *   failed/<SOP Instance UID>.*     what could not be classified or was refused by the PACS, with a reason
 *
 * A crash at any point leaves a job or a result, never neither: on restart jobs are classified again and
 * results delivered. The SR's UID is derived from the source instance's (uid.ts), so a result delivered
 * twice (a crash after the PACS stored it and before it was removed here) is one instance in the PACS.
 * Deliveries that fail because the PACS is unreachable, busy or failing (no answer, 408, 429, 5xx) are
 * retried with exponential backoff; other refusals are final and go to failed/.
 */
export interface OutboxHandlers {
  /** The SR for an instance, or undefined when no task applies to it. */
  classify(bytes: Uint8Array, header: InstanceHeader): Promise<Uint8Array | undefined>;
  deliver(sr: Uint8Array): Promise<void>;
}

export interface OutboxLogger {
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  error(fields: object, message: string): void;
}

export interface OutboxOptions {
  /** First retry delay; doubles per failed attempt up to `retryMaxMs`. */
  readonly retryBaseMs?: number;
  readonly retryMaxMs?: number;
  /** Jobs classified and delivered at once (the batcher gathers their rows). */
  readonly concurrency?: number;
  readonly logger?: OutboxLogger;
}

type Outcome = 'done' | 'retry' | 'failed';

const silent: OutboxLogger = { info() {}, warn() {}, error() {} };

export class Outbox {
  private closed = false;
  private wake: (() => void) | undefined;
  private loop: Promise<void> | undefined;
  private attempt = 0;
  private readonly logger: OutboxLogger;
  readonly counts = { delivered: 0, retries: 0, failed: 0, noTask: 0 };

  private constructor(
    readonly dir: string,
    private readonly handlers: OutboxHandlers,
    private readonly options: OutboxOptions,
  ) {
    this.logger = options.logger ?? silent;
  }

  static async open(dir: string, handlers: OutboxHandlers, options: OutboxOptions = {}): Promise<Outbox> {
    for (const sub of ['jobs', 'results', 'failed']) await mkdir(join(dir, sub), { recursive: true });
    return new Outbox(dir, handlers, options);
  }

  /** Puts a received instance on disk; resolves once it is durable (then it may be acknowledged). */
  async enqueue(bytes: Uint8Array, header: InstanceHeader): Promise<void> {
    await writeFileAtomic(this.jobPath(header.sopInstanceUid), bytes);
    this.wake?.();
  }

  /** Starts delivering: first what a previous run left, then whatever arrives. */
  start(): void {
    this.loop ??= this.run().catch((error) => {
      this.logger.error({ err: errorMessage(error) }, 'outbox stopped');
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    this.wake?.();
    await this.loop;
  }

  /** Instances received and not yet delivered (jobs and results on disk). */
  async pending(): Promise<number> {
    return (await this.pendingUids()).length;
  }

  private jobPath(uid: string): string {
    return join(this.dir, 'jobs', `${uid}.dcm`);
  }

  private resultPath(uid: string): string {
    return join(this.dir, 'results', `${uid}.dcm`);
  }

  private async pendingUids(): Promise<string[]> {
    const names = async (sub: string) =>
      (await readdir(join(this.dir, sub)))
        .filter((name) => name.endsWith('.dcm') && !name.startsWith('.'))
        .map((name) => name.slice(0, -4))
        .filter(isValidUid);
    return [...new Set([...(await names('results')), ...(await names('jobs'))])].sort();
  }

  private async run(): Promise<void> {
    const concurrency = this.options.concurrency ?? 4;
    while (!this.closed) {
      const uids = await this.pendingUids();
      if (uids.length === 0) {
        await this.pause(1000);
        continue;
      }
      let retry = false;
      for (let start = 0; start < uids.length && !this.closed && !retry; start += concurrency) {
        const outcomes = await Promise.all(
          uids.slice(start, start + concurrency).map((uid) => this.process(uid)),
        );
        retry = outcomes.includes('retry');
      }
      if (!retry) {
        this.attempt = 0;
        continue;
      }
      // The PACS (or the engine) is not taking work: wait, doubling the delay each time, then try again.
      const base = this.options.retryBaseMs ?? 500;
      const delay = Math.min(this.options.retryMaxMs ?? 30_000, base * 2 ** this.attempt);
      this.attempt = Math.min(this.attempt + 1, 30);
      this.counts.retries += 1;
      this.logger.warn({ pending: uids.length, retryInMs: delay }, 'results not delivered; retrying');
      await this.pause(delay);
    }
  }

  /** Sleeps up to `ms`; close() ends it early, and so does a new job unless this is a retry pause. */
  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const finish = () => {
        clearTimeout(timer);
        if (this.wake === wake) this.wake = undefined;
        resolve();
      };
      const wake = () => {
        if (this.closed || this.attempt === 0) finish();
      };
      const timer = setTimeout(finish, ms);
      this.wake = wake;
    });
  }

  private async process(uid: string): Promise<Outcome> {
    let sr: Uint8Array;
    try {
      const ready = await readFile(this.resultPath(uid)).catch(() => undefined);
      if (ready) sr = ready;
      else {
        const made = await this.classify(uid);
        if (made === 'done' || made === 'failed' || made === 'retry') return made;
        sr = made;
      }
    } catch (error) {
      return this.fail(uid, 'jobs', errorMessage(error));
    }
    try {
      await this.handlers.deliver(sr);
    } catch (error) {
      if (isRetryable(error)) return 'retry';
      return this.fail(uid, 'results', errorMessage(error));
    }
    await rm(this.resultPath(uid), { force: true });
    this.counts.delivered += 1;
    this.logger.info({ sopInstanceUid: uid }, 'SR delivered');
    return 'done';
  }

  private async classify(uid: string): Promise<Uint8Array | Outcome> {
    const path = this.jobPath(uid);
    const bytes = await readFile(path).catch(() => undefined);
    if (!bytes) return 'done'; // delivered meanwhile
    let sr: Uint8Array | undefined;
    try {
      sr = await this.handlers.classify(bytes, readInstanceHeader(bytes, uid));
    } catch (error) {
      // The engine is overloaded or restarting (503): the job waits; anything else is about the instance.
      if ((error as { statusCode?: number }).statusCode === 503) return 'retry';
      return this.fail(uid, 'jobs', errorMessage(error));
    }
    if (!sr) {
      this.counts.noTask += 1;
      this.logger.info({ sopInstanceUid: uid }, "no task's routing matches the instance; no SR");
      await rm(path, { force: true });
      return 'done';
    }
    // Result first, job second: a crash between them leaves both, and the result wins on restart.
    await writeFileAtomic(this.resultPath(uid), sr);
    await rm(path, { force: true });
    return sr;
  }

  private async fail(uid: string, from: 'jobs' | 'results', reason: string): Promise<Outcome> {
    this.counts.failed += 1;
    this.logger.error({ sopInstanceUid: uid, reason }, 'instance failed; kept in the outbox failed/');
    const source = from === 'jobs' ? this.jobPath(uid) : this.resultPath(uid);
    const suffix = from === 'jobs' ? 'instance.dcm' : 'sr.dcm';
    await rename(source, join(this.dir, 'failed', `${uid}.${suffix}`)).catch(() => undefined);
    await writeJsonAtomic(join(this.dir, 'failed', `${uid}.json`), { sopInstanceUid: uid, reason });
    return 'failed';
  }
}

/** No answer, a timeout, too many requests, or a server error: the PACS may take it later. */
export function isRetryable(error: unknown): boolean {
  if (!(error instanceof PacsError)) return false;
  return error.status === 0 || error.status === 408 || error.status === 429 || error.status >= 500;
}
