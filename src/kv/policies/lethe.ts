/**
 * Lethe: layer- and time-adaptive KV pruning.
 *
 * Scores (RASR, Recency-Aware Selective Retention): per layer, per cached row,
 * `S_l[j] = γ_l·S_l[j] + Σ_h A_h(q_t, j)`, accumulated attention with decay γ per query (a prefill reports
 * the decayed sum over all its queries, so a prefill equals the same tokens decoded one by one). The layer's
 * γ_l follows how far back its attention reaches (far_decay.ts: `farPower`, `farAge`; `farPower: 0` is the
 * paper's single γ); prefill steps ask the backend for γ (one decay per request).
 *
 * `mode: "adaptive"` (the paper's rule). Each layer has a trigger T_l (starting at `initialTrigger`); when
 * the layer holds more than T_l rows it is pruned (again and again while decoding: multi-round). The
 * middle rows (all but `sink` leading and the `recentRatio × length` newest) are sorted by score,
 * descending; walking the `segments` − 1 inner segment boundaries b, the first b with `S[0] / S[b] ≥ tau`
 * decides: the top b middle rows stay, with the sinks and the recent rows. No qualifying boundary means the
 * layer's attention is flat: it is left alone and T_l doubles (back-off); T_l also doubles when a prune keeps
 * T_l rows or more, so rounds stay spaced out.
 *
 * `mode: "fixed"`: at most `budget × nLayers` rows in all (budget.ts). `select: "global"` (default): once the
 * layers together exceed it by more than `slack` per layer, the lowest-scoring rows over all layers go
 * (sinks, each layer's newest `recentRatio × budget` rows and `minLayer` middle rows exempt) until the total
 * is met exactly. `select: "layer"` (the paper's split): the total is split in proportion to
 * `(1 − Hoyer(S_l))^densityPower` after a floor of `sink + minLayer`, each layer pruned back to its share when
 * it exceeds it by `slack`.
 *
 * Defaults: γ 0.9, τ 400, 16 segments, 4 sinks, recentRatio 0.5, trigger 128 (the paper's), slack 4,
 * minLayer 8, farPower 16, farAge 64. The measurements behind them, the variants tried and the figures:
 * bench-results/lethe.md.
 */
import { z } from "zod";
import type { ScoreRequest } from "../../engine/backend.ts";
import type { SequenceKV } from "../cache.ts";
import { BasePolicy, paramSchemas, resolveBudget } from "../base.ts";
import { GlobalSelector, splitBudget, uniformBudgets } from "../budget.ts";
import type { Phase, PolicyShape, PruneEvent } from "../contract.ts";
import { budgetLimits, type PolicyLimits } from "../limits.ts";
import { FarDecay } from "../far_decay.ts";
import { hoyer, KeepSelector, rankByScore } from "../select.ts";

export const schema = z.strictObject({
  mode: z.enum(["adaptive", "fixed"], { error: 'must be "adaptive" or "fixed"' }).default("adaptive"),
  gamma: z.number({ error: "must be a number in (0, 1]" }).gt(0, "must be in (0, 1]").max(
    1,
    "must be in (0, 1]",
  )
    .default(0.9),
  tau: z.number().gt(1, "must be > 1").default(400),
  segments: paramSchemas.count(16, 2),
  sink: paramSchemas.sink(4),
  recentRatio: paramSchemas.fraction(0.5),
  initialTrigger: paramSchemas.count(128, 1),
  budget: paramSchemas.budget(0.25),
  slack: paramSchemas.count(4, 0),
  densityPower: z.number().min(0, "must be ≥ 0").max(8, "must be ≤ 8").default(1),
  minLayer: paramSchemas.count(8, 0),
  select: z.enum(["layer", "global"], { error: 'must be "layer" or "global"' }).default("global"),
  farPower: z.number().min(0, "must be ≥ 0").max(64, "must be ≤ 64").default(16),
  farAge: paramSchemas.count(64, 1),
});
export type LetheParams = z.infer<typeof schema>;

/**
 * The breakpoint rule on a descending score list: the first inner segment boundary b (of `segments`
 * segments over `sorted.length`) with `sorted[0] / sorted[b] ≥ tau`, or -1 when the scores are flat.
 */
export function findBreakpoint(sorted: ArrayLike<number>, segments: number, tau: number): number {
  const m = sorted.length;
  if (m < 2 || !(sorted[0] > 0)) return -1;
  let prev = 0;
  for (let i = 1; i < segments; i++) {
    const b = Math.round((i * m) / segments);
    if (b <= prev || b >= m) continue;
    prev = b;
    const s = sorted[b];
    if (s <= 0 || sorted[0] / s >= tau) return b;
  }
  return -1;
}

export class LethePolicy extends BasePolicy {
  readonly name = "lethe";
  readonly budgetTokens: number;
  private readonly p: LetheParams;
  /** Per-layer triggers (adaptive mode). */
  readonly triggers: number[];
  /** Per-layer budgets of the last step (fixed mode). */
  layerBudgets: number[];
  /** The per-layer decays (their `gammas` are this policy's table decay). */
  readonly far: FarDecay;
  private pending: Float32Array[] | undefined;
  private readonly selector = new KeepSelector();
  private readonly global = new GlobalSelector();

  constructor(p: LetheParams, shape: PolicyShape) {
    super(p, shape);
    this.p = p;
    this.budgetTokens = resolveBudget(p.budget, shape.contextLength);
    this.triggers = new Array(shape.nLayers).fill(p.initialTrigger);
    this.layerBudgets = uniformBudgets(this.budgetTokens, shape.nLayers);
    this.far = new FarDecay(shape.nLayers, p);
    this.tableDecay = this.far.gammas;
  }

