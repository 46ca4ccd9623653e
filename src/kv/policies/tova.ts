/**
 * TOVA, Token Omission Via Attention (Oren et al. 2024): the current query's attention alone (window 1, no
 * accumulation) decides; the lowest-scoring rows go once a layer exceeds the budget. `sink` leading and
 * `recent` newest rows are protected (sink 4, recent 0 by default).
 *
 * In decode one row goes per step (the layer holds budget + 1 rows): the decision is one linear scan for
 * the lowest-scoring unprotected row (`KeepSelector`), no sort and no allocation.
 */
import { z } from "zod";
import type { ScoreRequest } from "../../engine/backend.ts";
import type { SequenceKV } from "../cache.ts";
import { BasePolicy, KeepSelector, paramSchemas, resolveBudget } from "../policy_core.ts";
import type { Phase, PolicyShape, PruneEvent } from "../policy.ts";

export const schema = z.strictObject({
  budget: paramSchemas.budget(0.25),
  sink: paramSchemas.sink(4),
  recent: paramSchemas.count(0, 0),
});
type Params = z.infer<typeof schema>;

export class TovaPolicy extends BasePolicy {
  readonly name = "tova";
  readonly budgetTokens: number;
  private readonly sink: number;
  private readonly recent: number;
  private readonly selector = new KeepSelector();

  constructor(p: Params, shape: PolicyShape) {
    super(p, shape);
    this.budgetTokens = resolveBudget(p.budget, shape.contextLength);
    this.sink = p.sink;
    this.recent = p.recent;
    this.decay = 0; // S = S·0 + scores: only the latest query counts
  }

  scoreRequest(_phase: Phase, _nNew: number): ScoreRequest | undefined {
    return { decay: 0, window: 1 };
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

export function create(params: Params, shape: PolicyShape): TovaPolicy {
  return new TovaPolicy(params, shape);
}
