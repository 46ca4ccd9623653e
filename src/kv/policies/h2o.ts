/**
 * H2O, Heavy-Hitter Oracle (Zhang et al. 2023): accumulated attention (no decay, γ = 1) picks the heavy
 * hitters; a recent window (`recentFraction` of the budget) and `sink` leading tokens are always kept.
 * Prunes a layer as soon as it exceeds the budget (`TopScoresPolicy`).
 */
import { z } from "zod";
import type { ScoreRequest } from "../../engine/backend.ts";
import { paramSchemas, TopScoresPolicy } from "../base.ts";
import type { Phase, PolicyShape } from "../contract.ts";

export const schema = z.strictObject({
  budget: paramSchemas.budget(0.25),
  sink: paramSchemas.sink(4),
  recentFraction: paramSchemas.fraction(0.5),
});
type Params = z.infer<typeof schema>;

export class H2OPolicy extends TopScoresPolicy {
  readonly name = "h2o";

  constructor(p: Params, shape: PolicyShape) {
    super(p, shape, (budget) => Math.round(p.recentFraction * budget));
    this.tableDecay = 1;
  }

  scoreRequest(_phase: Phase, nNew: number): ScoreRequest | undefined {
    return { decay: 1, window: Math.max(1, nNew) };
  }
}

export function create(params: Params, shape: PolicyShape): H2OPolicy {
  return new H2OPolicy(params, shape);
}
