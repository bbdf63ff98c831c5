import { createRequire } from 'node:module';

/**
 * Loading and running the Emscripten-built cornerstone codecs safely. These modules print to the
 * console, set `process.exitCode` when the C library calls exit(), and are left unusable after an
 * abort; so output is captured for error messages, the exit code is restored, and a module that threw
 * is dropped and instantiated again on next use.
 */
export interface CodecFrameInfo {
  readonly width: number;
  readonly height: number;
  readonly bitsPerSample: number;
  readonly componentCount: number;
  readonly isSigned: boolean;
}

/** The embind decoder classes share this shape (JPEGDecoder, J2KDecoder, JpegLSDecoder). */
export interface EmbindDecoder {
  getEncodedBuffer(length: number): Uint8Array;
  getDecodedBuffer(): Uint8Array;
  decode(): void;
  getFrameInfo(): CodecFrameInfo;
  delete(): void;
}

interface ModuleOptions {
  print: (text: string) => void;
  printErr: (text: string) => void;
}

type ModuleFactory<M> = (options: ModuleOptions) => Promise<M>;

const require = createRequire(import.meta.url);

export class CodecFailure extends Error {}

export class WasmCodec<M> {
  private module: Promise<M> | undefined;
  private messages: string[] = [];

  constructor(
    readonly name: string,
    private readonly specifier: string,
  ) {}

  /** Runs `work` against the module; any throw becomes a CodecFailure carrying the codec's own words. */
  async run<T>(work: (module: M) => T): Promise<T> {
    const module = await this.load();
    this.messages = [];
    const exitCode = process.exitCode;
    try {
      return work(module);
    } catch (error) {
      this.module = undefined;
      throw new CodecFailure(this.describe(error));
    } finally {
      process.exitCode = exitCode;
    }
  }

  private load(): Promise<M> {
    if (this.module === undefined) {
      const factory = require(this.specifier) as ModuleFactory<M>;
      const record = (text: string) => {
        if (this.messages.length < 20) this.messages.push(String(text));
      };
      this.module = factory({ print: record, printErr: record });
      this.module.catch(() => {
        this.module = undefined;
      });
    }
    return this.module;
  }

  private describe(error: unknown): string {
    const own = error instanceof Error ? error.message : typeof error === 'string' ? error : '';
    const printed = this.messages
      .map((line) => line.trim())
      .filter((line) => line !== '' && !/^(Warning|\[INFO\]|\[WARNING\])/.test(line))
      .join('; ');
    const text = [printed, own].filter((part) => part !== '').join('; ') || 'the codec rejected the data';
    return text.replace(/\s+/g, ' ').slice(0, 240);
  }
}

/** Copies `encoded` into the decoder, decodes, and copies the frame out before the decoder is freed. */
export function runEmbindDecoder(
  decoder: EmbindDecoder,
  encoded: Uint8Array,
): { info: CodecFrameInfo; decoded: Uint8Array } {
  try {
    decoder.getEncodedBuffer(encoded.length).set(encoded);
    decoder.decode();
    const info = { ...decoder.getFrameInfo() };
    return { info, decoded: decoder.getDecodedBuffer().slice() };
  } finally {
    decoder.delete();
  }
}
