/** The server's JSON API as the page uses it (same origin; optional bearer token). */

export interface TaskInfo {
  readonly name: string;
  readonly labels: string[];
  readonly taskType: 'binary' | 'multiclass' | 'multilabel';
}

export interface TaskResult {
  readonly task: string;
  readonly labels: string[];
  readonly probabilities: number[];
  readonly prediction: string;
}

export interface Explanation extends TaskResult {
  readonly grid: [number, number];
  readonly heatmap: number[];
  readonly image: { readonly width: number; readonly height: number };
  /** The part of the picture the model saw, as fractions of it. */
  readonly region: {
    readonly x: number;
    readonly y: number;
    readonly width: number;
    readonly height: number;
  };
}

/** A failed request, with the server's one-line message and code when it sent one. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code?: string,
  ) {
    super(message);
  }
}

const TOKEN_KEY = 'melo.token';

export function storedToken(): string {
  return sessionStorage.getItem(TOKEN_KEY) ?? '';
}

export function storeToken(token: string): void {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** Types the server reads as a raw body; anything else goes as octet-stream and is judged by content. */
const SENDABLE = new Set(['image/png', 'image/jpeg', 'image/tiff', 'image/webp', 'application/dicom']);

function contentType(file: File): string {
  return SENDABLE.has(file.type) ? file.type : 'application/octet-stream';
}

async function call(path: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  const token = storedToken();
  if (token) headers.set('Authorization', `Bearer ${token}`);
  let response: Response;
  try {
    response = await fetch(path, { ...init, headers });
  } catch {
    throw new ApiError(0, 'The server cannot be reached.');
  }
  if (response.ok) return response;
  let message = `${response.status} ${response.statusText}`;
  let code: string | undefined;
  try {
    const body = (await response.json()) as { message?: string; code?: string };
    if (body.message) message = body.message;
    code = body.code;
  } catch {
    // Not JSON: keep the status line.
  }
  throw new ApiError(response.status, message, code);
}

function upload(file: File): RequestInit {
  return { method: 'POST', body: file, headers: { 'Content-Type': contentType(file) } };
}

export async function fetchTasks(): Promise<TaskInfo[]> {
  const body = (await (await call('/v1/tasks')).json()) as { tasks: TaskInfo[] };
  return body.tasks;
}

export async function predict(file: File, tasks: readonly string[]): Promise<TaskResult[]> {
  const query = new URLSearchParams({ tasks: tasks.join(',') });
  const body = (await (await call(`/v1/predict?${query}`, upload(file))).json()) as { results: TaskResult[] };
  return body.results;
}

export async function explain(file: File, task: string): Promise<Explanation> {
  const query = new URLSearchParams({ task });
  return (await (await call(`/v1/explain?${query}`, upload(file))).json()) as Explanation;
}

/** The server's PNG rendering of an image the browser cannot show itself (DICOM, TIFF). */
export async function preview(file: File): Promise<Blob> {
  return (await call('/v1/preview', upload(file))).blob();
}
