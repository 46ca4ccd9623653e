/**
 * StreamingLLM (Xiao et al. 2023): keep `sink` attention-sink tokens and a window of the most recent ones,
 * `budget` rows per layer in all. Needs no scores. Prunes a layer as soon as it exceeds the budget.
 */
import { z } from "zod";
import type { ScoreRequest } from "../../engine/backend.ts";
import type { SequenceKV } from "../cache.ts";
import { BasePolicy, paramSchemas, resolveBudget, selectKeep } from "../policy_core.ts";
import type { Phase, PolicyShape, PruneEvent } from "../policy.ts";

export const schema = z.strictObject({
  budget: paramSchemas.budget(0.25),
  sink: paramSchemas.sink(4),
});
type Params = z.infer<typeof schema>;

export class StreamingPolicy extends BasePolicy {
  readonly name = "streaming";
  readonly budgetTokens: number;
  private readonly sink: number;

  constructor(p: Params, shape: PolicyShape) {
    super(p, shape);
    this.budgetTokens = resolveBudget(p.budget, shape.contextLength);
    this.sink = p.sink;
  }

  scoreRequest(_phase: Phase, _nNew: number): ScoreRequest | undefined {
    return undefined;
  }

  protected prune(kv: SequenceKV, _phase: Phase, _nNew: number, events: PruneEvent[]): void {
    const b = this.budgetTokens;
    for (let l = 0; l < this.nLayers; l++) {
      const n = kv.length(l);
      if (n <= b) continue;
      const keep = selectKeep(this.table.get(l), n, { sink: this.sink, recent: b, budget: b });
      this.pruneLayer(kv, l, keep, events);
    }
  }
}

export function create(params: Params, shape: PolicyShape): StreamingPolicy {
  return new StreamingPolicy(params, shape);
}
