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
  maxPool,
  paramSchemas,
  resolveBudget,
  type RowAligned,
  selectKeep,
} from "../policy_core.ts";
import type { Phase, PolicyShape, PruneEvent } from "../policy.ts";

export const schema = z.strictObject({
  budget: paramSchemas.budget(0.25),
  sink: paramSchemas.sink(4),
  window: paramSchemas.count(32),
  kernel: paramSchemas.count(7).refine((k) => k % 2 === 1, "must be odd"),
});
export type SnapParams = z.infer<typeof schema>;

/** The last `window` steps' score vectors of every layer, compacted with the cache. */
class ScoreRing implements RowAligned {
  readonly entries: Float32Array[][];
  constructor(nLayers: number, readonly size: number) {
    this.entries = Array.from({ length: nLayers }, () => []);
  }
  push(layer: number, scores: Float32Array): void {
    const e = this.entries[layer];
    e.push(scores.slice());
    if (e.length > this.size) e.shift();
  }
  clear(layer: number): void {
    this.entries[layer] = [];
  }
  /** Sum of the ring's votes over `n` rows (rows an older query never saw count 0). */
  sum(layer: number, n: number): Float32Array {
    const out = new Float32Array(n);
    for (const e of this.entries[layer]) for (let i = 0; i < e.length && i < n; i++) out[i] += e[i];
    return out;
  }
  compact(layer: number, keep: Int32Array): void {
    this.entries[layer] = this.entries[layer].map((e) => {
      const out = new Float32Array(keep.length);
      for (let i = 0; i < keep.length; i++) out[i] = keep[i] < e.length ? e[keep[i]] : 0;
      return out;
    });
  }
}

export class SnapKVPolicy extends BasePolicy {
  readonly name: string = "snapkv";
  readonly budgetTokens: number;
  protected readonly sink: number;
  protected readonly window: number;
  protected readonly kernel: number;
  private readonly ring: ScoreRing;

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
      const votes = maxPool(this.ring.sum(l, n), this.kernel);
      const recent = phase === "prefill" ? Math.min(this.window, nNew) : this.window;
      const keep = selectKeep(votes, n, { sink: this.sink, recent, budget: b });
      this.pruneLayer(kv, l, keep, events);
    }
  }

  protected override exportMeta(): Record<string, unknown> {
    return { ring: this.ring.entries.map((layer) => layer.map((e) => Array.from(e))) };
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
