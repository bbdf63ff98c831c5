import Type from 'typebox';

export const HealthResponse = Type.Object({
  status: Type.Literal('ok'),
  tasks: Type.Integer({ description: 'tasks loaded' }),
});

export const healthSchema = {
  summary: 'Liveness: answers without a token',
  tags: ['health'],
  response: { 200: HealthResponse },
};
