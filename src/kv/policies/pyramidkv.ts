/**
 * PyramidKV (Cai et al. 2024): a fixed pyramid of per-layer budgets, lower layers more, upper layers fewer,
 * averaging `budget`: layer 0 gets `2B − B/beta`, the last layer `B/beta`, linear in between. Rows are
 * chosen within each layer's budget by observation-window attention exactly like SnapKV.
 */
import { z } from "zod";
import { paramSchemas, resolveBudget } from "../base.ts";
import { pyramidBudgets } from "../budget.ts";
import type { PolicyShape } from "../contract.ts";
import { SnapKVPolicy } from "./snapkv.ts";

export const schema = z.strictObject({
  budget: paramSchemas.budget(0.25),
  sink: paramSchemas.sink(4),
  window: paramSchemas.count(32),
  kernel: paramSchemas.count(7).refine((k) => k % 2 === 1, "must be odd"),
  beta: z.number().min(1, "must be ≥ 1").max(1000).default(20),
});
type Params = z.infer<typeof schema>;

/** SnapKV with PyramidKV's per-layer budgets (budget.ts). */
export class PyramidKVPolicy extends SnapKVPolicy {
  override readonly name = "pyramidkv";

  constructor(p: Params, shape: PolicyShape) {
    super(p, shape, pyramidBudgets(resolveBudget(p.budget, shape.contextLength), shape.nLayers, p.beta));
  }
}

export function create(params: Params, shape: PolicyShape): PyramidKVPolicy {
  return new PyramidKVPolicy(params, shape);
}
