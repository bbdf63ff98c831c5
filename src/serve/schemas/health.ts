import Type from 'typebox';

export const HealthResponse = Type.Object({
  status: Type.Literal('ok'),
  tasks: Type.Integer({ description: 'tasks loaded' }),
});

export const healthSchema = {
  summary: 'Liveness: the process answers (no token needed)',
  tags: ['health'],
  response: { 200: HealthResponse },
};

export const ReadyResponse = Type.Object({
  status: Type.Union([Type.Literal('ready'), Type.Literal('loading'), Type.Literal('not-ready')]),
  tasks: Type.Integer({ description: 'tasks served' }),
  loading: Type.Boolean({ description: 'adapters found at start are still loading' }),
});

export const readySchema = {
  summary:
    'Readiness: 200 once at least one task is served (the rest may still load), else 503 (no token needed)',
  tags: ['health'],
  response: { 200: ReadyResponse, 503: ReadyResponse },
};
