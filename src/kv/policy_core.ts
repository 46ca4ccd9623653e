/**
 * Shared machinery of the KV policies (in the spirit of NVIDIA kvpress: every policy is a small class that
 * decides *what* to score and *when* to prune; this module does the score bookkeeping, the selection of the
 * rows to keep and the compaction of the cache together with the policy's score arrays).
 *
 * Import the contract and the registry from `policy.ts`; it re-exports everything here.
 */
import { z } from "zod";
import type { ScoreRequest } from "../engine/backend.ts";
import type { SequenceKV } from "./cache.ts";
import type { KVPolicy, Phase, PolicyState, PruneEvent, StepKVStats } from "./policy.ts";

/** Per-layer per-token score arrays, kept aligned with the rows of a SequenceKV. */
export class ScoreTable {
  readonly nLayers: number;
  private buf: Float32Array[] = [];
  private len: Int32Array;

  constructor(nLayers: number) {
    this.nLayers = nLayers;
    this.len = new Int32Array(nLayers);
    for (let l = 0; l < nLayers; l++) this.buf.push(new Float32Array(16));
  }

  length(layer: number): number {
    return this.len[layer];
  }

  /** A view of the valid scores of `layer` (invalidated by append/compact). */
  get(layer: number): Float32Array {
    return this.buf[layer].subarray(0, this.len[layer]);
  }

  /** Append `n` zero scores to `layer`. */
  append(layer: number, n: number): void {
    const need = this.len[layer] + n;
    if (need > this.buf[layer].length) {
      let cap = Math.max(16, this.buf[layer].length);
      while (cap < need) cap *= 2;
      const next = new Float32Array(cap);
      next.set(this.get(layer));
      this.buf[layer] = next;
    }
    this.buf[layer].fill(0, this.len[layer], need);
    this.len[layer] = need;
  }

  /** Multiply the valid scores of `layer` by `factor`. */
  scale(layer: number, factor: number): void {
    if (factor === 1) return;
    const s = this.get(layer);
    for (let i = 0; i < s.length; i++) s[i] *= factor;
  }

  /** Add `scores` (same length as the layer) element-wise. */
  add(layer: number, scores: ArrayLike<number>): void {
    const s = this.get(layer);
    if (scores.length !== s.length) {
      throw new RangeError(
        `scores of layer ${layer} have length ${scores.length}, cache has ${s.length} rows`,
      );
    }
    for (let i = 0; i < s.length; i++) s[i] += scores[i];
  }

  /** Keep only the given (ascending) indices of `layer`, like SequenceKV.compact. */
  compact(layer: number, keep: Int32Array): void {
    compactRows(this.buf[layer], 0, keep);
    this.len[layer] = keep.length;
  }

  /** Replace the scores of `layer` with a copy of `values`. */
  set(layer: number, values: ArrayLike<number>): void {
    this.len[layer] = 0;
    this.append(layer, values.length);
    this.buf[layer].set(values as ArrayLike<number>);
  }

  /**
   * The step bookkeeping: after a step appended `nNew` rows to every layer of `kv`, decay the old scores by
   * `decay^nNew`, append zeros for the new rows and add the step's reported scores (when given):
   * `S = S·γ^nNew + scores`. Throws when the table and the cache disagree.
   */
  update(
    kv: SequenceKV,
    scores: Float32Array[] | undefined,
    nNew: number,
    decay: number | readonly number[],
  ): void {
    if (scores && scores.length !== this.nLayers) {
      throw new RangeError(`scores cover ${scores.length} layers, the policy has ${this.nLayers}`);
    }
    for (let l = 0; l < this.nLayers; l++) {
      const d = typeof decay === "number" ? decay : decay[l];
      const factor = nNew === 0 ? 1 : Math.pow(d, nNew);
      const rows = kv.length(l);
      if (rows !== this.len[l] + nNew) {
        throw new RangeError(
          `KV policy out of sync on layer ${l}: tracks ${this.len[l]} rows + ${nNew} new, cache has ${rows}`,
        );
      }
      this.scale(l, factor);
      this.append(l, nNew);
      if (scores) this.add(l, scores[l]);
    }
  }

  export(): Float32Array[] {
    const out: Float32Array[] = [];
    for (let l = 0; l < this.nLayers; l++) out.push(this.get(l).slice());
    return out;
  }
}

export interface KeepSpec {
  /** Leading tokens always kept (attention sinks). */
  sink: number;
  /** Most recent tokens always kept. */
  recent: number;
  /** Total tokens kept (sinks and recent included). */
  budget: number;
}

