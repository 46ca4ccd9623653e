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
import { paramSchemas, TopScoresPolicy } from "../base.ts";
import type { Phase, PolicyShape } from "../contract.ts";

export const schema = z.strictObject({
  budget: paramSchemas.budget(0.25),
  sink: paramSchemas.sink(4),
  recent: paramSchemas.count(0, 0),
});
type Params = z.infer<typeof schema>;

export class TovaPolicy extends TopScoresPolicy {
  readonly name = "tova";

  constructor(p: Params, shape: PolicyShape) {
    super(p, shape, () => p.recent);
    this.tableDecay = 0; // S = S·0 + scores: only the latest query counts
  }

  scoreRequest(_phase: Phase, _nNew: number): ScoreRequest | undefined {
    return { decay: 0, window: 1 };
  }
}

export function create(params: Params, shape: PolicyShape): TovaPolicy {
  return new TovaPolicy(params, shape);
}
