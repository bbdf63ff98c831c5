import { type ChildProcessByStdio, spawn, spawnSync } from 'node:child_process';
import { createInterface, type Interface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';

export interface TorchPython {
  /** The interpreter, as given (a path or a command on PATH). */
  readonly python: string;
  readonly torchVersion: string;
}

/**
 * Candidate interpreters in order: MELO_PYTHON, Debian's system Python (where python3-torch installs, and
 * which is not the first python3 on PATH when pyenv is present), then whatever python3 PATH gives.
 */
export function torchPythonCandidates(env: NodeJS.ProcessEnv = process.env): string[] {
  const candidates = [env.MELO_PYTHON, '/usr/bin/python3', 'python3'].filter((c): c is string => !!c);
  return [...new Set(candidates)];
}

/** The first candidate that can `import torch`, or the reason each one could not. */
export function findTorchPython(
  candidates: readonly string[] = torchPythonCandidates(),
): { found: TorchPython } | { found: undefined; reasons: string[] } {
  const reasons: string[] = [];
  for (const python of candidates) {
    const probe = spawnSync(python, ['-c', 'import torch; print(torch.__version__)'], {
      encoding: 'utf8',
      timeout: 120_000,
    });
    if (probe.error) {
      reasons.push(`${python}: ${probe.error.message}`);
    } else if (probe.status !== 0) {
      reasons.push(`${python}: ${probe.stderr.trim().split('\n').at(-1) ?? `exit ${probe.status}`}`);
    } else {
      return { found: { python, torchVersion: probe.stdout.trim() } };
    }
  }
  return { found: undefined, reasons };
}

/**
 * A long-lived script (Python, or a melo worker) answering one JSON line per JSON request line, so that a
 * benchmark can interleave its runs with its own. The script's stderr passes through; a crash rejects the
 * pending request.
 *
 * Between answers the script is stopped (SIGSTOP; SIGCONT before the next request), so that its idle
 * threads cannot take the CPU from whatever is timed meanwhile. They can: a tuned PyTorch peer whose
 * probe picked OMP_WAIT_POLICY=ACTIVE keeps its OpenMP threads spinning while it waits, and in a
 * `bench:train -- --isa avx2 --methods full` run (2026-12-07 23:44 UTC, 2 cores) every contender then ran
 * at half its speed or less (melo fp32 7.4 s a round against 3.8 in earlier runs) at load 3.2–3.5.
 */
export class JsonLineWorker {
  private readonly lines: Interface;
  private readonly queue: string[] = [];
  private waiting: { resolve: (line: string) => void; reject: (error: Error) => void } | undefined;
  private exit: Error | undefined;
  private finishing = false;

  private constructor(
    private readonly child: ChildProcessByStdio<Writable, Readable, null>,
    private readonly label: string,
  ) {
    this.lines = createInterface({ input: child.stdout });
    this.lines.on('line', (line) => {
      if (this.waiting) {
        const { resolve } = this.waiting;
        this.waiting = undefined;
        resolve(line);
      } else {
        this.queue.push(line);
      }
    });
    child.on('close', (code) => {
      this.exit = new Error(`${label} exited with ${code}`);
      this.waiting?.reject(this.exit);
      this.waiting = undefined;
    });
    child.on('error', (error) => {
      this.exit = new Error(`${label}: ${error.message}`);
      this.waiting?.reject(this.exit);
      this.waiting = undefined;
    });
  }

  /** `env` changes this process's environment for the script (undefined: unset), e.g. the peer's threads. */
  static start(
    python: string,
    script: string,
    args: readonly string[],
    env: Readonly<Record<string, string | undefined>> = {},
  ): JsonLineWorker {
    const child = spawn(python, [script, ...args], {
      stdio: ['pipe', 'pipe', 'inherit'],
      env: childEnvironment(env),
    });
    return new JsonLineWorker(child, `${script} (${python})`);
  }

  /** The script's process id (undefined if it could not be started). */
  get pid(): number | undefined {
    return this.child.pid;
  }

  /** The next line the script prints, parsed. */
  async read(): Promise<unknown> {
    const queued = this.queue.shift();
    const line =
      queued ??
      (await new Promise<string>((resolve, reject) => {
        if (this.exit) reject(this.exit);
        else this.waiting = { resolve, reject };
      }));
    // Not after the last line: the script is exiting then.
    if (!this.finishing) this.signal('SIGSTOP');
    try {
      return JSON.parse(line);
    } catch {
      throw new Error(`${this.label} printed a line that is not JSON: ${line.slice(0, 200)}`);
    }
  }

  async request(message: unknown): Promise<unknown> {
    this.signal('SIGCONT');
    this.child.stdin.write(`${JSON.stringify(message)}\n`);
    return this.read();
  }

  /** Closes the script's input and returns its last line (its summary). */
  async finish(): Promise<unknown> {
    this.finishing = true;
    this.signal('SIGCONT');
    this.child.stdin.end();
    return this.read();
  }

  kill(): void {
    if (this.child.exitCode !== null) return;
    this.child.kill();
    // A stopped process keeps a SIGTERM pending until it runs again.
    this.signal('SIGCONT');
  }

  private signal(signal: 'SIGSTOP' | 'SIGCONT'): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
  }
}

/** This process's environment with `changes` applied; an undefined value removes the variable. */
export function childEnvironment(changes: Readonly<Record<string, string | undefined>>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const [name, value] of Object.entries(changes)) {
    if (value === undefined) delete env[name];
    else env[name] = value;
  }
  return env;
}