  /** Per-layer decay in use, and the layer's running share of attention on far rows (0 before any). */
  get gammas(): readonly number[] {
    return this.far.gammas;
  }
  farShare(layer: number): number {
    return this.far.share(layer);
  }

  override limits(): PolicyLimits {
    const total = this.budgetTokens * this.nLayers;
    if (this.p.mode === "adaptive") {
      return {
        kind: "trigger",
        per_layer: [...this.triggers],
        total: null,
        note:
          "a layer holding more rows than its trigger is pruned at its score breakpoint; the trigger doubles when a prune keeps that many or the scores are flat",
      };
    }
    if (this.p.select === "global") {
      return budgetLimits(
        this.budgetTokens,
        this.nLayers,
        "the total is kept over all layers together: the lowest-scoring rows of any layer go first",
        total,
      );
    }
    return budgetLimits(
      this.layerBudgets,
      this.nLayers,
      "the total is split across layers by attention density at each prune",
      total,
    );
  }

  protected override observe(scores: Float32Array[] | undefined, _nNew: number, _phase: Phase): void {
    this.pending = scores;
  }

  scoreRequest(_phase: Phase, nNew: number): ScoreRequest | undefined {
    return { decay: this.p.gamma, window: Math.max(1, nNew) };
  }

  protected prune(kv: SequenceKV, _phase: Phase, nNew: number, events: PruneEvent[]): void {
    if (this.p.farPower > 0 && this.pending && nNew === 1) this.far.track(kv, this.pending);
    this.pending = undefined;
    if (this.p.mode === "fixed") this.pruneFixed(kv, events);
    else this.pruneAdaptive(kv, events);
  }

  /** The layer densities used to split the fixed budget. */
  densities(kv: SequenceKV): number[] {
    const out: number[] = [];
    for (let l = 0; l < this.nLayers; l++) {
      const n = kv.length(l);
      const s = this.table.get(l).subarray(Math.min(n, this.p.sink));
      out.push(s.length > 1 ? Math.pow(Math.max(1e-6, 1 - hoyer(s)), this.p.densityPower) : 1);
    }
    return out;
  }

  private pruneFixed(kv: SequenceKV, events: PruneEvent[]): void {
    // within the total budget nothing needs to go (and the density split is not computed)
    const { sink, slack, minLayer, recentRatio } = this.p;
    const L = this.nLayers, total = this.budgetTokens * L;
    let sum = 0;
    for (let l = 0; l < L; l++) sum += kv.length(l);
    if (sum <= total) return;
    if (this.p.select === "global") {
      if (sum <= total + slack * L) return;
      const recent = Math.round(recentRatio * this.budgetTokens);
      const scores = Array.from({ length: L }, (_, l) => this.table.get(l));
      return this.global.select(scores, { total, sink, recent, minLayer }, (l, keep) => {
        this.layerBudgets[l] = keep.length;
        this.pruneLayer(kv, l, keep, events);
      });
    }
    this.layerBudgets = this.p.densityPower === 0
      ? uniformBudgets(this.budgetTokens, L)
      : splitBudget(total, this.densities(kv), sink + minLayer);
    for (let l = 0; l < L; l++) {
      const n = kv.length(l), b = this.layerBudgets[l];
      if (n <= b + slack) continue;
      const keep = this.selector.select(this.table.get(l), n, {
        sink,
        recent: Math.round(recentRatio * b),
        budget: b,
      });
      this.pruneLayer(kv, l, keep, events);
    }
  }

  private pruneAdaptive(kv: SequenceKV, events: PruneEvent[]): void {
    const { sink, recentRatio, segments, tau } = this.p;
    for (let l = 0; l < this.nLayers; l++) {
      const n = kv.length(l);
      if (n <= this.triggers[l]) continue;
      const s = Math.min(sink, n);
      const r = Math.min(Math.round(recentRatio * n), n - s);
      const scores = this.table.get(l);
      const ranked = rankByScore(scores, s, n - r);
      const b = findBreakpoint(Float32Array.from(ranked, (i) => scores[i]), segments, tau);
      if (b < 0) {
        this.triggers[l] *= 2; // flat: back off
        continue;
      }
      const keep = this.selector.select(scores, n, { sink: s, recent: r, budget: s + r + b });
      this.pruneLayer(kv, l, keep, events);
      if (keep.length >= this.triggers[l]) this.triggers[l] *= 2;
    }
  }

  protected override exportMeta(): Record<string, unknown> {
    return { triggers: [...this.triggers], layerBudgets: [...this.layerBudgets], far: this.far.export() };
  }

  protected override importMeta(meta: Record<string, unknown>): void {
    const t = meta.triggers, b = meta.layerBudgets;
    const ok = (a: unknown): a is number[] =>
      Array.isArray(a) && a.length === this.nLayers && a.every((x) => Number.isInteger(x) && x >= 0);
    if (!ok(t) || !ok(b)) {
      throw new Error(
        `policy state: lethe needs meta.triggers and meta.layerBudgets (${this.nLayers} integers)`,
      );
    }
    this.far.import(meta.far);
    for (let l = 0; l < this.nLayers; l++) {
      this.triggers[l] = t[l];
      this.layerBudgets[l] = b[l];
    }
  }
}

export function create(params: LetheParams, shape: PolicyShape): LethePolicy {
  return new LethePolicy(params, shape);
}
