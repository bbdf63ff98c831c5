import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * A real PACS for the tests: Debian's Orthanc with its DICOMweb plugin, on a free loopback port with a
 * temporary storage directory (see /work/shared/PACS-NOTES.md). `.ci/run` installs the packages.
 */
export const ORTHANC_BIN = '/usr/sbin/Orthanc';
export const DICOMWEB_PLUGIN = '/usr/share/orthanc/plugins/libOrthancDicomWeb.so';

/** Why the PACS tests cannot run here, or false when they can. */
export function orthancMissing(): string | false {
  for (const path of [ORTHANC_BIN, DICOMWEB_PLUGIN, '/usr/bin/dciodvfy', '/usr/bin/dsrdump'])
    if (!existsSync(path))
      return `${path} not installed (apt-get install orthanc orthanc-dicomweb dcmtk dicom3tools)`;
  return false;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export interface OrthancOptions {
  /** Port to listen on (default: a free one). */
  readonly port?: number;
  /** Storage directory to reuse (a restart keeps what was stored); default: a new temporary one. */
  readonly storage?: string;
  /** DICOMweb servers Orthanc may send to (name → base URL ending in /dicom-web/). */
  readonly servers?: Record<string, string>;
}

export class Orthanc {
  private constructor(
    readonly port: number,
    readonly storage: string,
    private readonly owned: boolean,
    private child: ChildProcess,
    private readonly log: string[],
  ) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get dicomweb(): string {
    return `${this.url}/dicom-web`;
  }

  static async start(options: OrthancOptions = {}): Promise<Orthanc> {
    const port = options.port ?? (await freePort());
    const owned = options.storage === undefined;
    const storage = options.storage ?? (await mkdtemp(join(tmpdir(), 'melo-orthanc-')));
    await mkdir(join(storage, 'db'), { recursive: true });
    const configPath = join(storage, 'orthanc.json');
    await writeFile(
      configPath,
      JSON.stringify({
        Name: 'melo-test',
        StorageDirectory: join(storage, 'db'),
        IndexDirectory: join(storage, 'db'),
        HttpPort: port,
        DicomServerEnabled: false,
        RemoteAccessAllowed: false,
        AuthenticationEnabled: false,
        HttpTimeout: 60,
        Plugins: [DICOMWEB_PLUGIN],
        DicomWeb: {
          Enable: true,
          Root: '/dicom-web/',
          Servers: Object.fromEntries(
            Object.entries(options.servers ?? {}).map(([name, url]) => [name, [url]]),
          ),
        },
      }),
    );
    const log: string[] = [];
    const child = spawn(ORTHANC_BIN, [configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout?.on('data', (chunk) => log.push(String(chunk)));
    child.stderr?.on('data', (chunk) => log.push(String(chunk)));
    const orthanc = new Orthanc(port, storage, owned, child, log);
    await orthanc.waitReady();
    return orthanc;
  }

  private async waitReady(): Promise<void> {
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      if (this.child.exitCode !== null)
        throw new Error(`Orthanc exited (${this.child.exitCode}): ${this.log.join('').slice(-2000)}`);
      try {
        const response = await fetch(`${this.url}/system`);
        if (response.ok) return;
      } catch {
        // not listening yet
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    throw new Error(
      `Orthanc did not answer on port ${this.port} within 30 s: ${this.log.join('').slice(-2000)}`,
    );
  }

  /** Stores a DICOM file through Orthanc's REST API; returns Orthanc's ids. */
  async store(path: string): Promise<{ ID: string; ParentStudy: string }> {
    const response = await fetch(`${this.url}/instances`, { method: 'POST', body: await readFile(path) });
    if (!response.ok) throw new Error(`Orthanc refused ${path}: ${response.status} ${await response.text()}`);
    return (await response.json()) as { ID: string; ParentStudy: string };
  }

  async find(level: 'Instance' | 'Study', query: Record<string, string>): Promise<string[]> {
    const response = await fetch(`${this.url}/tools/find`, {
      method: 'POST',
      body: JSON.stringify({ Level: level, Query: query }),
    });
    return (await response.json()) as string[];
  }

  async deleteInstance(id: string): Promise<void> {
    const response = await fetch(`${this.url}/instances/${id}`, { method: 'DELETE' });
    if (!response.ok) throw new Error(`Orthanc did not delete ${id}: ${response.status}`);
  }

  async instanceFile(id: string): Promise<Uint8Array> {
    return new Uint8Array(await (await fetch(`${this.url}/instances/${id}/file`)).arrayBuffer());
  }

  /** Stops the server (the storage stays until `remove`). */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  }

  /** Stops the server and deletes a storage directory it created. */
  async close(): Promise<void> {
    await this.stop();
    if (this.owned) await rm(this.storage, { recursive: true, force: true });
  }
}

/** `dciodvfy`'s Error lines for a file (Warnings are not errors; see PACS-NOTES.md), and its whole output. */
export function dciodvfy(path: string): { errors: string[]; output: string } {
  const result = spawnSync('dciodvfy', [path], { encoding: 'utf8' });
  const output = `${result.stdout ?? ''}${result.stderr ?? ''}`;
  return { errors: output.split('\n').filter((line) => /^Error/.test(line)), output };
}

/** `dsrdump`'s listing of an SR, with its exit status and messages (it reports problems on stderr). */
export function dsrdump(path: string): { status: number | null; listing: string; messages: string } {
  const result = spawnSync('dsrdump', ['+Pl', path], { encoding: 'utf8' });
  return { status: result.status, listing: result.stdout ?? '', messages: result.stderr ?? '' };
}
