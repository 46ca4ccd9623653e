/**
 * KV watch: what the KV cache of a session's running turn does, for read-only watchers
 * (`GET /v1/sessions/{id}/events`, the playground's live view).
 *
 * One-way: the decode loop hands each step's prune events to the turn's `TurnTrace` (inference.ts), which
 * records them for the session's timeline and, only while someone watches the session, buffers them; the
 * buffer goes out as one SSE event at most every `flushMs` (and at the end of the turn). Watchers never block
 * the decode loop: a watcher whose stream falls more than `maxQueuedBytes` behind is disconnected.
 *
 * Events (SSE `data:` lines of JSON, each with a `type`):
 *   watch       once, on connect: `{session, running}` (a turn is running now)
 *   turn.start  `{turn, history_tokens, prompt_tokens, cached_tokens, max_tokens, policy, rebuilt}`
 *   kv          `{turn, pos, generated, kept_per_layer, kv_bytes, prunes: [{pos, steps, layers: [[layer, before, after]…]}]}`
 *               a prune record stands for `steps` consecutive steps from position `pos` (pos, pos+1, …) that each
 *               pruned exactly these layers from `before` to `after` rows (a policy at its budget does this every step)
 *   turn.end    `{turn, finish_reason, usage, kv, record}` (record: the timeline entry stored with the turn)
 *   turn.error  `{turn, error: {message, code}}` (the turn was not saved)
 * Turns running on other instances of a multi-instance deployment are not seen here.
 */
import type { PruneEvent } from "../kv/contract.ts";
import type { Sequence } from "../engine/sequence.ts";
import type { TurnRecord } from "../session/bundle.ts";
import { rateLimited } from "./errors.ts";

export interface KvWatchOptions {
  /** Watchers per session (more get rate_limited `too_many_watchers`). */
  maxPerSession: number;
  /** Longest time prune events wait before they go out. */
  flushMs: number;
  /** A watcher further behind than this is disconnected. */
  maxQueuedBytes: number;
  /** SSE comment sent to idle watchers this often (keeps proxies from closing the stream). */
  keepAliveMs: number;
}

const DEFAULTS: KvWatchOptions = {
  maxPerSession: 8,
  flushMs: 50,
  maxQueuedBytes: 4 << 20,
  keepAliveMs: 15_000,
};

const encoder = new TextEncoder();

interface Watcher {
  ctrl: ReadableStreamDefaultController<Uint8Array>;
  close(): void;
}

/** A session's watchers and whether a turn runs on it here. */
class Channel {
  readonly watchers = new Set<Watcher>();
  running = false;

  get watched(): boolean {
    return this.watchers.size > 0;
  }

  send(event: Record<string, unknown>, maxQueued: number): void {
    const bytes = encoder.encode(`data: ${JSON.stringify(event)}\n\n`);
    for (const w of this.watchers) {
      try {
        if ((w.ctrl.desiredSize ?? 0) < -maxQueued) w.close(); // too slow: let it go, never hold the loop
        else w.ctrl.enqueue(bytes);
      } catch {
        w.close(); // its stream is gone
      }
    }
  }
}

export class KvWatch {
  readonly opts: KvWatchOptions;
  readonly #channels = new Map<string, Channel>();
  #closed = false;

  constructor(opts: Partial<KvWatchOptions> = {}) {
    this.opts = { ...DEFAULTS, ...opts };
  }

