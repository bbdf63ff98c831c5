import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { BatchObserver } from './engine/batcher.ts';
import type { ResidencyObserver } from './engine/engine.ts';

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const ROW_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128];

/**
 * The server's Prometheus metrics, in a registry of its own (not prom-client's global one), so that
 * several apps in one process (tests) never collide. Process metrics (RSS, heap, event loop lag) are
 * included under the `melo_` prefix.
 */
export class ServeMetrics implements BatchObserver, ResidencyObserver {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: 'melo_http_requests_total',
    help: 'HTTP requests answered, by route, method and status',
    labelNames: ['route', 'method', 'status'] as const,
    registers: [this.registry],
  });
  readonly latency = new Histogram({
    name: 'melo_http_request_duration_seconds',
    help: 'time from request to response, by route',
    labelNames: ['route'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly batchRows = new Histogram({
    name: 'melo_batch_rows',
    help: 'rows (image × task) per model call',
    buckets: ROW_BUCKETS,
    registers: [this.registry],
  });
  readonly batchTasks = new Histogram({
    name: 'melo_batch_tasks',
    help: 'distinct tasks per model call',
    buckets: ROW_BUCKETS,
    registers: [this.registry],
  });
  readonly batchSeconds = new Histogram({
    name: 'melo_batch_duration_seconds',
    help: 'time of one model call',
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly queueRows = new Gauge({
    name: 'melo_queue_rows',
    help: 'rows waiting for a batch',
    registers: [this.registry],
  });
  readonly adaptersLoaded = new Gauge({
    name: 'melo_adapters_loaded',
    help: 'tasks being served',
    registers: [this.registry],
  });
  readonly adapterErrors = new Gauge({
    name: 'melo_adapter_errors',
    help: 'adapter directories that failed to load',
    registers: [this.registry],
  });
  readonly stackBytes = new Gauge({
    name: 'melo_adapter_stack_bytes',
    help: 'bytes of the stacked adapter tensors (rows handed out)',
    registers: [this.registry],
  });
  readonly adaptersResident = new Gauge({
    name: 'melo_adapters_resident',
    help: 'tasks whose weights are in memory (at most --max-resident-adapters)',
    registers: [this.registry],
  });
  readonly adapterPageIn = new Histogram({
    name: 'melo_adapter_reload_duration_seconds',
    help: 'time to read an evicted (or not yet loaded) adapter from disk into the stack for a request',
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly adapterEvictions = new Counter({
    name: 'melo_adapter_evictions_total',
    help: 'adapters taken out of memory as least recently used beyond --max-resident-adapters',
    registers: [this.registry],
  });
  readonly rejected = new Counter({
    name: 'melo_rejected_total',
    help: 'predict requests refused before running, by reason',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'melo_' });
  }

  batchRun(rows: number, distinctTasks: number, seconds: number): void {
    this.batchRows.observe(rows);
    this.batchTasks.observe(distinctTasks);
    this.batchSeconds.observe(seconds);
  }

  queueDepth(rows: number): void {
    this.queueRows.set(rows);
  }

  adapterPagedIn(seconds: number): void {
    this.adapterPageIn.observe(seconds);
  }

  adapterEvicted(): void {
    this.adapterEvictions.inc();
  }

  residency(tasks: number, stackBytes: number): void {
    this.adaptersResident.set(tasks);
    this.stackBytes.set(stackBytes);
  }
}
