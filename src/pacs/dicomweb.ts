import { api } from 'dicomweb-client';
import XHR2 from 'xhr2';
import { MeloError } from '../errors.ts';
import { isValidUid } from './instance.ts';

/**
 * A DICOMweb PACS as melo uses it: QIDO-RS instance search, WADO-RS instance retrieval (the stored
 * bytes, transfer-syntax=*, so melo decodes what the modality wrote, not a PACS transcoding) and
 * STOW-RS. Calls go through dicomweb-client. dicomweb-client 0.11 transports with XMLHttpRequest,
 * which Node lacks (dicomweb-client#101); each call is given an xhr2 request instead, so nothing global
 * is patched.
 */
export interface PacsAuth {
  /** Sent as `Authorization: Bearer <token>`. */
  readonly token?: string;
  /** `user:password`, sent as HTTP basic authentication. */
  readonly basic?: string;
}

/** One instance as QIDO-RS lists it. */
export interface InstanceRef {
  readonly studyInstanceUid: string;
  readonly seriesInstanceUid: string;
  readonly sopInstanceUid: string;
  readonly sopClassUid: string | undefined;
  readonly modality: string | undefined;
}

export interface InstanceQuery {
  readonly studyInstanceUid?: string;
  /** Matches studies on or after this date (YYYYMMDD). */
  readonly since?: string;
  readonly modality?: string;
  readonly seriesInstanceUid?: string;
}

/** A failed call: `status` is the HTTP status, 0 when no answer came (refused, reset, timed out). */
export class PacsError extends MeloError {
  constructor(
    readonly status: number,
    what: string,
    url: string,
  ) {
    super(
      'PACS',
      status === 0 ? `${what}: no answer from the PACS` : `${what}: the PACS answered HTTP ${status}`,
      { file: url },
    );
  }
}

/**
 * WADO-RS asks for the instance as stored (`transfer-syntax=*`): without it a PACS transcodes to Explicit
 * VR Little Endian (PS3.18 8.7.3.5), which re-decodes lossy JPEG with the PACS's decoder. dicomweb-client
 * 0.11's retrieveInstance rejects every explicit media type list (its common-type check compares
 * 'application/' with 'application/dicom'), so the request object it is handed states the Accept header.
 */
class StoredTransferSyntaxRequest extends XHR2 {
  override setRequestHeader(name: string, value: string): void {
    super.setRequestHeader(
      name,
      name.toLowerCase() === 'accept'
        ? 'multipart/related; type="application/dicom"; transfer-syntax=*'
        : value,
    );
  }
}

type DicomJson = Record<string, { Value?: unknown[] } | undefined>;

const PAGE = 500;

export class DicomwebPacs {
  private readonly client: InstanceType<typeof api.DICOMwebClient>;

  constructor(
    readonly url: string,
    auth: PacsAuth = {},
  ) {
    const headers: Record<string, string> = {};
    if (auth.token) headers.Authorization = `Bearer ${auth.token}`;
    else if (auth.basic)
      headers.Authorization = `Basic ${Buffer.from(auth.basic, 'utf8').toString('base64')}`;
    this.client = new api.DICOMwebClient({
      url: url.replace(/\/+$/, ''),
      headers,
      singlepart: false,
      verbose: false,
    });
  }

  private request() {
    return { instance: new XHR2() };
  }

  private async call<T>(what: string, run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (error) {
      const status = (error as { status?: unknown }).status;
      if (typeof status === 'number') throw new PacsError(status, what, this.url);
      throw new MeloError('PACS', `${what}: ${(error as Error).message ?? String(error)}`, {
        file: this.url,
      });
    }
  }

  /** QIDO-RS over instances, every page. */
  async searchInstances(query: InstanceQuery): Promise<InstanceRef[]> {
    const found: InstanceRef[] = [];
    for (let offset = 0; ; offset += PAGE) {
      const queryParams: Record<string, string> = {
        limit: String(PAGE),
        offset: String(offset),
        includefield: '00080060,00080016',
      };
      if (query.modality) queryParams.Modality = query.modality;
      if (query.since) queryParams.StudyDate = `${query.since}-`;
      const page = (await this.call('QIDO-RS search', () =>
        Promise.resolve(
          this.client.searchForInstances({
            ...(query.studyInstanceUid ? { studyInstanceUID: query.studyInstanceUid } : {}),
            ...(query.seriesInstanceUid ? { seriesInstanceUID: query.seriesInstanceUid } : {}),
            queryParams,
            request: this.request(),
          }),
        ),
      )) as DicomJson[] | undefined;
      const rows = Array.isArray(page) ? page : [];
      for (const row of rows) {
        const ref = instanceRef(row);
        if (ref) found.push(ref);
      }
      if (rows.length < PAGE) break;
    }
    return found;
  }

  /** WADO-RS: one instance as stored. */
  async retrieveInstance(ref: InstanceRef): Promise<Uint8Array> {
    const result = await this.call('WADO-RS retrieve', () =>
      this.client.retrieveInstance({
        studyInstanceUID: ref.studyInstanceUid,
        seriesInstanceUID: ref.seriesInstanceUid,
        sopInstanceUID: ref.sopInstanceUid,
        request: { instance: new StoredTransferSyntaxRequest() },
      } as unknown as Parameters<typeof this.client.retrieveInstance>[0]),
    );
    const buffer = (Array.isArray(result) ? result[0] : result) as ArrayBuffer | undefined;
    if (!(buffer instanceof ArrayBuffer) || buffer.byteLength === 0)
      throw new MeloError('PACS', 'WADO-RS retrieve: the PACS sent no instance', { file: this.url });
    return new Uint8Array(buffer);
  }

  /** STOW-RS: stores Part 10 instances in one request. */
  async store(instances: readonly Uint8Array[]): Promise<void> {
    const datasets = instances.map(
      (bytes) => bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer,
    );
    await this.call('STOW-RS store', () => this.client.storeInstances({ datasets, request: this.request() }));
  }
}

function instanceRef(row: DicomJson): InstanceRef | undefined {
  const value = (tag: string) => {
    const first = row[tag]?.Value?.[0];
    return typeof first === 'string' ? first : undefined;
  };
  const studyInstanceUid = value('0020000D');
  const seriesInstanceUid = value('0020000E');
  const sopInstanceUid = value('00080018');
  // UIDs from the PACS become URL parts: anything but a well-formed UID is ignored.
  if (!studyInstanceUid || !seriesInstanceUid || !sopInstanceUid) return undefined;
  if (![studyInstanceUid, seriesInstanceUid, sopInstanceUid].every(isValidUid)) return undefined;
  return {
    studyInstanceUid,
    seriesInstanceUid,
    sopInstanceUid,
    sopClassUid: value('00080016'),
    modality: value('00080060'),
  };
}
