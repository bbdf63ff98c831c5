import createError from '@fastify/error';

/**
 * Every error the server answers with on purpose, one row each (fastify's FST_ERR_* convention): the code
 * clients can branch on, the message (with %s placeholders) and the HTTP status. The root error handler
 * passes these through; anything else becomes a bare 500.
 */
export const ServeErrors = {
  unauthorized: createError('MELO_ERR_UNAUTHORIZED', 'a valid bearer token is required', 401),
  forbiddenHost: createError(
    'MELO_ERR_FORBIDDEN_HOST',
    'this server does not answer to that Host name (see --allowed-host)',
    403,
  ),
  crossOrigin: createError(
    'MELO_ERR_CROSS_ORIGIN',
    'cross-origin requests are refused: only the page this server serves may post to it',
    403,
  ),
  badTaskName: createError<'MELO_ERR_BAD_TASK_NAME', 400, [string]>(
    'MELO_ERR_BAD_TASK_NAME',
    "task name '%s' is not valid (letters, digits, '.', '_', '-')",
    400,
  ),
  unknownTask: createError<'MELO_ERR_UNKNOWN_TASK', 404, [string]>(
    'MELO_ERR_UNKNOWN_TASK',
    "no task named '%s' is loaded",
    404,
  ),
  noTasks: createError('MELO_ERR_NO_TASKS', 'no adapters are loaded', 503),
  noImage: createError<'MELO_ERR_NO_IMAGE', 400, [string]>('MELO_ERR_NO_IMAGE', 'no image: %s', 400),
  badMultipart: createError<'MELO_ERR_BAD_MULTIPART', 400, [string]>(
    'MELO_ERR_BAD_MULTIPART',
    'malformed multipart body (%s)',
    400,
  ),
  badImage: createError<'MELO_ERR_BAD_IMAGE', 400, [string]>('MELO_ERR_BAD_IMAGE', '%s', 400),
  unsupportedImage: createError<'MELO_ERR_UNSUPPORTED_IMAGE', 415, [string]>(
    'MELO_ERR_UNSUPPORTED_IMAGE',
    '%s',
    415,
  ),
  imageTooLarge: createError<'MELO_ERR_IMAGE_TOO_LARGE', 413, [string]>(
    'MELO_ERR_IMAGE_TOO_LARGE',
    '%s',
    413,
  ),
  queueFull: createError<'MELO_ERR_QUEUE_FULL', 503, [number]>(
    'MELO_ERR_QUEUE_FULL',
    'the server is busy (%s rows queued); retry later',
    503,
  ),
  timeout: createError<'MELO_ERR_TIMEOUT', 503, [number]>(
    'MELO_ERR_TIMEOUT',
    'the prediction did not finish within %s ms; retry later',
    503,
  ),
  /** Never seen by the client (it is gone); counted and logged. */
  clientClosed: createError('MELO_ERR_CLIENT_CLOSED', 'the client closed the connection', 499),
  shuttingDown: createError('MELO_ERR_SHUTTING_DOWN', 'the server is shutting down', 503),
  internal: createError('MELO_ERR_INTERNAL', 'internal server error', 500),
} as const;

/** Statuses that tell a client to come back: answered with a Retry-After header. */
export const RETRY_AFTER_SECONDS = 1;