/** 0, 1, …, n-1. */
export function allIndices(n: number): Int32Array {
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = i;
  return out;
}

/**
 * The candidate indices in [from, to) sorted by score descending; ties go to the more recent (larger) index,
 * so the order is deterministic.
 */
export function rankByScore(scores: ArrayLike<number>, from: number, to: number): Int32Array {
  const idx = new Int32Array(Math.max(0, to - from));
  for (let i = 0; i < idx.length; i++) idx[i] = from + i;
  idx.sort((a, b) => {
    const d = scores[b] - scores[a];
    return d !== 0 ? d : b - a;
  });
  return idx;
}

/**
 * Which of `n` rows to keep: the first `sink` and the last `recent` rows always (as far as the budget
 * allows: sinks first), then the top-scoring middle rows fill the budget (ties: the more recent row, the
 * order of `rankByScore`). Returns ascending indices; all rows when `budget >= n`. A fresh array; the
 * policies use a `KeepSelector` (same result, no allocation).
 */
export function selectKeep(scores: ArrayLike<number>, n: number, spec: KeepSpec): Int32Array {
  return sharedSelector.select(scores, n, spec).slice();
}

/**
 * `a` ranks before `b` in `rankByScore` order: higher score first, ties to the larger (more recent) index.
 * A strict total order on distinct indices (for non-NaN scores).
 */
function ranksBefore(s: ArrayLike<number>, a: number, b: number): boolean {
  const x = s[a], y = s[b];
  return x > y || (x === y && a > b);
}

/**
 * Partial selection (nth_element): rearrange `idx[left..right]` (inclusive) so that `idx[k]` holds the
 * element of rank k in `rankByScore` order, those before it rank higher and those after it lower.
 * O(n) expected (median-of-three Lomuto quickselect; the order is total, so no equal-key degeneration).
 */
export function nthByScore(
  s: ArrayLike<number>,
  idx: Int32Array,
  left: number,
  right: number,
  k: number,
): void {
  while (right > left) {
    const mid = (left + right) >>> 1;
    let t: number;
    if (ranksBefore(s, idx[mid], idx[left])) (t = idx[mid], idx[mid] = idx[left], idx[left] = t);
    if (ranksBefore(s, idx[right], idx[left])) (t = idx[right], idx[right] = idx[left], idx[left] = t);
    if (ranksBefore(s, idx[mid], idx[right])) (t = idx[mid], idx[mid] = idx[right], idx[right] = t);
    // idx[right] is now the median of the three: the pivot
    const p = idx[right], sp = s[p];
    let store = left;
    for (let i = left; i < right; i++) {
      const a = idx[i], x = s[a];
      if (x > sp || (x === sp && a > p)) {
        idx[i] = idx[store];
        idx[store++] = a;
      }
    }
    idx[right] = idx[store];
    idx[store] = p;
    if (store === k) return;
    if (k < store) right = store - 1;
    else left = store + 1;
  }
}

/**
 * `selectKeep` without allocation: top-k by partial selection (O(n)) instead of a full sort, into
 * reusable buffers. The returned view is valid until the next `select` on this selector.
 */
export class KeepSelector {
  private idx = new Int32Array(64);
  private out = new Int32Array(64);

  private grow(n: number): void {
    if (this.out.length >= n) return;
    let cap = this.out.length;
    while (cap < n) cap *= 2;
    this.idx = new Int32Array(cap);
    this.out = new Int32Array(cap);
  }

