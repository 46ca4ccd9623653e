/**
 * Continuous batching. Sequences join and leave the running batch between steps; every step calls
 * `backend.forward()` once with the `nextInput()` of every active sequence, so the weights are read once per
 * step for the whole batch. Prompt prefill is chunked and capped per step (`maxPrefillPerStep`): a long
 * prompt advances a chunk at a time while the other sequences keep decoding one token per step.
 *
 * Admission is bounded: at most `maxBatch` sequences run, at most `maxQueue` wait; beyond that `submit`
 * throws `QueueFullError` (HTTP 429 with Retry-After). A job's AbortSignal (client disconnect) or its
 * deadline (request timeout) cancels its sequence at the next step boundary.
 */
import { setImmediate } from "node:timers";
import type { Backend, StepInput, StepOutput } from "./backend.ts";
import type { Sequence } from "./sequence.ts";
import type { PruneEvent } from "../kv/contract.ts";

export interface SchedulerOptions {
  maxBatch: number;
  maxQueue: number;
  /** Cap on prompt tokens processed per step over the whole batch (at least one chunk always runs). */
  maxPrefillPerStep: number;
}

export interface SchedulerHooks {
  /** After each forward step: its wall time and batch size. */
  onStep?(seconds: number, batch: number, prefillTokens: number): void;
  /** Queue depth / active count changed. */
  onLoad?(queued: number, active: number): void;
}

export interface TokenEvent {
  token: number | null;
  text: string;
  /** The layers the KV policy pruned in this step, if any. */
  pruned?: PruneEvent[];
}

export interface JobOptions {
  /** Cancels the sequence (client disconnect). */
  signal?: AbortSignal;
  /** Absolute `performance.now()` deadline; past it the sequence is cancelled and the job is `timedOut`. */
  deadline?: number;
  /** Called with each accepted step that produced a token or text, or pruned the KV cache. */
  onToken?: (ev: TokenEvent) => void;
}

export interface JobResult {
  finishReason: "stop" | "length" | "cancelled";
  timedOut: boolean;
  /** `performance.now()` when the first token was sampled (undefined if none). */
  firstTokenAt?: number;
}

export class QueueFullError extends Error {
  constructor(readonly retryAfterSec: number) {
    super("The server is busy: the request queue is full.");
    this.name = "QueueFullError";
  }
}

export class SchedulerClosedError extends Error {
  constructor() {
    super("The scheduler is shutting down.");
    this.name = "SchedulerClosedError";
  }
}

interface Job {
  seq: Sequence;
  opts: JobOptions;
  resolve(r: JobResult): void;
  reject(e: unknown): void;
  timedOut: boolean;
  firstTokenAt?: number;
}

export class Scheduler {
  readonly #queue: Job[] = [];
  readonly #active: Job[] = [];
  #running = false;
  #closed = false;
  #rr = 0;
  #idleWaiters: (() => void)[] = [];
  /** Exponential moving average of one sequence's time in the batch (ms), for Retry-After. */
  #avgJobMs = 1000;

  constructor(
    readonly backend: Backend,
    readonly opts: SchedulerOptions,
    readonly hooks: SchedulerHooks = {},
  ) {}

  get queued(): number {
    return this.#queue.length;
  }

  get active(): number {
    return this.#active.length;
  }

