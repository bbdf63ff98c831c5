import { type FSWatcher, watch } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Backbone } from '../../checkpoints/load.ts';
import { errorMessage, MeloError } from '../../errors.ts';
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, isValidTaskName } from '../../io/peft.ts';
import { headParameterCount, loraParameterCount, type TaskType } from '../../model/adapter.ts';
import type { LoraTarget } from '../../model/anatomy.ts';
import { fingerprintAdapter } from '../../pacs/fingerprint.ts';
import type { TaskRouting } from '../../pacs/routing.ts';
import { loadTasks } from '../../predict.ts';
import { type StackedTaskWeights, takeStackedWeights } from './adapter-stack.ts';

/** What the server tells clients about a task. */
export interface TaskInfo {
  readonly name: string;
  /** The adapter's directory name under the adapters root. */
  readonly adapter: string;
  readonly labels: readonly string[];
  readonly taskType: TaskType;
  readonly method: 'lora' | 'linear';
  readonly rank: number;
  readonly alpha: number;
  readonly targets: readonly LoraTarget[];
  /** Bytes of the adapter's float32 tensors (LoRA factors and head) as held in memory. */
  readonly bytes: number;
  /** Which DICOM images the task applies to (absent: every image). */
  readonly routing?: TaskRouting;
  /** What identifies the adapter's numbers (recorded in DICOM SRs). */
  readonly fingerprint: string;
}

let nextTaskUid = 1;

/**
 * One loaded version of a task. The weights read when it was loaded (and checked) are handed to the
 * inference thread once (`takeWeights`), which keeps them inside its adapter stack, so each adapter is
 * held in memory once; when they left the stack (evicted), `readWeights` reads this version again.
 */
export class ServedTask {
  /** Identifies this loaded version (a reload is a new ServedTask with a new uid). */
  readonly uid = nextTaskUid++;
  private weights: StackedTaskWeights | undefined;

  constructor(
    readonly info: TaskInfo,
    weights: StackedTaskWeights | undefined,
    private readonly reader: () => Promise<StackedTaskWeights>,
  ) {
    this.weights = weights;
  }

  /** This version's weights read from disk again; fails if its files changed since it was loaded. */
  readWeights(): Promise<StackedTaskWeights> {
    return this.reader();
  }

  get name(): string {
    return this.info.name;
  }

  /** The weights, once: afterwards they belong to whoever took them. */
  takeWeights(): StackedTaskWeights | undefined {
    const weights = this.weights;
    this.weights = undefined;
    return weights;
  }
}

/** An adapter directory that could not be (re)loaded; `servingPrevious` when its last good version still serves. */
export interface AdapterProblem {
  readonly adapter: string;
  readonly message: string;
  readonly servingPrevious: boolean;
}

/** pino's shape (fastify's logger), so the registry logs through the server's logger. */
export interface RegistryLogger {
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
}

export interface RegistryOptions {
  readonly backbone: Backbone;
  /** The adapters root: one sub-directory per adapter. */
  readonly dir: string;
  /** Watch the directories with fs.watch (default true). */
  readonly watch?: boolean;
  /** Periodic rescan, for file systems where fs.watch misses events; 0 disables (default 1000 ms). */
  readonly rescanMs?: number;
  /** Quiet time after a file-system event before rescanning, so a burst of writes is one rescan (default 100 ms). */
  readonly debounceMs?: number;
  readonly logger?: RegistryLogger;
  /**
   * Resolve `open` once the directory is listed, and load the adapters after it, each announced (and
   * served) as it loads; `initialLoad` settles when all have been tried. Default false: `open` resolves
   * with every adapter loaded.
   */
  readonly background?: boolean;
}

/** Adapter directories loaded at once: reads overlap with parsing (parsing runs on this thread). */
const LOAD_CONCURRENCY = 4;
/** While many adapters load, changes are announced at most this often (each announcement is O(tasks)). */
const ANNOUNCE_MS = 50;

/** size, mtime and inode of each adapter file: a copy in progress or a rename into place changes it. */
type Signature = string;

interface DirState {
  readonly signature: Signature;
  /** The last version that loaded and fitted the backbone. */
  readonly task: ServedTask | undefined;
  readonly error: string | undefined;
}

const silent: RegistryLogger = { info() {}, warn() {} };

/**
 * Every adapter under a directory, loaded, checked against the backbone and kept in memory. Picks up
 * added, changed and removed adapters while the server runs (fs.watch plus a periodic rescan). A
 * directory that fails to load (corrupt, half-copied, for another backbone) is reported and skipped;
 * a changed adapter that fails keeps serving its previous version; the others are never affected.
 */