  /** Exactly `selectKeep(scores, n, spec)`, as a view into this selector's buffer. */
  select(scores: ArrayLike<number>, n: number, spec: KeepSpec): Int32Array {
    this.grow(n);
    const out = this.out;
    const budget = Math.max(0, Math.floor(spec.budget));
    if (budget >= n) {
      for (let i = 0; i < n; i++) out[i] = i;
      return out.subarray(0, n);
    }
    const s = Math.min(Math.max(0, Math.floor(spec.sink)), budget);
    const r = Math.min(Math.max(0, Math.floor(spec.recent)), budget - s);
    const lo = s, hi = n - r; // the middle [lo, hi)
    const fill = budget - s - r;
    let j = 0;
    for (let i = 0; i < s; i++) out[j++] = i;
    if (fill >= hi - lo) {
      for (let i = lo; i < hi; i++) out[j++] = i;
    } else if (fill > 0) {
      const evict = hi - lo - fill;
      if (evict === 1) {
        // the lowest-ranked middle row goes: lowest score, ties to the older (smaller) index
        let worst = lo, ws = scores[lo];
        for (let i = lo + 1; i < hi; i++) {
          const x = scores[i];
          if (x < ws) (ws = x, worst = i);
        }
        for (let i = lo; i < hi; i++) if (i !== worst) out[j++] = i;
      } else {
        // the last kept row (rank fill-1) is the threshold: a middle row stays iff it ranks no lower
        const idx = this.idx;
        const m = hi - lo;
        for (let i = 0; i < m; i++) idx[i] = lo + i;
        nthByScore(scores, idx, 0, m - 1, fill - 1);
        const t = idx[fill - 1], ts = scores[t];
        for (let i = lo; i < hi; i++) {
          const x = scores[i];
          if (x > ts || (x === ts && i >= t)) out[j++] = i;
        }
      }
    }
    for (let i = Math.max(hi, s); i < n; i++) out[j++] = i;
    return out.subarray(0, j);
  }
}

const sharedSelector = new KeepSelector();

/** Ascending indices of the set entries of a mask. */
export function fromMask(mark: Uint8Array): Int32Array {
  let count = 0;
  for (let i = 0; i < mark.length; i++) count += mark[i];
  const out = new Int32Array(count);
  let j = 0;
  for (let i = 0; i < mark.length; i++) if (mark[i]) out[j++] = i;
  return out;
}

/**
 * The runs of consecutive kept rows that move, as (dst, src, length) triples into `runs` (grown when
 * needed; returned with the number of triples). The unchanged prefix is skipped.
 */
export function keepRuns(
  keep: Int32Array,
  runs: Int32Array<ArrayBuffer>,
): { runs: Int32Array<ArrayBuffer>; count: number } {
  const m = keep.length;
  let i = 0, c = 0;
  while (i < m && keep[i] === i) i++;
  while (i < m) {
    const src = keep[i];
    let e = i + 1;
    while (e < m && keep[e] === src + (e - i)) e++;
    if (3 * c + 3 > runs.length) {
      const next = new Int32Array(Math.max(24, 2 * runs.length));
      next.set(runs);
      runs = next;
    }
    runs[3 * c] = i;
    runs[3 * c + 1] = src;
    runs[3 * c + 2] = e - i;
    c++;
    i = e;
  }
  return { runs, count: c };
}

/** Apply `keepRuns` triples to the rows of `a` starting at `off` (a memmove per run). */
export function moveRuns(a: Float32Array, off: number, runs: Int32Array, count: number): void {
  for (let r = 0; r < count; r++) {
    const src = off + runs[3 * r + 1];
    a.copyWithin(off + runs[3 * r], src, src + runs[3 * r + 2]);
  }
}

let sharedRuns = new Int32Array(24);

/**
 * In-place `a[off + i] = a[off + keep[i]]` for ascending `keep`, moved run by run (copyWithin: a memmove
 * per run of consecutive kept rows; an eviction of a few rows is a few moves).
 */
export function compactRows(a: Float32Array, off: number, keep: Int32Array): void {
  const r = keepRuns(keep, sharedRuns);
  sharedRuns = r.runs;
  moveRuns(a, off, r.runs, r.count);
}

/** Anything that compacts like the cache (a ScoreTable, a policy's extra per-row state). */
export interface RowAligned {
  compact(layer: number, keep: Int32Array): void;
}

/**
 * Compact `layer` of the cache and of every score array of the policy with the same indices, so that the
 * scores stay aligned with the rows. Positions move with the rows (SequenceKV.compact keeps each row's
 * original position). Returns the number of evicted rows.
 */
export function compactLayer(
  kv: SequenceKV,
  layer: number,
  keep: Int32Array,
  scoreArrays: RowAligned[],
): number {
  const before = kv.length(layer);
  if (keep.length === before) return 0;
  kv.compact(layer, keep);
  for (const a of scoreArrays) a.compact(layer, keep);
  return before - keep.length;
}

/** Hoyer sparsity of a non-negative vector: 0 for a flat one, 1 for a one-hot one. */
export function hoyer(a: ArrayLike<number>): number {
  const n = a.length;
  if (n <= 1) return 1;
  let l1 = 0, l2 = 0;
  for (let i = 0; i < n; i++) {
    const x = Math.abs(a[i]);
    l1 += x;
    l2 += x * x;
  }
  if (l2 === 0) return 0;
  const sq = Math.sqrt(n);
  return Math.max(0, Math.min(1, (sq - l1 / Math.sqrt(l2)) / (sq - 1)));
}

