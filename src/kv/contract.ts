/**
 * The KV-policy contract.
 *
 * A policy is created per sequence. Before each forward step the engine asks `scoreRequest(phase, nNew)`
 * which attention scores the backend should report; after the step (which applied the previous plan and
 * appended nNew rows to every layer) it calls `afterStep`: the policy updates its per-row scores and decides
 * what each layer keeps, as a prune plan the backend applies at the start of the next step. Policies decide;
 * backends apply. Each policy is one small module in `policies/`, on the shared pieces: `base.ts` (score
 * bookkeeping, timing, persistence), `select.ts` (which rows to keep), `score_table.ts` (per-row state),
 * `budget.ts` (budgets decided across layers); `registry.ts` names them.
 */
import type { ScoreRequest } from "../engine/backend.ts";
import type { SequenceKV } from "./cache.ts";
import type { PrunePlan } from "./kv_index.ts";
import type { PolicyLimits } from "./limits.ts";

export type Phase = "prefill" | "decode";

export interface PruneEvent {
  layer: number;
  before: number;
  after: number;
}

/** What a policy decided after a step. */
export interface PruneStep {
  /**
   * Which rows each layer keeps (null: nothing pruned). The policy's own state already follows it; the cache
   * does once the plan is applied — by the backend at the start of the sequence's next step
   * (`StepInput.compact`), or by `SequenceKV.compact` when no step follows. Valid until the policy's next
   * afterStep (its keep lists live in buffers the policy reuses).
   */
  plan: PrunePlan | null;
  pruneEvents: PruneEvent[];
  pruneMs: number;
}

export interface PolicyState {
  /** Per layer, aligned with the cache's rows. */
  scores: Float32Array[];
  /** JSON-serializable. */
  meta: Record<string, unknown>;
}

export interface KVPolicy {
  readonly name: string;
  /** Validated, defaults filled. */
  readonly params: Readonly<Record<string, number | boolean | string>>;
  /** What scores the backend should compute for the next step (undefined: none needed). */
  scoreRequest(phase: Phase, nNew: number): ScoreRequest | undefined;
  /**
   * After a forward step applied the previous plan and appended nNew tokens to every layer of kv: update the
   * per-token scores and decide what each layer keeps. Returns the plan (the policy's scores already follow
   * it); the policy does not touch the cache.
   */
  afterStep(kv: SequenceKV, scores: Float32Array[] | undefined, nNew: number, phase: Phase): PruneStep;
  /**
   * Forget every cached row at a position ≥ `pos` with the policy's state for it (`kv.rewind`: the cache then
   * holds what it held when the sequence had seen `pos` tokens, minus what was pruned; nextPos becomes
   * `pos`). Only with no prune plan pending (after `Sequence.settle()`): throws otherwise, changing nothing.
   * Not a pruning decision: not counted in stats.
   */
  rewind(kv: SequenceKV, pos: number): void;
  /** What the policy holds each layer to now (budgets or triggers), for views of the cache. */
  limits(): PolicyLimits;
  /** Cumulative counters; per-layer kept counts come from kv.length(l). */
  readonly stats: { pruneRounds: number; pruneMs: number; evicted: number };
  /** For session persistence (scores aligned with kv rows). */
  exportState(): PolicyState;
  /** Validates lengths against kv; throws on mismatch. */
  importState(s: PolicyState, kv: SequenceKV): void;
}

export interface PolicySpec {
  name: string;
  [param: string]: unknown;
}

export interface PolicyShape {
  nLayers: number;
  contextLength: number;
}