  /** KV bytes held by the running sequences. */
  kvBytes(): number {
    let b = 0;
    for (const j of this.#active) b += j.seq.kv.bytes();
    return b;
  }

  /** Enqueue a sequence; resolves when it finishes (or is cancelled). Throws QueueFullError when full. */
  submit(seq: Sequence, opts: JobOptions = {}): Promise<JobResult> {
    if (this.#closed) throw new SchedulerClosedError();
    const waiting = this.#queue.length + Math.max(0, this.#active.length - this.opts.maxBatch + 1);
    if (this.#active.length >= this.opts.maxBatch && this.#queue.length >= this.opts.maxQueue) {
      const perSlot = this.#avgJobMs / Math.max(1, this.opts.maxBatch);
      throw new QueueFullError(Math.max(1, (waiting * perSlot) / 1000));
    }
    return new Promise<JobResult>((resolve, reject) => {
      this.#queue.push({ seq, opts, resolve, reject, timedOut: false });
      this.#load();
      if (!this.#running) void this.#loop();
    });
  }

  /** Stop admitting new jobs (running and queued ones continue). */
  close(): void {
    this.#closed = true;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Resolves once nothing is queued or running. */
  idle(): Promise<void> {
    if (this.#queue.length === 0 && this.#active.length === 0) return Promise.resolve();
    return new Promise((r) => this.#idleWaiters.push(r));
  }

  /** Cancel every queued and running sequence (shutdown past its deadline). */
  cancelAll(): void {
    for (const j of [...this.#queue, ...this.#active]) j.seq.cancel();
  }

  #load(): void {
    this.hooks.onLoad?.(this.#queue.length, this.#active.length);
  }

  #finish(job: Job, i: number): void {
    this.#active.splice(i, 1);
    const reason = job.seq.finishReason ?? "cancelled";
    job.resolve({ finishReason: reason, timedOut: job.timedOut, firstTokenAt: job.firstTokenAt });
  }

  async #loop(): Promise<void> {
    this.#running = true;
    try {
      while (this.#queue.length > 0 || this.#active.length > 0) {
        // Admit waiting jobs into the batch.
        while (this.#active.length < this.opts.maxBatch && this.#queue.length > 0) {
          const j = this.#queue.shift()!;
          (j as Job & { admittedAt?: number }).admittedAt = performance.now();
          this.#active.push(j);
        }
        // Cancellations and finished sequences leave between steps.
        const now = performance.now();
        for (let i = this.#active.length - 1; i >= 0; i--) {
          const j = this.#active[i];
          if (!j.seq.finished) {
            if (j.opts.signal?.aborted) j.seq.cancel();
            else if (j.opts.deadline !== undefined && now > j.opts.deadline) {
              j.timedOut = true;
              j.seq.cancel();
            }
          }
          if (j.seq.finished) this.#retire(j, i);
        }
        this.#load();
        if (this.#active.length === 0) continue;

        // Build the step: decodes always run; prompt chunks share the per-step prefill budget.
        const batch: StepInput[] = [];
        const jobs: Job[] = [];
        let prefill = 0;
        const n = this.#active.length;
        const start = this.#rr++ % n;
        for (let k = 0; k < n; k++) {
          const j = this.#active[(start + k) % n];
          const input = j.seq.nextInput();
          const t = input.tokens.length;
          if (t > 1) {
            if (prefill > 0 && prefill + t > this.opts.maxPrefillPerStep) continue;
            prefill += t;
          }
          batch.push(input);
          jobs.push(j);
        }
        const t0 = performance.now();
        let outs: StepOutput[];
        try {
          outs = await this.backend.forward(batch);
        } catch (e) {
          for (const j of jobs) {
            const i = this.#active.indexOf(j);
            if (i >= 0) this.#active.splice(i, 1);
            j.seq.cancel();
            j.reject(e);
          }
          continue;
        }
        const dt = (performance.now() - t0) / 1000;
        this.hooks.onStep?.(dt, batch.length, prefill);
        for (let b = 0; b < jobs.length; b++) {
          const j = jobs[b];
          let r;
          try {
            r = j.seq.accept(outs[b]);
          } catch (e) {
            const i = this.#active.indexOf(j);
            if (i >= 0) this.#active.splice(i, 1);
            j.seq.cancel();
            j.reject(e);
            continue;
          }
          if (r.token !== null && j.firstTokenAt === undefined) j.firstTokenAt = performance.now();
          if ((r.token !== null || r.text || r.pruned) && j.opts.onToken) {
            try {
              j.opts.onToken({ token: r.token, text: r.text, pruned: r.pruned });
            } catch {
              j.seq.cancel(); // a broken consumer (closed stream) cancels its own sequence
            }
          }
          if (j.seq.finished) {
            const i = this.#active.indexOf(j);
            if (i >= 0) this.#retire(j, i);
          }
        }
        // Let the event loop run (HTTP I/O, new arrivals, aborts) between steps. setImmediate, not
        // setTimeout(0): nested timers are clamped to ≥ 4 ms, which capped a single stream at ~400 tok/s.
        await new Promise<void>((r) => setImmediate(r));
      }
    } finally {
      this.#running = false;
      this.#load();
      const w = this.#idleWaiters;
      this.#idleWaiters = [];
      for (const r of w) r();
    }
  }

  #retire(j: Job, i: number): void {
    const admitted = (j as Job & { admittedAt?: number }).admittedAt;
    if (admitted !== undefined) this.#avgJobMs = 0.9 * this.#avgJobMs + 0.1 * (performance.now() - admitted);
    this.#finish(j, i);
  }
}
