import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { loadBackbone } from '../src/checkpoints/load.ts';
import { DicomwebPacs } from '../src/pacs/dicomweb.ts';
import { readInstanceHeader } from '../src/pacs/instance.ts';
import { runCli } from './helpers/cli.ts';
import { freePort, Orthanc, orthancMissing } from './helpers/orthanc.ts';
import {
  findPatientData,
  MeloServer,
  ROUTED_TASKS,
  SOURCES,
  sourcePath,
  TINY,
  verifySrInPacs,
  waitFor,
  writeRoutedAdapters,
} from './pacs-fixtures.ts';

const skip = orthancMissing();
let dir = '';
let adapters = '';
/** What `melo predict` gives for each source file (the SRs must carry the same numbers). */
const predicted = new Map<string, Map<string, number[]>>();
/** Everything melo printed or served (logs, STOW responses, metrics), for the patient-data scan. */
const printed: string[] = [];
const servers: MeloServer[] = [];
const pacsServers: Orthanc[] = [];

before(async () => {
  if (skip) return;
  dir = await mkdtemp(join(tmpdir(), 'melo-pacs-push-'));
  adapters = join(dir, 'adapters');
  await writeRoutedAdapters(await loadBackbone(TINY), adapters);
  const adapterArgs = ROUTED_TASKS.flatMap((spec) => ['--adapter', join(adapters, spec.task)]);
  for (const { file } of SOURCES) {
    const result = await runCli(['predict', '--backbone', TINY, ...adapterArgs, '--json', sourcePath(file)]);
    assert.equal(result.code, 0, result.stderr);
    const predictions = JSON.parse(result.stdout).predictions as { task: string; probabilities: number[] }[];
    predicted.set(file, new Map(predictions.map((p) => [p.task, p.probabilities])));
  }
});
after(async () => {
  for (const server of servers) await server.stop('SIGKILL');
  for (const pacs of pacsServers) await pacs.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

function serveArgs(resultsPort: number, outbox: string): string[] {
  return [
    '--backbone',
    TINY,
    '--adapters',
    adapters,
    '--threads',
    '1',
    '--results-dicomweb',
    `http://127.0.0.1:${resultsPort}/dicom-web`,
    '--outbox',
    outbox,
    '--retry-max-ms',
    '1000',
  ];
}

async function startMelo(args: string[], port: number): Promise<MeloServer> {
  const server = await MeloServer.start(args, port);
  servers.push(server);
  return server;
}

async function srCount(pacs: Orthanc): Promise<number> {
  return (await pacs.find('Instance', { Modality: 'SR' })).length;
}

async function metrics(server: MeloServer): Promise<string> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  printed.push(text);
  return text;
}

const sourceBytes = () => Promise.all(SOURCES.map(({ file }) => readFile(sourcePath(file))));

test('push: Orthanc sends studies to melo by STOW-RS; one valid SR per instance comes back', {
  skip,
}, async () => {
  const meloPort = await freePort();
  const orthanc = await Orthanc.start({ servers: { melo: `http://127.0.0.1:${meloPort}/dicom-web/` } });
  pacsServers.push(orthanc);
  const melo = await startMelo(serveArgs(orthanc.port, join(dir, 'outbox-push')), meloPort);
  const studies = new Set<string>();
  for (const { file } of SOURCES) studies.add((await orthanc.store(sourcePath(file))).ParentStudy);
  // Orthanc's own DICOMweb client pushes each study to melo (PS3.18 STOW-RS, multipart/related).
  for (const study of studies) {
    const response = await fetch(`${orthanc.url}/dicom-web/servers/melo/stow`, {
      method: 'POST',
      body: JSON.stringify({ Resources: [study], Synchronous: true }),
    });
    assert.equal(response.status, 200, await response.text());
  }
  await waitFor('one SR per pushed instance', async () => (await srCount(orthanc)) >= SOURCES.length);
  const pacs = new DicomwebPacs(orthanc.dicomweb);
  for (const { file, modality } of SOURCES)
    await verifySrInPacs(pacs, file, modality, predicted.get(file)!, dir);
  assert.equal(await srCount(orthanc), SOURCES.length);
  assert.match(await metrics(melo), /melo_outbox_instances\{state="delivered"\} 4/);

  // STOW-RS answers in DICOM JSON: a part that is not DICOM is a failed SOP (0xC000); none stored is 409.
  const boundary = 'melo-test-boundary';
  const body = `--${boundary}\r\nContent-Type: application/dicom\r\n\r\nnot dicom\r\n--${boundary}--\r\n`;
  const refused = await fetch(`${melo.url}/dicom-web/studies`, {
    method: 'POST',
    headers: { 'Content-Type': `multipart/related; type="application/dicom"; boundary=${boundary}` },
    body,
  });
  assert.equal(refused.status, 409);
  assert.equal(refused.headers.get('content-type'), 'application/dicom+json; charset=utf-8');
  assert.deepEqual(await refused.json(), {
    '00081198': { vr: 'SQ', Value: [{ '00081197': { vr: 'US', Value: [0xc000] } }] },
  });

  // A mixed request to a named study: stored and failed instances, 202.
  const [ct, mr] = await sourceBytes();
  const ctHeader = readInstanceHeader(ct!, 'ct');
  const response = await stow(melo, [ct!, mr!], ctHeader.studyInstanceUid);
  assert.equal(response.status, 202);
  const json = (await response.json()) as Record<string, { Value: Record<string, { Value: unknown[] }>[] }>;
  assert.deepEqual(
    json['00081199']!.Value.map((item) => item['00081155']!.Value[0]),
    [ctHeader.sopInstanceUid],
  );
  assert.deepEqual(
    json['00081198']!.Value.map((item) => item['00081197']!.Value[0]),
    [0xa900],
  );
  // The CT was pushed twice: its SR has the same UID, so the PACS still holds one.
  await waitFor('the re-sent instance to be delivered', async () =>
    /melo_outbox_instances\{state="delivered"\} 5/.test(await metrics(melo)),
  );
  assert.equal(await srCount(orthanc), SOURCES.length);
  await melo.stop();
  printed.push(melo.output.join(''));
});

/** STOW-RS to melo with dicomweb-client, like any DICOMweb sender. */
async function stow(melo: MeloServer, instances: Uint8Array[], study?: string): Promise<Response> {
  const boundary = `melo-${Math.random().toString(16).slice(2)}`;
  const chunks: Uint8Array[] = [];
  for (const bytes of instances) {
    chunks.push(
      Buffer.from(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`),
      bytes,
      Buffer.from('\r\n'),
    );
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return fetch(`${melo.url}/dicom-web/studies${study ? `/${study}` : ''}`, {
    method: 'POST',
    headers: {
      'Content-Type': `multipart/related; type="application/dicom"; boundary=${boundary}`,
      Accept: 'application/dicom+json',
    },
    body: Buffer.concat(chunks),
  });
}

test('push: results wait in the outbox while the PACS is down and arrive once it is up', {
  skip,
}, async () => {
  const orthancPort = await freePort();
  const melo = await startMelo(serveArgs(orthancPort, join(dir, 'outbox-down')), await freePort());
  // dicomweb-client as the sender this time.
  await new DicomwebPacs(`${melo.url}/dicom-web`).store(await sourceBytes());
  await waitFor('delivery retries', async () =>
    /melo_outbox_instances\{state="retries"\} [1-9]/.test(await metrics(melo)),
  );
  assert.match(await metrics(melo), /melo_outbox_instances\{state="pending"\} 4/);
  const orthanc = await Orthanc.start({ port: orthancPort });
  pacsServers.push(orthanc);
  await waitFor('SRs after the PACS came up', async () => (await srCount(orthanc)) >= SOURCES.length);
  const pacs = new DicomwebPacs(orthanc.dicomweb);
  for (const { file, modality } of SOURCES)
    await verifySrInPacs(pacs, file, modality, predicted.get(file)!, dir);
  await waitFor('an empty outbox', async () =>
    /melo_outbox_instances\{state="pending"\} 0/.test(await metrics(melo)),
  );
  await melo.stop();
  printed.push(melo.output.join(''));
});

test('push: kill -9 after acknowledgement and before delivery; after restart every instance gets exactly one SR', {
  skip,
}, async () => {
  const orthancPort = await freePort();
  const outbox = join(dir, 'outbox-kill');
  const meloPort = await freePort();
  const first = await startMelo(serveArgs(orthancPort, outbox), meloPort);
  const response = await stow(first, await sourceBytes());
  assert.equal(response.status, 200);
  printed.push(await response.text());
  // Acknowledged: the jobs are on disk. The PACS is down, so nothing can have been delivered.
  await first.stop('SIGKILL');
  printed.push(first.output.join(''));
  const left = [...(await readdir(join(outbox, 'jobs'))), ...(await readdir(join(outbox, 'results')))].filter(
    (name) => !name.startsWith('.'),
  );
  assert.equal(left.length, SOURCES.length, `outbox after kill: ${left.join(', ')}`);

  const orthanc = await Orthanc.start({ port: orthancPort });
  pacsServers.push(orthanc);
  const second = await startMelo(serveArgs(orthancPort, outbox), meloPort);
  await waitFor('SRs after the restart', async () => (await srCount(orthanc)) >= SOURCES.length);
  await waitFor('an empty outbox', async () =>
    /melo_outbox_instances\{state="pending"\} 0/.test(await metrics(second)),
  );
  const pacs = new DicomwebPacs(orthanc.dicomweb);
  for (const { file, modality } of SOURCES)
    await verifySrInPacs(pacs, file, modality, predicted.get(file)!, dir);
  assert.equal(await srCount(orthanc), SOURCES.length);
  await second.stop();
  printed.push(second.output.join(''));
});

test('push: logs, STOW-RS responses and metrics never carry patient names or IDs', { skip }, () => {
  assert.ok(printed.length > 3);
  assert.ok(printed.join('').includes('SR delivered'), 'the logs were captured');
  for (const text of printed) assert.equal(findPatientData(text), undefined, text.slice(0, 500));
});
