/**
 * H2O, Heavy-Hitter Oracle (Zhang et al. 2023): accumulated attention (no decay, γ = 1) picks the heavy
 * hitters; a recent window (`recentFraction` of the budget) and `sink` leading tokens are always kept.
 * Prunes a layer as soon as it exceeds the budget (the decision: a linear scan for the one row to go in
 * decode, partial selection otherwise; `KeepSelector`).
 */
import { z } from "zod";
import type { ScoreRequest } from "../../engine/backend.ts";
import type { SequenceKV } from "../cache.ts";
import { BasePolicy, KeepSelector, paramSchemas, resolveBudget } from "../policy_core.ts";
import type { Phase, PolicyShape, PruneEvent } from "../policy.ts";

export const schema = z.strictObject({
  budget: paramSchemas.budget(0.25),
  sink: paramSchemas.sink(4),
  recentFraction: paramSchemas.fraction(0.5),
});
type Params = z.infer<typeof schema>;

export class H2OPolicy extends BasePolicy {
  readonly name = "h2o";
  readonly budgetTokens: number;
  private readonly sink: number;
  private readonly recent: number;
  private readonly selector = new KeepSelector();

  constructor(p: Params, shape: PolicyShape) {
    super(p, shape);
    this.budgetTokens = resolveBudget(p.budget, shape.contextLength);
    this.sink = p.sink;
    this.recent = Math.round(p.recentFraction * this.budgetTokens);
    this.decay = 1;
  }

  scoreRequest(_phase: Phase, nNew: number): ScoreRequest | undefined {
    return { decay: 1, window: Math.max(1, nNew) };
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

export function create(params: Params, shape: PolicyShape): H2OPolicy {
  return new H2OPolicy(params, shape);
}
