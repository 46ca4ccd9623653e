/**
 * PyramidKV (Cai et al. 2024): a fixed pyramid of per-layer budgets, lower layers more, upper layers fewer,
 * averaging `budget`: layer 0 gets `2B − B/beta`, the last layer `B/beta`, linear in between. Rows are
 * chosen within each layer's budget by observation-window attention exactly like SnapKV.
 */
import { z } from "zod";
import { paramSchemas } from "../policy_core.ts";
import type { PolicyShape } from "../policy.ts";
import { SnapKVPolicy } from "./snapkv.ts";

export const schema = z.strictObject({
  budget: paramSchemas.budget(0.25),
  sink: paramSchemas.sink(4),
  window: paramSchemas.count(32),
  kernel: paramSchemas.count(7).refine((k) => k % 2 === 1, "must be odd"),
  beta: z.number().min(1, "must be ≥ 1").max(1000).default(20),
});
type Params = z.infer<typeof schema>;

/** The pyramid: per-layer budgets (integers, summing to at most nLayers × budget). */
export function pyramidBudgets(budget: number, nLayers: number, beta: number): number[] {
  if (nLayers === 1) return [Math.floor(budget)];
  const min = budget / beta;
  const max = 2 * budget - min;
  const step = (max - min) / (nLayers - 1);
  return Array.from({ length: nLayers }, (_, l) => Math.max(1, Math.floor(max - l * step)));
}

export class PyramidKVPolicy extends SnapKVPolicy {
  override readonly name = "pyramidkv";
  readonly budgets: number[];

  constructor(p: Params, shape: PolicyShape) {
    super(p, shape);
    this.budgets = pyramidBudgets(this.budgetTokens, shape.nLayers, p.beta);
  }

  override layerBudget(layer: number): number {
    return this.budgets[layer];
  }
}

export function create(params: Params, shape: PolicyShape): PyramidKVPolicy {
  return new PyramidKVPolicy(params, shape);
}
