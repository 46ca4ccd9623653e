/**
 * Lethe: layer- and time-adaptive KV pruning.
 *
 * Scores (RASR, Recency-Aware Selective Retention): per layer, per cached row,
 * `S_l[j] = γ·S_l[j] + Σ_h A_h(q_t, j)`, accumulated attention with decay γ per query (a prefill reports
 * the decayed sum over all its queries, so a prefill equals the same tokens decoded one by one).
 *
 * `mode: "adaptive"` (the paper's rule). Each layer has a trigger T_l (starting at `initialTrigger`); when
 * the layer holds more than T_l rows it is pruned (again and again while decoding: multi-round). The
 * middle rows (all but `sink` leading and the `recentRatio × length` newest) are sorted by score,
 * descending; walking the `segments` − 1 inner segment boundaries b, the first b with `S[0] / S[b] ≥ tau`
 * decides: the top b middle rows stay, with the sinks and the recent rows. Sparse layers keep few rows,
 * dense layers many. No qualifying boundary means the layer's attention is flat: it is left alone and T_l
 * doubles (back-off); T_l also doubles when a prune keeps T_l rows or more, so rounds stay spaced out.
 *
 * `mode: "fixed"` (for comparison at equal memory). Paper-style split (`select: "layer"`): a total of
 * `budget × nLayers` rows is split across layers in proportion to `(1 − Hoyer(S_l))^densityPower` after a
 * floor of `sink + minLayer`, each layer pruned back to its share when it exceeds it by `slack`.
 *
 * OUR MEASURED IMPROVEMENTS (not in the paper; defaults):
 * 1. `select: "global"`: once the layers together exceed `budget × nLayers` by more than `slack` per layer,
 *    the lowest-scoring rows over ALL layers go (sinks, each layer's newest `recentRatio × budget` rows and
 *    `minLayer` middle rows per layer exempt) until the total is met exactly. Every query's attention sums
 *    to nHeads in every layer, so scores are comparable across layers; the split adapts every step with no
 *    regrowth loss, and the time-averaged total equals the baselines' (the paper-style split sat 2–3 rows
 *    lower on average because a layer whose share rises can only regrow one row per step).
 * 2. Per-layer decay from the far-attention share (`farPower`, `farAge`): per layer, an EMA (rate 0.99 per
 *    decode step) of the share m_l of the current query's attention (sinks excluded) on rows older than
 *    `farAge` tokens; the layer's decay is `γ_l = 1 − (1 − γ)·(1 − m_l)^farPower`. Local layers keep γ ≈ 0.9;
 *    a layer reaching far back (tinystories-656K layer 0: m ≈ 0.5 vs ≤ 0.13 for every stories260K layer)
 *    gets γ_l → 1 (H2O-like long memory). `farPower: 0` is the paper's single γ. Prefill steps use γ for the
 *    backend's decayed sum (the contract has one decay per request); m is measured on decode steps.
 * Tried and dropped (no gain on both models, `--max-seqs 12`, 25%): normalising scores by the decayed
 * number of queries a row has seen (656K 0.134 → 0.134, with far-γ 0.122 → 0.127), mixing the current
 * query's attention (0.5: 656K 0.138), max-pooling scores (k 3/7: 656K 0.129/0.128 but stories260K
 * 0.0009 → 0.0013), a second slow accumulator, and choosing γ per layer among {0.8…1} by next-query regret
 * (picks short memory: 656K 0.132). Per-KV-head selection needs per-head scores and per-head compaction
 * from the backend (not in the contract). Hand-set per-layer γ (0.99/0.9 on 656K: 0.105) showed the effect.
 *
 * Figures (decode-path KL(full‖policy), `deno task eval:kv --backend native --max-seqs 30 --gen-seqs 0
 * --policies lethe:select=layer:farPower=0,lethe:farPower=0,lethe`), budgets 256/128/64 of 512-token windows:
 *   stories260K   paper-style split 0.0002/0.0016/0.0251 (avg kept 188/109/59), + global 0.0001/0.0008/0.0177,
 *                 + far-γ (defaults) 0.0000/0.0008/0.0140 (avg kept 192/112/60 = the baselines').
 *   tinystories-656K  + global 0.0249/0.121/0.255, + far-γ (defaults) 0.0231/0.099/0.233 vs best baseline
 *                 H2O 0.0256/0.111/0.253 (bench-results/eval_kv.json: Lethe best on KL and top-1 at all 3 budgets
 *                 on both models).
 * The full comparison with every baseline: `deno task eval:kv --max-seqs 30 --json bench-results/eval_kv.json
 * --csv bench-results/eval_kv.csv` (committed results).
 *
 * Adaptive mode with τ = 50 (stories260K, 30 windows) prunes to 208 average (195 without far-γ) at KL ≈ 0,
 * but its peak is unbounded (399): use fixed mode where the peak must be reserved.
 *
 * Other defaults: γ = 0.9, recentRatio 0.5, slack 4 (time-averaged kept = the baselines' when the eval gives
 * `budget − slack/2`; the peak is slack/2 per layer higher), measured earlier with 8 windows; τ = 400, D = 16,
 * sink = 4 and trigger 128 follow the paper (adaptive mode; τ = 400 barely prunes these tiny models).
 */
