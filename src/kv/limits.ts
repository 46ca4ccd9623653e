/**
 * What a KV policy holds each layer to, for views of a cache (the playground's bars, `GET
 * /v1/sessions/{id}/kv`): a per-layer budget (rows kept once the layer exceeds it), a per-layer trigger (Lethe's
 * adaptive mode prunes a layer once it holds more rows), or nothing (the full cache). Read from the policy
 * instance, so it reflects state that moves (Lethe's triggers double, its per-layer shares follow attention).
 */
import type { KVPolicy } from "./contract.ts";
import { TopScoresPolicy } from "./base.ts";
import { LethePolicy } from "./policies/lethe.ts";
import { SnapKVPolicy } from "./policies/snapkv.ts";
import { StreamingPolicy } from "./policies/streaming.ts";

export interface PolicyLimits {
  kind: "budget" | "trigger" | "none";
  /** Per layer (null for "none"). */
  per_layer: number[] | null;
  /** Rows kept over all layers together, when the policy budgets the total (Lethe's global selection). */
  total: number | null;
  /** One line on how the policy uses them. */
  note: string;
}

export function policyLimits(p: KVPolicy, nLayers: number): PolicyLimits {
  const each = (n: number) => new Array<number>(nLayers).fill(n);
  if (p instanceof LethePolicy) {
    if (p.params.mode === "adaptive") {
      return {
        kind: "trigger",
        per_layer: [...p.triggers],
        total: null,
        note:
          "a layer holding more rows than its trigger is pruned at its score breakpoint; the trigger doubles when a prune keeps that many or the scores are flat",
      };
    }
    if (p.params.select === "global") {
      return {
        kind: "budget",
        per_layer: each(p.budgetTokens),
        total: p.budgetTokens * nLayers,
        note: "the total is kept over all layers together: the lowest-scoring rows of any layer go first",
      };
    }
    return {
      kind: "budget",
      per_layer: [...p.layerBudgets],
      total: p.budgetTokens * nLayers,
      note: "the total is split across layers by attention density at each prune",
    };
  }
  if (p instanceof SnapKVPolicy) {
    return {
      kind: "budget",
      per_layer: [...p.budgets],
      total: null,
      note: "each layer keeps its budget: sinks, the observation window and the rows it attended to most",
    };
  }
  if (p instanceof TopScoresPolicy) {
    return {
      kind: "budget",
      per_layer: each(p.budgetTokens),
      total: null,
      note: "each layer keeps its budget: sinks, the recent window and the highest-scoring rows",
    };
  }
  if (p instanceof StreamingPolicy) {
    return {
      kind: "budget",
      per_layer: each(p.budgetTokens),
      total: null,
      note: "each layer keeps its budget: the sinks and the most recent rows",
    };
  }
  return { kind: "none", per_layer: null, total: null, note: "nothing is evicted" };
}
