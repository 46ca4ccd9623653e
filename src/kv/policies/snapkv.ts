/**
 * SnapKV (Li et al. 2024): the last `window` queries (the observation window) vote with their attention;
 * the votes are smoothed with a max-pool of width `kernel` and the top-voted rows, plus `sink` leading rows
 * and the observation window itself, are kept, `budget` rows per layer.
 *
 * After a prefill the prompt is compressed once with the prefill's last `window` queries. During decoding
 * (the original method leaves decode tokens alone) this implementation keeps applying the same rule when a
 * layer exceeds its budget, with a sliding observation window: a ring of the last `window` decode queries'
 * attention (compacted with the cache). So under a decode budget SnapKV keeps what recent queries attended
 * to plus the recent window, rather than degrading to a plain window.
 */
import { z } from "zod";
import type { ScoreRequest } from "../../engine/backend.ts";
import type { SequenceKV } from "../cache.ts";
import {
  BasePolicy,
  keepRuns,
  KeepSelector,
  maxPoolInto,
  moveRuns,
  paramSchemas,
  resolveBudget,
  type RowAligned,
} from "../policy_core.ts";
import type { Phase, PolicyShape, PruneEvent } from "../policy.ts";

export const schema = z.strictObject({
  budget: paramSchemas.budget(0.25),
  sink: paramSchemas.sink(4),
  window: paramSchemas.count(32),
  kernel: paramSchemas.count(7).refine((k) => k % 2 === 1, "must be odd"),
});
export type SnapParams = z.infer<typeof schema>;

/**
 * The last `window` steps' score vectors of every layer, compacted with the cache. Per layer one contiguous
 * buffer of `size` slots × `cap` rows used as a ring (no allocation per step); every slot holds zeros past
 * its vector's length (the rows its query never saw), so the vote sum needs no length checks and a
 * compaction is a few memmoves per slot.
 */
class ScoreRing implements RowAligned {
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

export class SnapKVPolicy extends BasePolicy {
  readonly name: string = "snapkv";
  readonly budgetTokens: number;
  protected readonly sink: number;
  protected readonly window: number;
  protected readonly kernel: number;
  private readonly ring: ScoreRing;
  private readonly selector = new KeepSelector();
  /** Scratch: summed and pooled votes. */
  private sums = new Float32Array(64);
  private pooled = new Float32Array(64);

  constructor(p: SnapParams, shape: PolicyShape) {
    super(p, shape);
    this.budgetTokens = resolveBudget(p.budget, shape.contextLength);
    this.sink = p.sink;
    this.window = p.window;
    this.kernel = p.kernel;
    this.ring = new ScoreRing(shape.nLayers, p.window);
    this.decay = 0; // the table holds the latest step's votes; the ring holds the window
  }

  /** Rows `layer` may keep (SnapKV: the same for every layer). */
  layerBudget(_layer: number): number {
    return this.budgetTokens;
  }

  scoreRequest(phase: Phase, nNew: number): ScoreRequest | undefined {
    return { decay: 1, window: phase === "prefill" ? Math.max(1, Math.min(this.window, nNew)) : 1 };
  }

  protected override rowAligned(): RowAligned[] {
    return [this.table, this.ring];
  }

  protected override observe(scores: Float32Array[] | undefined, nNew: number, phase: Phase): void {
    if (!scores || nNew === 0) return;
    for (let l = 0; l < this.nLayers; l++) {
      // a prefill's window sum stands for the whole observation window
      if (phase === "prefill") this.ring.clear(l);
      this.ring.push(l, scores[l]);
    }
  }

  protected prune(kv: SequenceKV, phase: Phase, nNew: number, events: PruneEvent[]): void {
    for (let l = 0; l < this.nLayers; l++) {
      const n = kv.length(l);
      const b = this.layerBudget(l);
      if (n <= b) continue;
      if (this.sums.length < n) {
        this.sums = new Float32Array(Math.max(n, 2 * this.sums.length));
        this.pooled = new Float32Array(this.sums.length);
      }
      const recent = phase === "prefill" ? Math.min(this.window, nNew) : this.window;
      // the selection reads the votes of the middle rows only (sinks and recent rows stay regardless, as
      // in selectKeep): pool there, sum within kernel/2 of it
      const s = Math.min(this.sink, b), lo = s, hi = n - Math.min(recent, b - s);
      const h = this.kernel >> 1;
      const sums = this.ring.sumInto(l, n, this.sums, Math.max(0, lo - h), Math.min(n, hi + h));
      const votes = maxPoolInto(sums, n, this.kernel, this.pooled, lo, hi);
      const keep = this.selector.select(votes, n, { sink: this.sink, recent, budget: b });
      this.pruneLayer(kv, l, keep, events);
    }
  }

  protected override exportMeta(): Record<string, unknown> {
    return {
      ring: Array.from({ length: this.nLayers }, (_, l) => this.ring.vectors(l).map((e) => Array.from(e))),
    };
  }

  protected override importMeta(meta: Record<string, unknown>, kv: SequenceKV): void {
    const ring = meta.ring;
    if (!Array.isArray(ring) || ring.length !== this.nLayers) {
      throw new Error(`policy state: ${this.name} needs meta.ring with ${this.nLayers} layers`);
    }
    ring.forEach((layer: unknown, l) => {
      if (!Array.isArray(layer) || layer.length > this.window) {
        throw new Error(`policy state: meta.ring[${l}] must hold at most ${this.window} vectors`);
      }
      this.ring.clear(l);
      for (const e of layer) {
        if (!Array.isArray(e) || e.length > kv.length(l) || e.some((x) => typeof x !== "number")) {
          throw new Error(`policy state: meta.ring[${l}] has a vector longer than the cache or not numeric`);
        }
        this.ring.push(l, Float32Array.from(e));
      }
    });
  }
}

export function create(params: SnapParams, shape: PolicyShape): SnapKVPolicy {
  return new SnapKVPolicy(params, shape);
}