import { z } from "zod";
import type { ScoreRequest } from "../../engine/backend.ts";
import type { SequenceKV } from "../cache.ts";
import {
  BasePolicy,
  hoyer,
  KeepSelector,
  nthByScore,
  paramSchemas,
  rankByScore,
  resolveBudget,
} from "../policy_core.ts";
import type { Phase, PolicyShape, PruneEvent } from "../policy.ts";

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

/** Split `total` rows across layers by weight, after a floor of `floor` each; integers, sum ≤ total. */
export function splitBudget(total: number, weights: number[], floor: number): number[] {
  const n = weights.length;
  const base = Math.min(floor, Math.floor(total / n));
  const rest = total - base * n;
  let sum = 0;
  for (const w of weights) sum += Math.max(0, w);
  return weights.map((w) => base + Math.floor(sum > 0 ? (rest * Math.max(0, w)) / sum : rest / n));
}

/** Running share of attention on far rows: EMA rate per decode step. */
const FAR_EMA = 0.99;

/** The layer's decay from its far-attention share m: `1 − (1 − γ)·(1 − m)^power` (power 0: γ itself). */
export function farGamma(gamma: number, farShare: number, power: number): number {
  const m = Math.min(1, Math.max(0, farShare));
  return 1 - (1 - gamma) * Math.pow(1 - m, power);
}

export class LethePolicy extends BasePolicy {
  readonly name = "lethe";
  readonly budgetTokens: number;
  private readonly p: LetheParams;
  /** Per-layer triggers (adaptive mode). */
  readonly triggers: number[];
  /** Per-layer budgets of the last step (fixed mode). */
  layerBudgets: number[];
  /** Per layer: EMA of the current query's attention share on rows older than `farAge`, and its weight. */
  private readonly farSum: number[];
  private readonly farWeight: number[];
  /** Per-layer decay in use (`farGamma` of the layer's far share). */
  readonly gammas: number[];
  private pending: Float32Array[] | undefined;
  private readonly selector = new KeepSelector();

  constructor(p: LetheParams, shape: PolicyShape) {
    super(p, shape);
    this.p = p;
    this.budgetTokens = resolveBudget(p.budget, shape.contextLength);
    this.triggers = new Array(shape.nLayers).fill(p.initialTrigger);
    this.layerBudgets = new Array(shape.nLayers).fill(this.budgetTokens);
    this.farSum = new Array(shape.nLayers).fill(0);
    this.farWeight = new Array(shape.nLayers).fill(0);
    this.gammas = new Array(shape.nLayers).fill(p.gamma);
    this.decay = this.gammas;
  }

  /** The layer's running share of attention on far rows (0 before any measurement). */
  farShare(layer: number): number {
    return this.farWeight[layer] > 0 ? this.farSum[layer] / this.farWeight[layer] : 0;
  }

  protected override observe(scores: Float32Array[] | undefined, _nNew: number, _phase: Phase): void {
    this.pending = scores;
  }