/** Same-length max pooling with an odd `kernel` (SnapKV smooths its votes this way). */
export function maxPool(a: ArrayLike<number>, kernel: number): Float32Array {
  return maxPoolInto(a, a.length, kernel, new Float32Array(a.length));
}

/**
 * `maxPool` of the first `n` values of `a` into `out` (length ≥ n), computed for outputs [from, to) only
 * (reading `a` within `kernel / 2` of that range); returns `out.subarray(0, n)`.
 */
export function maxPoolInto(
  a: ArrayLike<number>,
  n: number,
  kernel: number,
  out: Float32Array,
  from = 0,
  to = n,
): Float32Array {
  const h = Math.max(0, Math.floor(kernel / 2));
  for (let i = from; i < to; i++) {
    let m = -Infinity;
    const lo = Math.max(0, i - h), hi = Math.min(n - 1, i + h);
    for (let j = lo; j <= hi; j++) if (a[j] > m) m = a[j];
    out[i] = m;
  }
  return out.subarray(0, n);
}

/** A budget param: ≤ 1 is a fraction of the context length, > 1 an absolute per-layer token count. */
export function resolveBudget(budget: number, contextLength: number): number {
  return budget <= 1 ? Math.max(1, Math.round(budget * contextLength)) : Math.floor(budget);
}

export type Params = Readonly<Record<string, number | boolean | string>>;

/**
 * The common skeleton: score bookkeeping aligned with the cache, timing, counters and persistence. A policy
 * says what scores it wants (`scoreRequest`), how old scores decay (`decay`), and prunes in `prune`.
 */
export abstract class BasePolicy implements KVPolicy {
  abstract readonly name: string;
  readonly params: Params;
  readonly stats = { pruneRounds: 0, pruneMs: 0, evicted: 0 };
  protected readonly nLayers: number;
  protected readonly contextLength: number;
  protected readonly table: ScoreTable;
  /** Per-step decay of the accumulated scores (matches the ScoreRequest's decay). */
  protected decay: number | readonly number[] = 1;

  constructor(params: Params, shape: { nLayers: number; contextLength: number }) {
    this.params = Object.freeze({ ...params });
    this.nLayers = shape.nLayers;
    this.contextLength = shape.contextLength;
    this.table = new ScoreTable(shape.nLayers);
  }

  abstract scoreRequest(phase: Phase, nNew: number): ScoreRequest | undefined;

  /** Decide and prune; call `this.pruneLayer` for each layer that shrinks. */
  protected abstract prune(kv: SequenceKV, phase: Phase, nNew: number, events: PruneEvent[]): void;

  /** Extra per-row state compacted along with the main score table. */
  protected rowAligned(): RowAligned[] {
    return [this.table];
  }

  /** Record the step (before the table update), e.g. to keep a ring of per-query scores. */
  protected observe(_scores: Float32Array[] | undefined, _nNew: number, _phase: Phase): void {}

  afterStep(kv: SequenceKV, scores: Float32Array[] | undefined, nNew: number, phase: Phase): StepKVStats {
    const t0 = performance.now();
    if (!Number.isInteger(nNew) || nNew < 0) throw new RangeError(`nNew must be a non-negative integer`);
    const wanted = this.scoreRequest(phase, nNew) !== undefined;
    if (wanted && !scores && nNew > 0) {
      throw new Error(`KV policy ${this.name} requested attention scores but the step reported none`);
    }
    const used = wanted ? scores : undefined;
    this.observe(used, nNew, phase);
    this.table.update(kv, used, nNew, this.decay);
    const events: PruneEvent[] = [];
    this.prune(kv, phase, nNew, events);
    const ms = performance.now() - t0;
    if (events.length > 0) this.stats.pruneRounds++;
    this.stats.pruneMs += ms;
    return { pruneEvents: events, pruneMs: ms };
  }

  protected pruneLayer(kv: SequenceKV, layer: number, keep: Int32Array, events: PruneEvent[]): void {
    const before = kv.length(layer);
    const evicted = compactLayer(kv, layer, keep, this.rowAligned());
    if (evicted > 0) {
      this.stats.evicted += evicted;
      events.push({ layer, before, after: keep.length });
    }
  }

