import {
  ApiError,
  type Explanation,
  explain,
  fetchTasks,
  predict,
  preview,
  storedToken,
  storeToken,
  type TaskInfo,
  type TaskResult,
} from './api.ts';
import { clearHeatmap, drawHeatmap, legendGradient } from './heatmap.ts';

function element<T extends HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`page: no element #${id}`);
  return found as T;
}

const ui = {
  status: element('server-status'),
  drop: element('drop'),
  fileInput: element<HTMLInputElement>('file'),
  figure: element('figure'),
  stage: element('stage'),
  image: element<HTMLImageElement>('image'),
  overlay: element<HTMLCanvasElement>('overlay'),
  fileInfo: element('file-info'),
  explainTask: element<HTMLSelectElement>('explain-task'),
  opacity: element<HTMLInputElement>('opacity'),
  legend: element('legend'),
  ramp: element('ramp'),
  explainNote: element('explain-note'),
  error: element('error'),
  auth: element('auth'),
  authMessage: element('auth-message'),
  authForm: element<HTMLFormElement>('auth-form'),
  token: element<HTMLInputElement>('token'),
  tasks: element('tasks'),
  tasksAll: element('tasks-all'),
  tasksNone: element('tasks-none'),
  busy: element('busy'),
  results: element('results'),
};

const state = {
  tasks: [] as TaskInfo[],
  selected: new Set<string>(),
  file: undefined as File | undefined,
  imageUrl: undefined as string | undefined,
  explanation: undefined as Explanation | undefined,
  /** Bumped for each new file: answers about an older one are dropped. */
  fileId: 0,
  /** Bumped for each classification request: only the latest one's answer is shown. */
  predictId: 0,
  /** A DICOM file was just opened: the server picks the tasks whose routing matches it (tasks=auto). */
  route: false,
};

const percent = new Intl.NumberFormat(undefined, {
  style: 'percent',
  minimumFractionDigits: 1,
  maximumFractionDigits: 1,
});

function showError(message: string | undefined): void {
  ui.error.textContent = message ?? '';
  ui.error.hidden = !message;
}

/** 401 opens the token form; anything else is shown as the page's error line. */
function handleFailure(error: unknown): void {
  if (error instanceof ApiError && error.status === 401) {
    ui.auth.hidden = false;
    ui.authMessage.textContent = storedToken()
      ? 'The token was not accepted. Enter a valid bearer token.'
      : 'This server needs a bearer token.';
    ui.status.textContent = 'Token required';
    ui.status.dataset.state = 'warn';
    ui.token.focus();
    return;
  }
  showError(error instanceof Error ? error.message : String(error));
}

// ----- tasks ----------------------------------------------------------------------------------------

async function loadTasks(): Promise<void> {
  try {
    state.tasks = await fetchTasks();
  } catch (error) {
    handleFailure(error);
    return;
  }
  ui.auth.hidden = true;
  state.selected = new Set(state.tasks.map((task) => task.name));
  const count = state.tasks.length;
  ui.status.textContent = count === 0 ? 'No tasks loaded' : `${count} task${count === 1 ? '' : 's'} loaded`;
  ui.status.dataset.state = count === 0 ? 'warn' : 'ok';
  renderTaskList();
  renderExplainChoices();
  if (state.file) void classify();
}

function renderTaskList(): void {
  ui.tasks.replaceChildren(
    ...state.tasks.map((task) => {
      const item = document.createElement('li');
      const label = document.createElement('label');
      const box = document.createElement('input');
      box.type = 'checkbox';
      box.value = task.name;
      box.checked = state.selected.has(task.name);
      box.addEventListener('change', () => {
        if (box.checked) state.selected.add(task.name);
        else state.selected.delete(task.name);
        void classify();
      });
      const name = document.createElement('span');
      name.className = 'task-name';
      name.textContent = task.name;
      const meta = document.createElement('span');
      meta.className = 'task-meta';
      meta.textContent = `${task.labels.length} labels · ${task.taskType}`;
      label.append(box, name, meta);
      item.append(label);
      return item;
    }),
  );
  if (state.tasks.length === 0) {
    const empty = document.createElement('li');
    empty.className = 'muted';
    empty.textContent = 'The server has no adapters loaded.';
    ui.tasks.append(empty);
  }
}

function setAllTasks(on: boolean): void {
  state.selected = new Set(on ? state.tasks.map((task) => task.name) : []);
  renderTaskList();
  void classify();
}

function renderExplainChoices(): void {
  const current = ui.explainTask.value;
  const none = new Option('None', '');
  ui.explainTask.replaceChildren(none, ...state.tasks.map((task) => new Option(task.name, task.name)));
  ui.explainTask.value = state.tasks.some((task) => task.name === current) ? current : '';
}

// ----- image ----------------------------------------------------------------------------------------