export class AdapterRegistry {
  private readonly states = new Map<string, DirState>();
  private served = new Map<string, ServedTask>();
  private conflicts: AdapterProblem[] = [];
  private readonly listeners = new Set<() => void>();
  private readonly watchers = new Map<string, FSWatcher>();
  private rootWatcher: FSWatcher | undefined;
  private interval: NodeJS.Timeout | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private scanning: Promise<void> | undefined;
  /** A full rescan is due; else only `pendingDirs` (named by fs.watch events) are. */
  private pendingFull = false;
  private readonly pendingDirs = new Set<string>();
  /** Directories the last listing found (loaded or not). */
  private listed = 0;
  private lastAnnounce = 0;
  private unannounced = false;
  /** Settles when the first scan has tried every adapter directory. */
  initialLoad: Promise<void> = Promise.resolve();
  /** Whether the first scan is still loading adapters. */
  loading = false;
  private closed = false;
  private readonly logger: RegistryLogger;
  /** Increases whenever the set of served tasks (or any of their weights) changes. */
  version = 0;

  private constructor(private readonly options: RegistryOptions) {
    this.logger = options.logger ?? silent;
  }

  static async open(options: RegistryOptions): Promise<AdapterRegistry> {
    const info = await stat(options.dir).catch(() => undefined);
    if (!info?.isDirectory())
      throw new MeloError('NOT_FOUND', 'adapters directory does not exist', { file: options.dir });
    const registry = new AdapterRegistry(options);
    registry.loading = true;
    registry.initialLoad = registry.rescan().finally(() => {
      registry.loading = false;
    });
    if (options.background) {
      // The adapter index (the directory listing) first; the loads continue after open returns.
      await registry.listAdapterDirs();
      registry.initialLoad.catch(() => {});
    } else {
      await registry.initialLoad;
    }
    registry.startWatching();
    return registry;
  }

  get dir(): string {
    return this.options.dir;
  }

