/**
 * Cross-layer budgeting: how many rows each layer keeps when that is decided for the layers together — the
 * piece kvpress factors into wrapper presses (PerLayerCompressionPress, AdaKVPress) around a scorer. A policy
 * scores rows; one of these splits the budget:
 * - fixed per-layer budgets: `uniformBudgets` (every layer the same), `pyramidBudgets` (PyramidKV);
 * - a total split by per-layer weights: `splitBudget` (Lethe's density split);
 * - global selection: `GlobalSelector` evicts the lowest-scoring rows over all layers until a total is met
 *   (Lethe's fixed-budget mode), so the split follows where attention is, step by step.
 */
import { nthByScore } from "./select.ts";

/** `budget` rows for each of `nLayers` layers. */
export function uniformBudgets(budget: number, nLayers: number): number[] {
  return new Array(nLayers).fill(budget);
}

/**
 * PyramidKV's per-layer budgets averaging `budget`: layer 0 gets `2B − B/beta`, the last layer `B/beta`,
 * linear in between (integers, summing to at most nLayers × budget).
 */
export function pyramidBudgets(budget: number, nLayers: number, beta: number): number[] {
  if (nLayers === 1) return [Math.floor(budget)];
  const min = budget / beta;
  const max = 2 * budget - min;
  const step = (max - min) / (nLayers - 1);
  return Array.from({ length: nLayers }, (_, l) => Math.max(1, Math.floor(max - l * step)));
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

export interface GlobalSpec {
  /** Rows all layers keep together. */
  total: number;
  /** Leading rows of every layer that always stay. */
  sink: number;
  /** Newest rows of every layer that always stay. */
  recent: number;
  /** Middle rows every layer keeps at least (where it has them). */
  minLayer: number;
}

/**
 * Global selection: of the layers' middle rows (all but `sink` leading and `recent` newest), the lowest-scoring
 * ones over all layers go — ties to the older row, then the lower layer — each layer keeping at least
 * `minLayer` middle rows, until the layers hold `total` rows together (or nothing more may go). Scores must be
 * comparable across layers (Lethe's are: every query's attention sums to nHeads in every layer). Reusable
 * buffers: no allocation in steady state.
 */
export class GlobalSelector {
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

  /** Reusable buffers for `L` layers of up to `maxN` rows. */
  private scratch(L: number, maxN: number) {
    if (!this.sc || this.sc.maxN < maxN || this.sc.lo.length !== L) {
      let cap = Math.max(64, this.sc?.maxN ?? 0);
      while (cap < maxN) cap *= 2;
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

  /**
   * Given each layer's scores (one per row; `scores[l].length` is the layer's length), calls `keep(l, rows)`
   * for every layer with the ascending rows it keeps (a view valid during the call).
   */
  select(scores: Float32Array[], spec: GlobalSpec, keep: (layer: number, rows: Int32Array) => void): void {
    // The rule: walk all candidates (layer middles) by (score, row index, layer) ascending and evict each
    // whose layer still has spare middle rows (beyond minLayer) until the total is met. The same set,
    // without sorting: per layer only its `spare` lowest candidates can go (partial selection), and of
    // their union the `excess` lowest in the global order go (partial selection again).
    const L = scores.length;
    let maxN = 0, sum = 0;
    for (let l = 0; l < L; l++) {
      maxN = Math.max(maxN, scores[l].length);
      sum += scores[l].length;
    }
    const sc = this.scratch(L, maxN);
    const idx = sc.idx, flat = sc.flat, union = sc.union, lo = sc.lo, hi = sc.hi, lt = sc.lt, ls = sc.ls;
    let u = 0;
    for (let l = 0; l < L; l++) {
      const n = scores[l].length;
      const s = Math.min(spec.sink, n);
      const r = Math.min(spec.recent, n - s);
      lo[l] = s;
      hi[l] = n - r;
      const c = n - s - r;
      const spare = Math.max(0, c - spec.minLayer);
      lt[l] = -1; // no layer threshold: every candidate of the layer is eligible
      if (spare === 0) {
        hi[l] = lo[l]; // nothing of this layer can go
        continue;
      }
      const sl = scores[l];
      if (spare < c) {
        // eligible: the layer's `spare` lowest = ranks ≥ c − spare in rankByScore order (score desc, index desc)
        for (let i = 0; i < c; i++) idx[i] = s + i;
        nthByScore(sl, idx, 0, c - 1, c - spare);
        lt[l] = idx[c - spare];
        ls[l] = sl[lt[l]];
      }
      const t = lt[l], ts = ls[l];
      for (let j = s; j < n - r; j++) {
        const x = sl[j];
        if (t >= 0 && !(x < ts || (x === ts && j <= t))) continue;
        const k = j * L + l; // ascending k = ascending (row index, layer): the global tie order
        flat[k] = x;
        union[u++] = k;
      }
    }
    // of the union, the `excess` lowest go (all of it when it is smaller)
    const excess = sum - spec.total;
    let gt = -1, gs = 0;
    if (u > excess) {
      nthByScore(flat, union, 0, u - 1, u - excess);
      gt = union[u - excess];
      gs = flat[gt];
    }
    for (let l = 0; l < L; l++) {
      const sl = scores[l], n = sl.length;
      const rows = sc.keep;
      let m = 0;
      const t = lt[l], ts = ls[l];
      for (let j = 0; j < n; j++) {
        if (j >= lo[l] && j < hi[l]) {
          const x = sl[j];
          const eligible = t < 0 || x < ts || (x === ts && j <= t);
          if (eligible) {
            const k = j * L + l;
            if (gt < 0 || x < gs || (x === gs && k <= gt)) continue; // evicted
          }
        }
        rows[m++] = j;
      }
      keep(l, rows.subarray(0, m));
    }
  }
}