function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function setImageUrl(url: string): Promise<void> {
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.imageUrl = url;
  return new Promise((resolve, reject) => {
    ui.image.onload = () => resolve();
    ui.image.onerror = () => reject(new Error('not displayable'));
    ui.image.src = url;
  });
}

/** No image on the page: a failed upload leaves the drop area, not a broken-image icon over the viewer. */
function clearImage(): void {
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.imageUrl = undefined;
  ui.image.onload = null;
  ui.image.onerror = null;
  ui.image.removeAttribute('src');
  ui.stage.dataset.ready = 'false';
  ui.figure.hidden = true;
  ui.drop.hidden = false;
}

/** Shows the file: as is when the browser can decode it, else the server's PNG rendering (DICOM, TIFF). */
async function showImage(file: File, fileId: number): Promise<void> {
  try {
    try {
      await setImageUrl(URL.createObjectURL(file));
    } catch {
      const png = await preview(file);
      if (fileId !== state.fileId) return;
      await setImageUrl(URL.createObjectURL(png));
    }
  } catch (error) {
    if (fileId === state.fileId) clearImage();
    throw error;
  }
  if (fileId !== state.fileId) return;
  ui.fileInfo.textContent = `${file.name} · ${ui.image.naturalWidth} × ${ui.image.naturalHeight} · ${formatBytes(file.size)}`;
  ui.stage.dataset.ready = 'true';
  redrawHeatmap();
}

async function openFile(file: File): Promise<void> {
  state.file = file;
  const fileId = ++state.fileId;
  state.explanation = undefined;
  showError(undefined);
  clearHeatmap(ui.overlay);
  ui.stage.dataset.ready = 'false';
  ui.drop.hidden = true;
  ui.figure.hidden = false;
  ui.fileInfo.textContent = file.name;
  state.route = await isDicomFile(file);
  try {
    await Promise.all([showImage(file, fileId), classify(), updateExplanation()]);
  } catch (error) {
    if (fileId === state.fileId) handleFailure(error);
  }
}

// ----- predictions ----------------------------------------------------------------------------------

/** DICOM Part 10 files carry 'DICM' after a 128-byte preamble. */
async function isDicomFile(file: File): Promise<boolean> {
  return file.size >= 132 && (await file.slice(128, 132).text()) === 'DICM';
}

async function classify(): Promise<void> {
  const file = state.file;
  if (!file) return;
  const route = state.route;
  state.route = false;
  const tasks = route
    ? ['auto']
    : state.tasks.map((task) => task.name).filter((name) => state.selected.has(name));
  const predictId = ++state.predictId;
  if (tasks.length === 0) {
    ui.results.replaceChildren(emptyNote('Select at least one task.'));
    return;
  }
  ui.busy.hidden = false;
  ui.results.dataset.state = 'busy';
  try {
    const results = await predict(file, tasks);
    if (predictId !== state.predictId) return;
    if (route) {
      // The tasks the server routed this DICOM to become the selection (the user can still change it).
      state.selected = new Set(results.map((result) => result.task));
      renderTaskList();
    }
    renderResults(results);
    markExplained();
    ui.results.dataset.state = 'done';
  } catch (error) {
    if (predictId !== state.predictId) return;
    ui.results.replaceChildren(emptyNote('No results.'));
    ui.results.dataset.state = 'error';
    handleFailure(error);
  } finally {
    if (predictId === state.predictId) ui.busy.hidden = true;
  }
}

function emptyNote(text: string): HTMLElement {
  const note = document.createElement('p');
  note.className = 'muted empty';
  note.textContent = text;
  return note;
}

function predictedLabels(result: TaskResult): Set<string> {
  return new Set(result.prediction.split('|'));
}

function renderResults(results: readonly TaskResult[]): void {
  ui.results.replaceChildren(
    ...results.map((result) => {
      const multilabel = state.tasks.find((task) => task.name === result.task)?.taskType === 'multilabel';
      const card = document.createElement('article');
      card.className = 'result';
      card.dataset.task = result.task;
      card.dataset.prediction = result.prediction;

      const head = document.createElement('header');
      const name = document.createElement('h3');
      name.textContent = result.task;
      const verdict = document.createElement('span');
      verdict.className = 'verdict';
      verdict.textContent = result.prediction.split('|').join(', ');
      const attention = document.createElement('button');
      attention.type = 'button';
      attention.className = 'link';
      attention.textContent = 'Attention map';
      attention.title = `Show where the model looked for ${result.task}`;
      attention.addEventListener('click', () => {
        ui.explainTask.value = result.task;
        void updateExplanation();
      });
      head.append(name, verdict, attention);

      const list = document.createElement('ol');
      list.className = 'bars';
      const predicted = predictedLabels(result);
      result.labels.forEach((label, i) => {
        const p = result.probabilities[i]!;
        const row = document.createElement('li');
        row.dataset.label = label;
        row.dataset.probability = String(p);
        if (predicted.has(label)) row.classList.add('predicted');
        const text = document.createElement('span');
        text.className = 'label';
        text.textContent = label;
        const track = document.createElement('span');
        track.className = 'track';
        const fill = document.createElement('span');
        fill.className = 'fill';
        fill.style.width = `${(p * 100).toFixed(2)}%`;
        track.append(fill);
        const value = document.createElement('span');
        value.className = 'value';
        value.textContent = percent.format(p);
        row.append(text, track, value);
        list.append(row);
      });
      card.append(head, list);
      if (multilabel) {
        const note = document.createElement('p');
        note.className = 'muted small';
        note.textContent = 'Multi-label: each label is scored on its own; predicted at 50 % or more.';
        card.append(note);
      }
      return card;
    }),
  );
}

