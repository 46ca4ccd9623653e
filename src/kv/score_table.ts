/**
 * Per-row state kept aligned with a cache's rows: the score table every policy keeps, and the in-place
 * compaction (run by run) that moves such state with a prune plan.
 */
import type { SequenceKV } from "./cache.ts";

/** Anything that compacts like the cache (a ScoreTable, a policy's extra per-row state). */
export interface RowAligned {
  compact(layer: number, keep: Int32Array): void;
}

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

/**
 * The last `window` steps' score vectors of every layer, compacted with the cache. Per layer one contiguous
 * buffer of `size` slots × `cap` rows used as a ring (no allocation per step); every slot holds zeros past
 * its vector's length (the rows its query never saw), so the vote sum needs no length checks and a
 * compaction is a few memmoves per slot.
 */
export class ScoreRing implements RowAligned {
  private data: Float32Array[] = [];
  private cap: Int32Array;
  /** Per layer: slot of the oldest vector, number of vectors; per slot: the vector's length. */
  private head: Int32Array;
  private count: Int32Array;
  private lens: Int32Array[] = [];

  constructor(nLayers: number, readonly size: number) {
    this.cap = new Int32Array(nLayers).fill(16);
    this.head = new Int32Array(nLayers);
    this.count = new Int32Array(nLayers);
    for (let l = 0; l < nLayers; l++) {
      this.data.push(new Float32Array(size * 16));
      this.lens.push(new Int32Array(size));
    }
  }

  /** Room for `n` rows per slot (new rows read 0 in every slot). */
  private reserve(layer: number, n: number): void {
    const old = this.cap[layer];
    if (n <= old) return;
    let cap = old;
    while (cap < n) cap *= 2;
    const next = new Float32Array(this.size * cap);
    const d = this.data[layer];
    for (let w = 0; w < this.size; w++) next.set(d.subarray(w * old, w * old + old), w * cap);
    this.data[layer] = next;
    this.cap[layer] = cap;
  }

  push(layer: number, scores: Float32Array): void {
    this.reserve(layer, scores.length);
    const cap = this.cap[layer], d = this.data[layer];
    let slot: number;
    if (this.count[layer] < this.size) {
      slot = (this.head[layer] + this.count[layer]) % this.size;
      this.count[layer]++;
    } else {
      slot = this.head[layer]; // the oldest goes
      this.head[layer] = (slot + 1) % this.size;
    }
    d.set(scores, slot * cap);
    d.fill(0, slot * cap + scores.length, slot * cap + cap);
    this.lens[layer][slot] = scores.length;
  }

  clear(layer: number): void {
    this.head[layer] = 0;
    this.count[layer] = 0;
  }

  /**
   * Sum of the ring's votes over `n` rows into `out` (rows an older query never saw count 0), oldest vector
   * first with f32 rounding at every addition: the same values as summing the vectors one by one.
   */
  sumInto(layer: number, n: number, out: Float32Array, from = 0, to = n): Float32Array {
    this.reserve(layer, n);
    const cap = this.cap[layer], d = this.data[layer], size = this.size, head = this.head[layer];
    const count = this.count[layer];
    const fr = Math.fround;
    out.fill(0, from, to);
    let k = 0;
    // four vectors per pass (one load/store of `out` per row and pass), still added one at a time in order
    for (; k + 4 <= count; k += 4) {
      const o0 = ((head + k) % size) * cap, o1 = ((head + k + 1) % size) * cap;
      const o2 = ((head + k + 2) % size) * cap, o3 = ((head + k + 3) % size) * cap;
      for (let i = from; i < to; i++) {
        out[i] = fr(fr(fr(fr(out[i] + d[o0 + i]) + d[o1 + i]) + d[o2 + i]) + d[o3 + i]);
      }
    }
    for (; k < count; k++) {
      const off = ((head + k) % size) * cap;
      for (let i = from; i < to; i++) out[i] += d[off + i];
    }
    return out;
  }

  private runs = new Int32Array(24);

  compact(layer: number, keep: Int32Array): void {
    const cap = this.cap[layer], d = this.data[layer], lens = this.lens[layer];
    const r = keepRuns(keep, this.runs);
    this.runs = r.runs;
    for (let k = 0; k < this.count[layer]; k++) {
      const slot = (this.head[layer] + k) % this.size;
      const off = slot * cap;
      moveRuns(d, off, r.runs, r.count);
      d.fill(0, off + keep.length, off + Math.max(keep.length, lens[slot]));
      lens[slot] = keep.length;
    }
  }

  /** The vectors of `layer`, oldest first (copies). */
  vectors(layer: number): Float32Array[] {
    const out: Float32Array[] = [];
    const cap = this.cap[layer];
    for (let k = 0; k < this.count[layer]; k++) {
      const slot = (this.head[layer] + k) % this.size;
      out.push(this.data[layer].slice(slot * cap, slot * cap + this.lens[layer][slot]));
    }
    return out;
  }
}
