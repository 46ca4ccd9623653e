/**
 * StreamingLLM (Xiao et al. 2023): keep `sink` attention-sink tokens and a window of the most recent ones,
 * `budget` rows per layer in all. Needs no scores. Prunes a layer as soon as it exceeds the budget.
 *
 * The decision is O(1): the keep list of a layer with n rows is [0, sink) ∪ [n − (budget − sink), n) (what
 * `selectKeep` with recent = budget gives), built once per n and reused (in decode n is budget + 1).
 */
import { z } from "zod";
import type { ScoreRequest } from "../../engine/backend.ts";
import type { SequenceKV } from "../cache.ts";
import { BasePolicy, paramSchemas, resolveBudget } from "../base.ts";
import type { Phase, PolicyShape, PruneEvent } from "../contract.ts";
import { budgetLimits, type PolicyLimits } from "../limits.ts";

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

  override limits(): PolicyLimits {
    return budgetLimits(
      this.budgetTokens,
      this.nLayers,
      "each layer keeps its budget: the sinks and the most recent rows",
    );
  }

  private keepN = -1;
  private keepList = new Int32Array(0);

  /** Sinks and the newest rows, `budget` of `n` rows (n > budget), ascending. */
  private keepFor(n: number): Int32Array {
    if (n !== this.keepN) {
      const b = this.budgetTokens;
      const s = Math.min(this.sink, b);
      const keep = new Int32Array(b);
      for (let i = 0; i < s; i++) keep[i] = i;
      for (let i = s; i < b; i++) keep[i] = n - b + i;
      this.keepN = n;
      this.keepList = keep;
    }
    return this.keepList;
  }

  protected prune(kv: SequenceKV, _phase: Phase, _nNew: number, events: PruneEvent[]): void {
    const b = this.budgetTokens;
    for (let l = 0; l < this.nLayers; l++) {
      const n = kv.length(l);
      if (n <= b) continue;
      this.pruneLayer(kv, l, this.keepFor(n), events);
    }
  }
}

export function create(params: Params, shape: PolicyShape): StreamingPolicy {
  return new StreamingPolicy(params, shape);
}
