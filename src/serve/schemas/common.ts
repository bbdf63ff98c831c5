import Type from 'typebox';

/** The error body every route answers with (fastify's own error shape, with melo's codes). */
export const ErrorResponse = Type.Object(
  {
    statusCode: Type.Integer(),
    code: Type.String({ description: 'MELO_ERR_* (see the error table), or FST_ERR_* from fastify' }),
    error: Type.String({ description: 'the HTTP status text' }),
    message: Type.String(),
  },
  { $id: 'ErrorResponse', description: 'what went wrong, in one line' },
);

/** Reference to the shared error schema, for each route's response table. */
export const errorRef = Type.Unsafe<{
  statusCode: number;
  code: string;
  error: string;
  message: string;
}>(Type.Ref('ErrorResponse'));
