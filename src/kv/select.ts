/**
 * Selection: which rows of a layer to keep, given per-row scores — the rule every policy shares (sinks and
 * recent rows always, the best-scoring middle rows fill the budget), its allocation-free form
 * (`KeepSelector`, partial selection), and the score shapes policies build (max pooling, Hoyer sparsity).
 */

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
