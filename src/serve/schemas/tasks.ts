import Type from 'typebox';
import { errorRef } from './common.ts';

export const TaskDescription = Type.Object({
  name: Type.String(),
  labels: Type.Array(Type.String()),
  taskType: Type.Union([Type.Literal('binary'), Type.Literal('multiclass'), Type.Literal('multilabel')]),
  method: Type.Union([Type.Literal('lora'), Type.Literal('linear')]),
  rank: Type.Integer({ description: 'LoRA rank (0 for a linear probe)' }),
  targets: Type.Array(Type.String(), { description: 'adapted projections' }),
  bytes: Type.Integer({ description: 'bytes of the float32 LoRA factors and head held in memory' }),
  adapter: Type.String({ description: 'directory under the adapters root' }),
  routing: Type.Optional(
    Type.Object(
      {
        modalities: Type.Optional(Type.Array(Type.String())),
        bodyParts: Type.Optional(Type.Array(Type.String())),
      },
      { description: 'DICOM images the task applies to (absent: every image)' },
    ),
  ),
});

export const AdapterProblemDescription = Type.Object({
  adapter: Type.String({ description: 'directory under the adapters root' }),
  message: Type.String(),
  servingPrevious: Type.Boolean({ description: 'whether its last good version is still served' }),
});

export const TasksResponse = Type.Object({
  tasks: Type.Array(TaskDescription),
  errors: Type.Array(AdapterProblemDescription, {
    description: 'adapter directories that could not be loaded',
  }),
});

export const tasksSchema = {
  summary: 'The loaded tasks, and the adapters that failed to load',
  tags: ['tasks'],
  response: { 200: TasksResponse, 401: errorRef, 403: errorRef },
  security: [{ bearer: [] }],
};
