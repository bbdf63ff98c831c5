import fp from 'fastify-plugin';
import { imageLimits } from '../../imaging/limits.ts';
import { UploadDecoder } from '../engine/upload-decoder.ts';

declare module 'fastify' {
  interface FastifyInstance {
    uploads: UploadDecoder;
  }
}

export interface UploadsPluginOptions {
  /** Largest decoded image, width × height (also per DICOM frame). */
  readonly maxPixels: number;
  /** Upload decode threads (default: half the cores, 1 to 4). */
  readonly decodeThreads?: number;
}

/** The upload decode threads every image route shares (see UploadDecoder). */
export default fp<UploadsPluginOptions>(
  async (app, options) => {
    const uploads = new UploadDecoder(app.backbone, {
      limits: imageLimits({ maxPixels: options.maxPixels }),
      ...(options.decodeThreads ? { threads: options.decodeThreads } : {}),
    });
    app.decorate('uploads', uploads);
    app.addHook('onClose', async () => {
      await uploads.close();
    });
    await uploads.warm();
  },
  { name: 'melo-uploads', dependencies: ['melo-backbone'] },
);