  #channel(id: string): Channel {
    let ch = this.#channels.get(id);
    if (!ch) this.#channels.set(id, ch = new Channel());
    return ch;
  }

  #release(id: string, ch: Channel): void {
    if (!ch.watched && !ch.running && this.#channels.get(id) === ch) this.#channels.delete(id);
  }

  /** Number of watchers of `id` (tests, metrics). */
  watchers(id: string): number {
    return this.#channels.get(id)?.watchers.size ?? 0;
  }

  /**
   * A new watcher's SSE byte stream of session `id` (the caller checked that the session is the caller's).
   * Ends when the watcher cancels it, is too slow, or the server shuts down.
   */
  subscribe(id: string): ReadableStream<Uint8Array> {
    const ch = this.#channel(id);
    if (this.#closed || ch.watchers.size >= this.opts.maxPerSession) {
      this.#release(id, ch);
      throw rateLimited(
        `Session '${id}' already has ${ch.watchers.size} watchers (the limit is ${this.opts.maxPerSession}).`,
        5,
        "too_many_watchers",
      );
    }
    let watcher!: Watcher;
    let timer: ReturnType<typeof setInterval> | undefined;
    const end = () => {
      clearInterval(timer);
      if (ch.watchers.delete(watcher)) this.#release(id, ch);
    };
    return new ReadableStream<Uint8Array>({
      start: (ctrl) => {
        watcher = {
          ctrl,
          close: () => {
            end();
            try {
              ctrl.close();
            } catch { /* already closed */ }
          },
        };
        ch.watchers.add(watcher);
        ctrl.enqueue(
          encoder.encode(`data: ${JSON.stringify({ type: "watch", session: id, running: ch.running })}\n\n`),
        );
        timer = setInterval(() => {
          try {
            ctrl.enqueue(encoder.encode(": keep-alive\n\n"));
          } catch {
            watcher.close();
          }
        }, this.opts.keepAliveMs);
      },
      cancel: end,
    }, new ByteLengthQueuingStrategy({ highWaterMark: 0 }));
  }

  /** The trace of a turn starting on session `id` (undefined: no session, nothing to watch or record). */
  trace(id: string | undefined, turn: number, seq: Sequence): TurnTrace {
    return new TurnTrace(id === undefined || this.#closed ? null : this.#channel(id), id, turn, seq, this);
  }

  /** @internal the end of a trace */
  done(id: string | undefined, ch: Channel | null): void {
    if (id === undefined || !ch) return;
    ch.running = false;
    this.#release(id, ch);
  }

  /** End every watcher's stream (shutdown: the listener waits for open responses). */
  close(): void {
    this.#closed = true;
    for (const ch of this.#channels.values()) for (const w of [...ch.watchers]) w.close();
    this.#channels.clear();
  }
}

/**
 * One turn as the decode loop reports it: its prune steps, recorded for the timeline (merged into spans of
 * consecutive steps) and, while watched, sent to the session's watchers.
 */
export class TurnTrace {
  readonly spans: [number, number][] = [];
  #pending: { pos: number; steps: number; layers: [number, number, number][] }[] = [];
  /** Set every `flushMs` by a timer while watched (no clock reads in the decode loop). */
  #due = false;
  #timer: ReturnType<typeof setInterval> | undefined;
  readonly #roundsAtStart: number;

  constructor(
    private readonly ch: Channel | null,
    private readonly id: string | undefined,
    readonly turn: number,
    private readonly seq: Sequence,
    private readonly watch: KvWatch,
  ) {
    this.#roundsAtStart = seq.policy.stats.pruneRounds;
    if (ch) ch.running = true;
  }

  /** Pruning rounds of this turn (the policy's counter carries on across a session's turns). */
  get rounds(): number {
    return this.seq.policy.stats.pruneRounds - this.#roundsAtStart;
  }

  #send(event: Record<string, unknown>): void {
    if (this.ch?.watched) this.ch.send({ ...event, turn: this.turn }, this.watch.opts.maxQueuedBytes);
  }

  start(info: Record<string, unknown>): void {
    this.#send({ type: "turn.start", ...info });
  }

  /** After each reported step (decode loop: keep it cheap). */
  step(pruned: PruneEvent[] | undefined): void {
    if (pruned) {
      const pos = this.seq.kv.nextPos;
      const last = this.spans[this.spans.length - 1];
      if (last && pos - last[1] <= 1) last[1] = pos;
      else if (this.spans.length < 256) this.spans.push([pos, pos]);
      else last[1] = pos; // very many separate rounds: the last span absorbs the rest
      if (this.ch?.watched) this.#buffer(pos, pruned);
    }
    if (this.ch?.watched) {
      this.#timer ??= setInterval(() => (this.#due = true), this.watch.opts.flushMs);
      if (this.#due) this.#flush();
    }
  }

  /** A prune step for the watchers: it extends the last record when it repeats it at the next position. */
  #buffer(pos: number, pruned: PruneEvent[]): void {
    const last = this.#pending[this.#pending.length - 1];
    if (last && last.pos + last.steps === pos && last.layers.length === pruned.length) {
      let same = true;
      for (let i = 0; i < pruned.length && same; i++) {
        const a = last.layers[i], e = pruned[i];
        same = a[0] === e.layer && a[1] === e.before && a[2] === e.after;
      }
      if (same) {
        last.steps++;
        return;
      }
    }
    this.#pending.push({ pos, steps: 1, layers: pruned.map((e) => [e.layer, e.before, e.after]) });
  }

  #flush(): void {
    this.#due = false;
    const kv = this.seq.kept(); // the policy's decisions; the plan stays on its path (the next step applies it)
    this.#send({
      type: "kv",
      pos: this.seq.kv.nextPos,
      generated: this.seq.generatedTokens,
      kept_per_layer: kv.keptPerLayer,
      kv_bytes: kv.kvBytes,
      prunes: this.#pending,
    });
    this.#pending = [];
  }

  /** The sequence finished (its cache still alive): the last buffered prune events go out. */
  settle(): void {
    clearInterval(this.#timer);
    if (this.ch?.watched) this.#flush();
  }

  /** The turn committed. */
  end(info: { finish_reason: string; usage: unknown; kv: unknown; record: TurnRecord | null }): void {
    clearInterval(this.#timer);
    this.#send({ type: "turn.end", ...info });
    this.watch.done(this.id, this.ch);
  }

  /** The turn failed or was cancelled (nothing was saved). */
  fail(e: unknown): void {
    clearInterval(this.#timer);
    const err = e as { message?: string; code?: string };
    this.#send({
      type: "turn.error",
      error: { message: String(err?.message ?? e), code: err?.code ?? null },
    });
    this.watch.done(this.id, this.ch);
  }
}