  /** The tasks being served, by name. */
  tasks(): ServedTask[] {
    return [...this.served.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  task(name: string): ServedTask | undefined {
    return this.served.get(name);
  }

  /** Adapter directories found so far (loaded or not): what the stack should make room for. */
  knownAdapterCount(): number {
    return Math.max(this.listed, this.states.size);
  }

  /** Every loaded version the registry still holds: served, shadowed by a same-named one, or kept as the last good version. */
  loadedTasks(): ServedTask[] {
    return [...this.states.values()].flatMap((state) => (state.task ? [state.task] : []));
  }

  /** Forgets what was loaded and reads every adapter again (after the inference thread was lost). */
  reloadAll(): Promise<void> {
    this.states.clear();
    return this.rescan();
  }

  problems(): AdapterProblem[] {
    const failed = [...this.states]
      .filter(([, state]) => state.error !== undefined)
      .map(([adapter, state]) => ({
        adapter,
        message: state.error!,
        servingPrevious: state.task !== undefined && this.served.get(state.task.name) === state.task,
      }));
    return [...failed, ...this.conflicts].sort((a, b) => (a.adapter < b.adapter ? -1 : 1));
  }

  /** Calls `listener` after each change of the served tasks; returns the unsubscribe function. */
  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Scans the directory now (scans never overlap: a request during one runs once more after it). */
  rescan(): Promise<void> {
    this.pendingFull = true;
    return this.drain();
  }

  /**
   * Runs the pending work, one scan at a time: a full rescan, or only the directories fs.watch named,
   * so that an adapter added next to a thousand others costs one directory's reads, not a thousand.
   */
  private drain(): Promise<void> {
    if (this.scanning) return this.scanning;
    // `finally` runs as a later microtask, after `scanning` is set (even when nothing was pending).
    this.scanning = this.runPending().finally(() => {
      this.scanning = undefined;
      // Asked for between the loop's last check and here: run it rather than wait for the next event.
      if ((this.pendingFull || this.pendingDirs.size > 0) && !this.closed) void this.drain().catch(() => {});
    });
    return this.scanning;
  }

  private async runPending(): Promise<void> {
    while ((this.pendingFull || this.pendingDirs.size > 0) && !this.closed) {
      // Directories fs.watch named first: an adapter added during a long full rescan need not wait for it.
      if (this.pendingDirs.size > 0) await this.refreshNamed(this.takePendingDirs());
      if (this.pendingFull) {
        this.pendingFull = false;
        await this.scanOnce();
      }
    }
  }

  private takePendingDirs(): string[] {
    const names = [...this.pendingDirs];
    this.pendingDirs.clear();
    return names;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.interval);
    clearTimeout(this.debounce);
    this.rootWatcher?.close();
    for (const watcher of this.watchers.values()) watcher.close();
    this.watchers.clear();
    await this.scanning;
  }

  private startWatching(): void {
    const rescanMs = this.options.rescanMs ?? 1000;
    if (rescanMs > 0) {
      // Each periodic rescan is scheduled once the previous has finished: a full rescan of a thousand
      // directories (2,000 stats) can take seconds on a busy machine, and must not run back to back.
      const periodic = () => {
        this.interval = setTimeout(() => {
          void this.rescan()
            .catch(() => {})
            .finally(() => {
              if (!this.closed) periodic();
            });
        }, rescanMs);
        this.interval.unref();
      };
      periodic();
    }
    if (this.options.watch === false) return;
    this.rootWatcher = this.watchDir(this.options.dir);
    this.syncSubdirWatchers();
  }

  /** `name`: the adapter directory watched, or undefined for the root (whose events name the directory). */
  private watchDir(path: string, name?: string): FSWatcher | undefined {
    try {
      const watcher = watch(path, { persistent: false }, (_event, file) => {
        const dir = name ?? (typeof file === 'string' && file.length > 0 ? file : undefined);
        this.scheduleRescan(dir);
      });
      // A watched directory that disappears errors on some platforms; the periodic rescan covers it.
      watcher.on('error', () => watcher.close());
      return watcher;
    } catch {
      return undefined;
    }
  }

  private syncSubdirWatchers(): void {
    if (this.closed || this.options.watch === false) return;
    for (const [name, watcher] of this.watchers) {
      if (!this.states.has(name)) {
        watcher.close();
        this.watchers.delete(name);
      }
    }
    for (const name of this.states.keys()) {
      if (this.watchers.has(name)) continue;
      const watcher = this.watchDir(join(this.options.dir, name), name);
      if (watcher) this.watchers.set(name, watcher);
    }
  }

  /** Rescans `dir` (an adapter directory name) after the quiet time, or everything when no name is known. */
  private scheduleRescan(dir?: string): void {
    if (this.closed) return;
    // Hidden names are copies in progress (moved into place later, which is its own event).
    if (dir?.startsWith('.')) return;
    if (dir === undefined || dir.includes('/')) this.pendingFull = true;
    else this.pendingDirs.add(dir);
    clearTimeout(this.debounce);
    this.debounce = setTimeout(() => void this.drain(), this.options.debounceMs ?? 100);
    this.debounce.unref();
  }

  private async scanOnce(): Promise<void> {
    const listed = await this.listAdapterDirs();
    const present = new Set(listed);
    // New directories first, then the ones already known (checked for changes).
    const names = [
      ...listed.filter((name) => !this.states.has(name)),
      ...listed.filter((name) => this.states.has(name)),
    ];
    for (const name of [...this.states.keys()]) {
      if (present.has(name)) continue;
      this.states.delete(name);
      this.unannounced = true;
    }
    // A few loads at a time, each announced (throttled) as it lands, so the first tasks serve while the
    // rest load.
    let next = 0;
    const loader = async () => {
      while (next < names.length && !this.closed) {
        // A directory fs.watch named meanwhile is read before the scan goes on (hot add stays O(1)).
        if (this.pendingDirs.size > 0) await this.refreshNamed(this.takePendingDirs());
        if (await this.refreshDir(names[next++]!)) this.unannounced = true;
        if (performance.now() - this.lastAnnounce >= ANNOUNCE_MS) this.announce();
      }
    };
    await Promise.all(Array.from({ length: LOAD_CONCURRENCY }, loader));
    if (this.closed) return;
    this.announce();
    this.syncSubdirWatchers();
  }

  /** Refreshes only these adapter directories (named by fs.watch events): added, changed or removed. */
  private async refreshNamed(names: readonly string[]): Promise<void> {
    for (const name of names) {
      if (this.closed) return;
      const info = await stat(join(this.options.dir, name)).catch(() => undefined);
      if (info?.isDirectory()) {
        if (await this.refreshDir(name)) this.unannounced = true;
      } else if (this.states.delete(name)) {
        this.unannounced = true;
      }
    }
    this.announce();
    this.syncSubdirWatchers();
  }

  /** Tells the listeners when the served tasks changed since the last announcement. */
  private announce(): void {
    this.lastAnnounce = performance.now();
    const changed = this.resolveNames() || this.unannounced;
    this.unannounced = false;
    if (!changed) return;
    this.version++;
    for (const listener of this.listeners) listener();
  }

  private async listAdapterDirs(): Promise<string[]> {
    try {
      const entries = await readdir(this.options.dir, { withFileTypes: true });
      const names = entries
        .filter((entry) => entry.isDirectory() && !entry.name.startsWith('.'))
        .map((entry) => entry.name)
        .sort();
      this.listed = names.length;
      return names;
    } catch {
      // The root itself vanished: nothing is served until it comes back.
      this.listed = 0;
      return [];
    }
  }

  /** Loads the directory again if its files changed; returns whether its state changed. */
  private async refreshDir(name: string): Promise<boolean> {
    const dir = join(this.options.dir, name);
    const previous = this.states.get(name);
    const before = await signatureOf(dir);
    if (previous?.signature === before) return false;
    let task: ServedTask | undefined;
    let error: string | undefined;
    try {
      task = await this.load(name, dir, before);
    } catch (caught) {
      error = this.relative(errorMessage(caught));
    }
    if ((await signatureOf(dir)) !== before) {
      // Written to while we read it (a copy in progress): what we read may mix versions. Try again later.
      this.scheduleRescan(name);
      return false;
    }
    if (task) {
      this.states.set(name, { signature: before, task, error: undefined });
      this.logger.info(
        { task: task.name, adapter: name, rank: task.info.rank, classes: task.info.labels.length },
        previous?.task ? 'adapter reloaded' : 'adapter loaded',
      );
      return true;
    }
    this.states.set(name, { signature: before, task: previous?.task, error });
    if (error !== previous?.error) {
      this.logger.warn(
        { adapter: name, error, servingPrevious: previous?.task !== undefined },
        'adapter rejected',
      );
    }
    return error !== previous?.error;
  }

  /** Loads and checks one adapter directory whose files have `signature`. */
  private async load(name: string, dir: string, signature: Signature): Promise<ServedTask> {
    const { info, weights } = await this.read(name, dir);
    const reread = async () => {
      const again = await this.read(name, dir).catch((error: unknown) => {
        throw new MeloError('BAD_ADAPTER', `could not be read again: ${this.relative(errorMessage(error))}`, {
          file: name,
        });
      });
      if ((await signatureOf(dir)) !== signature || again.info.labels.length !== info.labels.length)
        throw new MeloError(
          'BAD_ADAPTER',
          'changed on disk since it was loaded; the new version loads next',
          {
            file: name,
          },
        );
      return again.weights;
    };
    return new ServedTask(info, weights, reread);
  }

  private async read(name: string, dir: string): Promise<{ info: TaskInfo; weights: StackedTaskWeights }> {
    const [loaded] = await loadTasks(this.options.backbone, [dir]);
    const { adapter, labels } = loaded!;
    if (!isValidTaskName(loaded!.name)) {
      throw new MeloError(
        'BAD_ADAPTER',
        `task name '${loaded!.name}' is not valid (letters, digits, '.', '_', '-'); set melo.task in ${ADAPTER_CONFIG_FILE}`,
        { file: dir },
      );
    }
    const method = adapter.pairs.size > 0 ? 'lora' : 'linear';
    const info: TaskInfo = {
      name: loaded!.name,
      adapter: name,
      labels,
      taskType: adapter.metadata.taskType,
      method,
      rank: method === 'lora' ? adapter.lora.rank : 0,
      alpha: adapter.lora.alpha,
      targets: method === 'lora' ? [...adapter.lora.targets] : [],
      bytes: 4 * (loraParameterCount(adapter) + headParameterCount(adapter)),
      ...(adapter.metadata.routing ? { routing: adapter.metadata.routing } : {}),
      fingerprint: fingerprintAdapter(adapter),
    };
    return { info, weights: takeStackedWeights(adapter) };
  }

  /** Decides which directory serves each task name (the first by directory name); returns whether that changed. */
  private resolveNames(): boolean {
    const next = new Map<string, ServedTask>();
    const conflicts: AdapterProblem[] = [];
    for (const [name, state] of this.states) {
      if (!state.task) continue;
      const holder = next.get(state.task.name);
      if (holder) {
        conflicts.push({
          adapter: name,
          message: `${name}: task '${state.task.name}' is already served from ${holder.info.adapter}`,
          servingPrevious: false,
        });
        continue;
      }
      next.set(state.task.name, state.task);
    }
    const changed =
      next.size !== this.served.size || [...next].some(([name, task]) => this.served.get(name) !== task);
    if (conflicts.length > 0 && JSON.stringify(conflicts) !== JSON.stringify(this.conflicts)) {
      for (const conflict of conflicts)
        this.logger.warn({ adapter: conflict.adapter, error: conflict.message }, 'adapter rejected');
    }
    this.served = next;
    this.conflicts = conflicts;
    return changed;
  }

  /** Error messages name adapter files relative to the adapters root: clients need not see server paths. */
  private relative(message: string): string {
    const root = this.options.dir.replace(/\/+$/, '');
    return message.split(`${root}/`).join('');
  }
}

async function signatureOf(dir: string): Promise<Signature> {
  const parts = await Promise.all(
    [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE].map(async (file) => {
      const info = await stat(join(dir, file)).catch(() => undefined);
      return info ? `${info.size}:${info.mtimeMs}:${info.ino}` : '-';
    }),
  );
  return parts.join('|');
}
