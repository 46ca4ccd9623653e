/**
 * What a KV policy holds each layer to, for views of a cache (the playground's bars, `GET
 * /v1/sessions/{id}/kv`): a per-layer budget (rows kept once the layer exceeds it), a per-layer trigger (Lethe's
 * adaptive mode prunes a layer once it holds more rows), or nothing (the full cache). Each policy says it
 * (`KVPolicy.limits()`), from its own state, so it reflects state that moves (Lethe's triggers double, its
 * per-layer shares follow attention).
 */

export interface PolicyLimits {
  kind: "budget" | "trigger" | "none";
  /** Per layer (null for "none"). */
  per_layer: number[] | null;
  /** Rows kept over all layers together, when the policy budgets the total (Lethe's global selection). */
  total: number | null;
  /** One line on how the policy uses them. */
  note: string;
}

/** The limits of a policy that keeps every row. */
export const NO_LIMITS: Readonly<PolicyLimits> = Object.freeze({
  kind: "none",
  per_layer: null,
  total: null,
  note: "nothing is evicted",
});

/** A per-layer budget of `perLayer` rows (a number: the same for every one of `nLayers` layers). */
export function budgetLimits(
  perLayer: number | readonly number[],
  nLayers: number,
  note: string,
  total: number | null = null,
): PolicyLimits {
  const per_layer = typeof perLayer === "number" ? new Array<number>(nLayers).fill(perLayer) : [...perLayer];
  return { kind: "budget", per_layer, total, note };
}