  rewind(kv: SequenceKV, pos: number): void {
    if (!Number.isInteger(pos) || pos < 0 || pos > kv.nextPos) {
      throw new RangeError(`rewind: position ${pos} is outside [0, ${kv.nextPos}]`);
    }
    for (let l = 0; l < this.nLayers; l++) {
      // Rows keep ascending positions (appends count up, compaction preserves order).
      const p = kv.positions(l);
      let n = p.length;
      while (n > 0 && p[n - 1] >= pos) n--;
      compactLayer(kv, l, allIndices(n), this.rowAligned());
    }
    kv.nextPos = pos;
  }

  /** Policy-specific persistent state (JSON-serializable). */
  protected exportMeta(): Record<string, unknown> {
    return {};
  }

  protected importMeta(_meta: Record<string, unknown>, _kv: SequenceKV): void {}

  exportState(): PolicyState {
    return {
      scores: this.table.export(),
      meta: { policy: this.name, stats: { ...this.stats }, ...this.exportMeta() },
    };
  }

  importState(s: PolicyState, kv: SequenceKV): void {
    if (!s || !Array.isArray(s.scores) || typeof s.meta !== "object" || s.meta === null) {
      throw new Error("policy state: expected {scores: Float32Array[], meta: object}");
    }
    if (s.meta.policy !== undefined && s.meta.policy !== this.name) {
      throw new Error(`policy state is for policy "${String(s.meta.policy)}", not "${this.name}"`);
    }
    if (s.scores.length !== this.nLayers) {
      throw new Error(`policy state has ${s.scores.length} layers of scores, the model has ${this.nLayers}`);
    }
    for (let l = 0; l < this.nLayers; l++) {
      if (s.scores[l].length !== kv.length(l)) {
        throw new Error(
          `policy state layer ${l} has ${s.scores[l].length} scores, the cache holds ${kv.length(l)} rows`,
        );
      }
    }
    this.importMeta(s.meta, kv);
    for (let l = 0; l < this.nLayers; l++) this.table.set(l, s.scores[l]);
    const st = s.meta.stats as Record<string, unknown> | undefined;
    if (st && typeof st === "object") {
      for (const k of ["pruneRounds", "pruneMs", "evicted"] as const) {
        if (typeof st[k] === "number" && Number.isFinite(st[k])) this.stats[k] = st[k] as number;
      }
    }
  }
}

/** Param schemas shared by the policies. */
export const paramSchemas = {
  /** ≤ 1: fraction of the model's context length; > 1: average kept tokens per layer. */
  budget: (def: number) =>
    z.number({ error: "must be a number" }).positive("must be > 0 (≤ 1: fraction of context, > 1: tokens)")
      .default(def),
  sink: (def: number) => z.number().int("must be an integer").min(0, "must be ≥ 0").max(1024).default(def),
  fraction: (def: number) => z.number().min(0, "must be in [0, 1]").max(1, "must be in [0, 1]").default(def),
  count: (def: number, min = 1) =>
    z.number().int("must be an integer").min(min, `must be ≥ ${min}`).max(1 << 20).default(def),
};

/**
 * Keep, per layer, the `budget` best-scoring rows plus `sink` leading and `recent` newest ones, pruning a layer
 * as soon as it exceeds the budget (the decision: a linear scan for the one row to go in decode, partial
 * selection otherwise; `KeepSelector`). H2O and TOVA are this rule; they differ in how scores accumulate.
 */
export abstract class TopScoresPolicy extends BasePolicy {
  readonly budgetTokens: number;
  protected readonly sink: number;
  protected readonly recent: number;
  private readonly selector = new KeepSelector();

  constructor(
    p: Params & { budget: number; sink: number },
    shape: { nLayers: number; contextLength: number },
    recentOf: (budgetTokens: number) => number,
  ) {
    super(p, shape);
    this.budgetTokens = resolveBudget(p.budget, shape.contextLength);
    this.sink = p.sink;
    this.recent = recentOf(this.budgetTokens);
  }

  protected prune(kv: SequenceKV, _phase: Phase, _nNew: number, events: PruneEvent[]): void {
    const b = this.budgetTokens;
    for (let l = 0; l < this.nLayers; l++) {
      const n = kv.length(l);
      if (n <= b) continue;
      const keep = this.selector.select(this.table.get(l), n, {
        sink: this.sink,
        recent: this.recent,
        budget: b,
      });
      this.pruneLayer(kv, l, keep, events);
    }
  }
}
