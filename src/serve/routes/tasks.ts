import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { forClient } from '../client-text.ts';
import { tasksSchema } from '../schemas/tasks.ts';

/** GET /v1/tasks: what can be asked for, and which adapter directories failed and why. */
const tasksRoute: FastifyPluginAsyncTypebox = async (app) => {
  // Messages name files relative to the adapters root and never the server's directories.
  const roots = { 'the backbone': app.backbone.dir, 'the adapters directory': app.registry.dir };
  app.get('/v1/tasks', { schema: tasksSchema }, async () => ({
    tasks: app.engine.tasks().map((task) => ({
      name: task.name,
      labels: [...task.labels],
      taskType: task.taskType,
      method: task.method,
      rank: task.rank,
      targets: [...task.targets],
      bytes: task.bytes,
      adapter: task.adapter,
      ...(task.routing
        ? {
            routing: {
              ...(task.routing.modalities ? { modalities: [...task.routing.modalities] } : {}),
              ...(task.routing.bodyParts ? { bodyParts: [...task.routing.bodyParts] } : {}),
            },
          }
        : {}),
    })),
    errors: app.registry.problems().map((problem) => ({
      ...problem,
      message: forClient(problem.message, roots),
    })),
  }));
};

export default tasksRoute;
