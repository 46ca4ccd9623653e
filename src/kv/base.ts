/**
 * The common skeleton of the policies (in the spirit of NVIDIA kvpress: every policy is a small class that
 * decides *what* to score and *when* to prune, the shared pieces do the rest): `BasePolicy` keeps the score
 * table aligned with the cache, times the policy, counts, persists and collects the step's prune plan;
 * `TopScoresPolicy` is the per-layer top-k rule H2O and TOVA share; `paramSchemas` the shared params.
 */
import { z } from "zod";
import type { ScoreRequest } from "../engine/backend.ts";
import type { SequenceKV } from "./cache.ts";
import type { PrunePlan } from "./kv_index.ts";
import type { KVPolicy, Phase, PolicyShape, PolicyState, PruneEvent, PruneStep } from "./contract.ts";
import { KeepSelector } from "./select.ts";
import { type RowAligned, ScoreTable } from "./score_table.ts";
import { budgetLimits, NO_LIMITS, type PolicyLimits } from "./limits.ts";

/** A budget param: ≤ 1 is a fraction of the context length, > 1 an absolute per-layer token count. */
export function resolveBudget(budget: number, contextLength: number): number {
  return budget <= 1 ? Math.max(1, Math.round(budget * contextLength)) : Math.floor(budget);
}

export type Params = Readonly<Record<string, number | boolean | string>>;

/**
 * The common skeleton: score bookkeeping aligned with the cache, timing, counters and persistence. A policy
 * says what scores it wants (`scoreRequest`), how its table's scores decay (`tableDecay`), and decides in
 * `prune` (calling `pruneLayer` for each layer that shrinks).
 */
export abstract class BasePolicy implements KVPolicy {
  abstract readonly name: string;
  readonly params: Params;
  readonly stats = { pruneRounds: 0, pruneMs: 0, evicted: 0 };
  protected readonly nLayers: number;
  protected readonly contextLength: number;
  protected readonly table: ScoreTable;
  /**
   * How the score table decays per appended row: `S = S·tableDecay^nNew + scores` (per layer when an array).
   * Usually the decay the policy asks the backend to use within a step (`ScoreRequest.decay`), but not
   * always: SnapKV's table holds only the latest step's votes (table decay 0) while it asks for the
   * undecayed sum over its observation window (request decay 1).
   */
  protected tableDecay: number | readonly number[] = 1;

  constructor(params: Params, shape: PolicyShape) {
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

  /** The plan being made in this step (null until a layer is pruned). */
  #plan: (Int32Array | null)[] | null = null;
  /** Per layer the buffer its keep lists are written to (a plan is consumed before the next afterStep). */
  #keep: Int32Array[] = [];

  afterStep(kv: SequenceKV, scores: Float32Array[] | undefined, nNew: number, phase: Phase): PruneStep {
    const t0 = performance.now();
    if (!Number.isInteger(nNew) || nNew < 0) throw new RangeError(`nNew must be a non-negative integer`);
    const wanted = this.scoreRequest(phase, nNew) !== undefined;
    if (wanted && !scores && nNew > 0) {
      throw new Error(`KV policy ${this.name} requested attention scores but the step reported none`);
    }
    const used = wanted ? scores : undefined;
    this.observe(used, nNew, phase);
    this.table.update(kv, used, nNew, this.tableDecay);
    const events: PruneEvent[] = [];
    this.#plan = null;
    this.prune(kv, phase, nNew, events);
    const plan: PrunePlan | null = this.#plan;
    this.#plan = null;
    const ms = performance.now() - t0;
    if (events.length > 0) this.stats.pruneRounds++;
    this.stats.pruneMs += ms;
    return { plan, pruneEvents: events, pruneMs: ms };
  }

  /**
   * Decide that `layer` keeps the rows `keep` (ascending indices into the layer as the cache holds it after
   * this step): the policy's own per-row state is compacted now, the cache by the backend when the plan
   * reaches it.
   */
  protected pruneLayer(kv: SequenceKV, layer: number, keep: Int32Array, events: PruneEvent[]): void {
    const before = kv.length(layer);
    if (keep.length === before) return;
    // selectors hand out views of buffers they reuse: the plan gets the layer's own copy
    if (!this.#keep[layer] || this.#keep[layer].length < keep.length) {
      this.#keep[layer] = new Int32Array(Math.max(16, 2 * keep.length));
    }
    const kept = this.#keep[layer].subarray(0, keep.length);
    kept.set(keep);
    for (const a of this.rowAligned()) a.compact(layer, kept);
    (this.#plan ??= new Array(this.nLayers).fill(null))[layer] = kept;
    this.stats.evicted += before - kept.length;
    events.push({ layer, before, after: kept.length });
  }

  /** No limits unless the policy says otherwise. */
  limits(): PolicyLimits {
    return { ...NO_LIMITS };
  }

  rewind(kv: SequenceKV, pos: number): void {
    for (let l = 0; l < this.nLayers; l++) {
      if (this.table.length(l) !== kv.length(l)) {
        throw new Error(
          `rewind: layer ${l} has a prune plan pending (the policy keeps ${
            this.table.length(l)
          } rows, the cache holds ${kv.length(l)}); settle it first`,
        );
      }
    }
    const plan = kv.rewind(pos);
    for (let l = 0; l < this.nLayers; l++) {
      const keep = plan[l];
      if (keep) { for (const a of this.rowAligned()) a.compact(l, keep); }
    }
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

  override limits(): PolicyLimits {
    return budgetLimits(
      this.budgetTokens,
      this.nLayers,
      "each layer keeps its budget: sinks, the recent window and the highest-scoring rows",
    );
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