  /**
   * After a decode step: update each layer's far share from the current query's attention (sinks excluded;
   * rows older than `farAge` are far), then the layer's decay for the following steps.
   */
  private trackFar(kv: SequenceKV, scores: Float32Array[]): void {
    const { sink, farAge, farPower, gamma } = this.p;
    const now = kv.nextPos - 1;
    if (now <= farAge) return;
    for (let l = 0; l < this.nLayers; l++) {
      const pos = kv.positions(l);
      const a = scores[l];
      let tot = 0, far = 0;
      for (let j = Math.min(sink, pos.length); j < pos.length; j++) {
        tot += a[j];
        if (now - pos[j] > farAge) far += a[j];
      }
      if (tot > 0) {
        this.farSum[l] = FAR_EMA * this.farSum[l] + (1 - FAR_EMA) * (far / tot);
        this.farWeight[l] = FAR_EMA * this.farWeight[l] + (1 - FAR_EMA);
      }
      this.gammas[l] = farGamma(gamma, this.farShare(l), farPower);
    }
  }

  scoreRequest(_phase: Phase, nNew: number): ScoreRequest | undefined {
    return { decay: this.p.gamma, window: Math.max(1, nNew) };
  }

  protected prune(kv: SequenceKV, _phase: Phase, nNew: number, events: PruneEvent[]): void {
    if (this.p.farPower > 0 && this.pending && nNew === 1) this.trackFar(kv, this.pending);
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
    let sum = 0;
    for (let l = 0; l < this.nLayers; l++) sum += kv.length(l);
    if (sum <= this.budgetTokens * this.nLayers) return;
    if (this.p.select === "global") return this.pruneGlobal(kv, sum, events);
    this.layerBudgets = this.p.densityPower === 0
      ? new Array(this.nLayers).fill(this.budgetTokens)
      : splitBudget(this.budgetTokens * this.nLayers, this.densities(kv), this.p.sink + this.p.minLayer);
    for (let l = 0; l < this.nLayers; l++) {
      const n = kv.length(l);
      const b = this.layerBudgets[l];
      if (n <= b + this.p.slack) continue;
      const keep = this.selector.select(this.table.get(l), n, {
        sink: this.p.sink,
        recent: Math.round(this.p.recentRatio * b),
        budget: b,
      });
      this.pruneLayer(kv, l, keep, events);
    }
  }

  /**
   * Global selection: once the layers together exceed the total by more than `slack` per layer, evict the
   * lowest-scoring rows over all layers (sinks and each layer's newest `recentRatio × budget` rows exempt,
   * at least `minLayer` middle rows left per layer) until the total is met.
   */
  private pruneGlobal(kv: SequenceKV, sum: number, events: PruneEvent[]): void {
    const total = this.budgetTokens * this.nLayers;
    if (sum <= total + this.p.slack * this.nLayers) return;
    // The rule: walk all candidates (layer middles) by (score, row index, layer) ascending and evict each
    // whose layer still has spare middle rows (beyond minLayer) until the total is met. The same set,
    // without sorting: per layer only its `spare` lowest candidates can go (partial selection), and of
    // their union the `excess` lowest in the global order go (partial selection again).
    const L = this.nLayers;
    const recent = Math.round(this.p.recentRatio * this.budgetTokens);
    let maxN = 0;
    for (let l = 0; l < L; l++) maxN = Math.max(maxN, kv.length(l));
    const sc = this.scratch(maxN);
    const idx = sc.idx, flat = sc.flat, union = sc.union, lo = sc.lo, hi = sc.hi, lt = sc.lt, ls = sc.ls;
    let u = 0;
    for (let l = 0; l < L; l++) {
      const n = kv.length(l);
      const s = Math.min(this.p.sink, n);
      const r = Math.min(recent, n - s);
      lo[l] = s;
      hi[l] = n - r;
      const c = n - s - r;
      const spare = Math.max(0, c - this.p.minLayer);
      lt[l] = -1; // no layer threshold: every candidate of the layer is eligible
      if (spare === 0) {
        hi[l] = lo[l]; // nothing of this layer can go
        continue;
      }
      const scores = this.table.get(l);
      if (spare < c) {
        // eligible: the layer's `spare` lowest = ranks ≥ c − spare in rankByScore order (score desc, index desc)
        for (let i = 0; i < c; i++) idx[i] = s + i;
        nthByScore(scores, idx, 0, c - 1, c - spare);
        lt[l] = idx[c - spare];
        ls[l] = scores[lt[l]];
      }
      const t = lt[l], ts = ls[l];
      for (let j = s; j < n - r; j++) {
        const x = scores[j];
        if (t >= 0 && !(x < ts || (x === ts && j <= t))) continue;
        const k = j * L + l; // ascending k = ascending (row index, layer): the global tie order
        flat[k] = x;
        union[u++] = k;
      }
    }
    // of the union, the `excess` lowest go (all of it when it is smaller)
    const excess = sum - total;
    let gt = -1, gs = 0;
    if (u > excess) {
      nthByScore(flat, union, 0, u - 1, u - excess);
      gt = union[u - excess];
      gs = flat[gt];
    }
    for (let l = 0; l < L; l++) {
      const n = kv.length(l);
      const keep = sc.keep;
      let m = 0;
      const t = lt[l], ts = ls[l];
      const scores = this.table.get(l);
      for (let j = 0; j < n; j++) {
        if (j >= lo[l] && j < hi[l]) {
          const x = scores[j];
          const eligible = t < 0 || x < ts || (x === ts && j <= t);
          if (eligible) {
            const k = j * L + l;
            if (gt < 0 || x < gs || (x === gs && k <= gt)) continue; // evicted
          }
        }
        keep[m++] = j;
      }
      this.layerBudgets[l] = m;
      if (m < n) this.pruneLayer(kv, l, keep.subarray(0, m), events);
    }
  }

