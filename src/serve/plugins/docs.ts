import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import fp from 'fastify-plugin';
import { ErrorResponse } from '../schemas/common.ts';

/** OpenAPI document generated from the route schemas, browsable at /docs. */
export default fp(
  async (app) => {
    app.addSchema(ErrorResponse);
    await app.register(swagger, {
      openapi: {
        info: {
          title: 'melo serve',
          description: 'Multi-task medical image classification: one frozen ViT, one LoRA adapter per task.',
          version: '1',
        },
        components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      },
    });
    await app.register(swaggerUi, { routePrefix: '/docs' });
  },
  { name: 'melo-docs' },
);
