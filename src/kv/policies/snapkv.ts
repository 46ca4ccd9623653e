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
import { BasePolicy, paramSchemas, resolveBudget } from "../base.ts";
import { uniformBudgets } from "../budget.ts";
import type { Phase, PolicyShape, PruneEvent } from "../contract.ts";
import { budgetLimits, type PolicyLimits } from "../limits.ts";
import { type RowAligned, ScoreRing } from "../score_table.ts";
import { KeepSelector, maxPoolInto } from "../select.ts";

export const schema = z.strictObject({
  budget: paramSchemas.budget(0.25),
  sink: paramSchemas.sink(4),
  window: paramSchemas.count(32),
  kernel: paramSchemas.count(7).refine((k) => k % 2 === 1, "must be odd"),
});
export type SnapParams = z.infer<typeof schema>;

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

  /** Rows each layer may keep (SnapKV: the same for every layer; PyramidKV: its pyramid). */
  readonly budgets: number[];

  constructor(p: SnapParams, shape: PolicyShape, budgets?: number[]) {
    super(p, shape);
    this.budgetTokens = resolveBudget(p.budget, shape.contextLength);
    this.sink = p.sink;
    this.window = p.window;
    this.kernel = p.kernel;
    this.ring = new ScoreRing(shape.nLayers, p.window);
    this.budgets = budgets ?? uniformBudgets(this.budgetTokens, shape.nLayers);
    // Two decays: the table holds only the latest step's votes (table decay 0) while the backend is asked
    // for the undecayed sum over the observation window (request decay 1); the ring keeps the window.
    this.tableDecay = 0;
  }

  scoreRequest(phase: Phase, nNew: number): ScoreRequest | undefined {
    return { decay: 1, window: phase === "prefill" ? Math.max(1, Math.min(this.window, nNew)) : 1 };
  }

  override limits(): PolicyLimits {
    return budgetLimits(
      this.budgets,
      this.nLayers,
      "each layer keeps its budget: sinks, the observation window and the rows it attended to most",
    );
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
      const b = this.budgets[l];
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
