import type { IncomingMessage } from 'node:http';
import {
  getMultipartBoundary,
  MaxFileSizeExceededError,
  MultipartParseError,
  MultipartParser,
} from '@remix-run/multipart-parser';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { errorMessage } from '../../errors.ts';
import { type InstanceHeader, isValidUid, readInstanceHeader } from '../../pacs/instance.ts';
import { ServeErrors } from '../errors.ts';

export interface StowRouteOptions {
  /** Largest instance (one part); the request as a whole is streamed and not limited. */
  readonly bodyLimitBytes: number;
  /** Instances per request. */
  readonly maxParts?: number;
}

/** STOW-RS failure reasons (PS3.18 Table I.2-1 / PS3.4 C.4.2.1.4). */
const FAILURE = {
  processingFailure: 0x0110,
  cannotUnderstand: 0xc000,
  studyMismatch: 0xa900,
} as const;

interface Stored {
  readonly header: InstanceHeader;
}

interface Failed {
  readonly sopClassUid?: string;
  readonly sopInstanceUid?: string;
  readonly reason: number;
}

const ui = (value: string) => ({ vr: 'UI', Value: [value] });

/** The STOW-RS response: Referenced SOP Sequence (stored) and Failed SOP Sequence, as DICOM JSON. */
function stowResponse(stored: readonly Stored[], failed: readonly Failed[]): Record<string, unknown> {
  return {
    ...(failed.length > 0
      ? {
          '00081198': {
            vr: 'SQ',
            Value: failed.map((item) => ({
              ...(item.sopClassUid ? { '00081150': ui(item.sopClassUid) } : {}),
              ...(item.sopInstanceUid ? { '00081155': ui(item.sopInstanceUid) } : {}),
              '00081197': { vr: 'US', Value: [item.reason] },
            })),
          },
        }
      : {}),
    ...(stored.length > 0
      ? {
          '00081199': {
            vr: 'SQ',
            Value: stored.map(({ header }) => ({
              '00081150': ui(header.sopClassUid),
              '00081155': ui(header.sopInstanceUid),
            })),
          },
        }
      : {}),
  };
}

/**
 * POST /dicom-web/studies[/{study}]: STOW-RS (PS3.18 10.5) for `multipart/related; type="application/dicom"`.
 * Each part is checked (a DICOM instance with valid UIDs, in the named study when one is named) and put
 * into the outbox; the answer is sent once every accepted instance is on disk. 200: all stored; 202:
 * some failed; 409: none stored. Classification and SR delivery follow asynchronously (plugins/outbox.ts).
 */
const stowRoute: FastifyPluginAsync<StowRouteOptions> = async (app, options) => {
  // The body is streamed: each instance is parsed and put on disk as it arrives, so a study of any size
  // needs memory for one instance at a time (at most bodyLimitBytes).
  app.removeAllContentTypeParsers();
  app.addContentTypeParser(/^multipart\/related/i, (_request, payload, done) => done(null, payload));

  const handler = async (
    request: FastifyRequest<{ Params: { study?: string } }>,
    reply: FastifyReply,
  ): Promise<Record<string, unknown>> => {
    const contentType = request.headers['content-type'] ?? '';
    const type = /;\s*type="?([^";]+)"?/i.exec(contentType)?.[1]?.toLowerCase();
    if (type !== undefined && type !== 'application/dicom')
      throw new ServeErrors.unsupportedImage(
        `STOW-RS here takes multipart/related; type="application/dicom", not type="${type}"`,
      );
    const boundary = getMultipartBoundary(contentType);
    if (!boundary) throw new ServeErrors.badMultipart('the Content-Type has no boundary');
    const study = request.params.study;
    if (study !== undefined && !isValidUid(study))
      throw new ServeErrors.badMultipart(`'${study.slice(0, 70)}' is not a Study Instance UID`);
    const stored: Stored[] = [];
    const failed: Failed[] = [];
    const accept = async (bytes: Uint8Array) => {
      let header: InstanceHeader;
      try {
        // Errors here never quote the file: the part is named by its position only.
        header = readInstanceHeader(bytes, `part ${stored.length + failed.length + 1}`);
      } catch (error) {
        request.log.warn({ reason: errorMessage(error) }, 'STOW-RS part refused');
        failed.push({ reason: FAILURE.cannotUnderstand });
        return;
      }
      const ids = { sopClassUid: header.sopClassUid, sopInstanceUid: header.sopInstanceUid };
      if (study !== undefined && header.studyInstanceUid !== study) {
        failed.push({ ...ids, reason: FAILURE.studyMismatch });
        return;
      }
      try {
        await app.outbox.enqueue(bytes, header);
        stored.push({ header });
      } catch (error) {
        request.log.error(
          { sopInstanceUid: header.sopInstanceUid, reason: errorMessage(error) },
          'outbox write failed',
        );
        failed.push({ ...ids, reason: FAILURE.processingFailure });
      }
    };
    try {
      const parser = new MultipartParser(boundary, {
        maxParts: options.maxParts ?? 10_000,
        maxFileSize: options.bodyLimitBytes,
        maxTotalSize: Number.MAX_SAFE_INTEGER,
      });
      // RFC 2046 allows a preamble before the first boundary (dicomweb-client sends a CRLF there); the
      // parser expects the body to open with the boundary, so the preamble is dropped.
      const opening = Buffer.from(`--${boundary}`, 'latin1');
      let head: Buffer | undefined = Buffer.alloc(0);
      for await (const chunk of request.body as IncomingMessage) {
        let data = chunk as Buffer;
        if (head !== undefined) {
          head = Buffer.concat([head, data]);
          const at = head.indexOf(opening);
          if (at < 0) {
            if (head.length > 64 * 1024) throw new ServeErrors.badMultipart('no opening boundary');
            continue;
          }
          data = head.subarray(at);
          head = undefined;
        }
        for (const part of parser.write(data)) await accept(part.bytes);
      }
      parser.finish();
    } catch (error) {
      if (error instanceof MaxFileSizeExceededError)
        throw new ServeErrors.imageTooLarge(
          `an instance exceeds the limit of ${options.bodyLimitBytes} bytes`,
        );
      if (error instanceof MultipartParseError) throw new ServeErrors.badMultipart(error.message);
      throw error;
    }
    if (stored.length === 0 && failed.length === 0) throw new ServeErrors.badMultipart('no parts');
    request.log.info({ stored: stored.length, failed: failed.length }, 'STOW-RS received');
    reply.code(failed.length === 0 ? 200 : stored.length > 0 ? 202 : 409);
    reply.type('application/dicom+json');
    return stowResponse(stored, failed);
  };

  app.post('/dicom-web/studies', handler);
  app.post<{ Params: { study?: string } }>('/dicom-web/studies/:study', handler);
};

export default stowRoute;