  private sc:
    | {
      maxN: number;
      idx: Int32Array;
      keep: Int32Array;
      flat: Float32Array;
      union: Int32Array;
      lo: Int32Array;
      hi: Int32Array;
      lt: Int32Array;
      ls: Float32Array;
    }
    | undefined;

  /** Reusable buffers for the global selection over layers of up to `maxN` rows. */
  private scratch(maxN: number) {
    if (!this.sc || this.sc.maxN < maxN) {
      let cap = Math.max(64, this.sc?.maxN ?? 0);
      while (cap < maxN) cap *= 2;
      const L = this.nLayers;
      this.sc = {
        maxN: cap,
        idx: new Int32Array(cap),
        keep: new Int32Array(cap),
        flat: new Float32Array(cap * L),
        union: new Int32Array(cap * L),
        lo: new Int32Array(L),
        hi: new Int32Array(L),
        lt: new Int32Array(L),
        ls: new Float32Array(L),
      };
    }
    return this.sc;
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
      const sorted = Float32Array.from(ranked, (i) => scores[i]);
      const b = findBreakpoint(sorted, segments, tau);
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
    return {
      triggers: [...this.triggers],
      layerBudgets: [...this.layerBudgets],
      far: { sum: [...this.farSum], weight: [...this.farWeight], gammas: [...this.gammas] },
    };
  }

  protected override importMeta(meta: Record<string, unknown>): void {
    const t = meta.triggers, b = meta.layerBudgets;
    const f = meta.far as Record<string, unknown> | undefined;
    const ok = (a: unknown): a is number[] =>
      Array.isArray(a) && a.length === this.nLayers && a.every((x) => Number.isInteger(x) && x >= 0);
    if (!ok(t) || !ok(b)) {
      throw new Error(
        `policy state: lethe needs meta.triggers and meta.layerBudgets (${this.nLayers} integers)`,
      );
    }
    const nums = (a: unknown, lo: number, hi: number): a is number[] =>
      Array.isArray(a) && a.length === this.nLayers &&
      a.every((x) => typeof x === "number" && Number.isFinite(x) && x >= lo && x <= hi);
    if (!f || typeof f !== "object" || !nums(f.sum, 0, 1) || !nums(f.weight, 0, 1) || !nums(f.gammas, 0, 1)) {
      throw new Error(
        `policy state: lethe needs meta.far {sum, weight, gammas} (${this.nLayers} numbers in [0, 1])`,
      );
    }
    for (let l = 0; l < this.nLayers; l++) {
      this.triggers[l] = t[l];
      this.layerBudgets[l] = b[l];
      this.farSum[l] = (f.sum as number[])[l];
      this.farWeight[l] = (f.weight as number[])[l];
      this.gammas[l] = (f.gammas as number[])[l];
    }
  }
}

export function create(params: LetheParams, shape: PolicyShape): LethePolicy {
  return new LethePolicy(params, shape);
}