// ----- explanation ----------------------------------------------------------------------------------

async function updateExplanation(): Promise<void> {
  const task = ui.explainTask.value;
  const file = state.file;
  state.explanation = undefined;
  clearHeatmap(ui.overlay);
  markExplained();
  ui.overlay.dataset.state = 'empty';
  ui.legend.hidden = true;
  ui.explainNote.hidden = true;
  if (!task || !file) return;
  const fileId = state.fileId;
  ui.overlay.dataset.state = 'busy';
  try {
    const explanation = await explain(file, task);
    if (fileId !== state.fileId || ui.explainTask.value !== task) return;
    state.explanation = explanation;
    redrawHeatmap();
    ui.legend.hidden = false;
    ui.explainNote.hidden = false;
    ui.explainNote.textContent =
      `Attention rollout for ${task} (predicted: ${explanation.prediction.split('|').join(', ')}) on a ` +
      `${explanation.grid[0]} × ${explanation.grid[1]} patch grid. It shows where the model looked, not why.`;
  } catch (error) {
    if (fileId !== state.fileId || ui.explainTask.value !== task) return;
    ui.overlay.dataset.state = 'error';
    handleFailure(error);
  }
}

/** Fits the image into the stage (up or down, keeping its aspect); the overlay canvas follows its box. */
function fitImage(): void {
  const { naturalWidth: width, naturalHeight: height } = ui.image;
  if (!width || !height) return;
  const box = ui.stage.getBoundingClientRect();
  const scale = Math.min(box.width / width, box.height / height);
  ui.image.style.width = `${Math.max(1, Math.floor(width * scale))}px`;
  ui.image.style.height = `${Math.max(1, Math.floor(height * scale))}px`;
  // Small images (e.g. 28 px MedMNIST) blown up: show their pixels rather than a blur.
  ui.image.classList.toggle('pixelated', scale >= 3);
}

function redrawHeatmap(): void {
  if (!state.explanation || ui.stage.dataset.ready !== 'true') return;
  drawHeatmap(ui.overlay, state.explanation, Number(ui.opacity.value));
  ui.overlay.dataset.state = 'drawn';
  ui.overlay.dataset.task = state.explanation.task;
  markExplained();
}

/** Outlines the result card whose attention is on the image. */
function markExplained(): void {
  const task = state.explanation?.task;
  for (const card of ui.results.querySelectorAll<HTMLElement>('article.result'))
    card.classList.toggle('explained', card.dataset.task === task);
}

// ----- wiring ---------------------------------------------------------------------------------------

ui.ramp.style.background = legendGradient();

ui.fileInput.addEventListener('change', () => {
  const file = ui.fileInput.files?.[0];
  if (file) void openFile(file);
  ui.fileInput.value = '';
});

for (const target of [ui.drop, ui.figure]) {
  target.addEventListener('dragover', (event) => {
    event.preventDefault();
    ui.drop.classList.add('over');
  });
  target.addEventListener('dragleave', () => ui.drop.classList.remove('over'));
  target.addEventListener('drop', (event) => {
    event.preventDefault();
    ui.drop.classList.remove('over');
    const file = event.dataTransfer?.files[0];
    if (file) void openFile(file);
  });
}
ui.drop.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' || event.key === ' ') ui.fileInput.click();
});

ui.explainTask.addEventListener('change', () => void updateExplanation());
ui.opacity.addEventListener('input', redrawHeatmap);
ui.image.addEventListener('load', () => {
  fitImage();
  redrawHeatmap();
});
new ResizeObserver(() => {
  fitImage();
  redrawHeatmap();
}).observe(ui.stage);
ui.tasksAll.addEventListener('click', () => setAllTasks(true));
ui.tasksNone.addEventListener('click', () => setAllTasks(false));

ui.authForm.addEventListener('submit', (event) => {
  event.preventDefault();
  storeToken(ui.token.value.trim());
  ui.token.value = '';
  void loadTasks();
});

void loadTasks();
