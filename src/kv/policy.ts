/**
 * The KV-policy contract and registry.
 *
 * A policy is created per sequence. Before each forward step the engine asks `scoreRequest(phase, nNew)`
 * which attention scores the backend should report; after the step (which appended nNew rows to every layer)
 * it calls `afterStep`, and the policy updates its per-row scores and compacts the layers it decides to
 * prune. Shared machinery (score bookkeeping, selection, compaction) lives in `policy_core.ts` and is
 * re-exported here; each policy is one small module in `policies/`.
 */
import { z } from "zod";
import type { ScoreRequest } from "../engine/backend.ts";
import type { SequenceKV } from "./cache.ts";
import * as full from "./policies/full.ts";
import * as streaming from "./policies/streaming.ts";
import * as h2o from "./policies/h2o.ts";
import * as tova from "./policies/tova.ts";
import * as snapkv from "./policies/snapkv.ts";
import * as pyramidkv from "./policies/pyramidkv.ts";
import * as lethe from "./policies/lethe.ts";

export {
  allIndices,
  BasePolicy,
  compactLayer,
  compactRows,
  fromMask,
  hoyer,
  keepRuns,
  KeepSelector,
  type KeepSpec,
  maxPool,
  maxPoolInto,
  moveRuns,
  nthByScore,
  rankByScore,
  resolveBudget,
  type RowAligned,
  ScoreTable,
  selectKeep,
} from "./policy_core.ts";

export type Phase = "prefill" | "decode";

export interface PruneEvent {
  layer: number;
  before: number;
  after: number;
}

export interface StepKVStats {
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
   * After a forward step appended nNew tokens to every layer of kv: update per-token scores, prune
   * (kv.compact) where the policy decides.
   */
  afterStep(kv: SequenceKV, scores: Float32Array[] | undefined, nNew: number, phase: Phase): StepKVStats;
  /**
   * Forget every cached row at a position ≥ `pos`, with the policy's state for it, and set `kv.nextPos` to
   * `pos`: the cache then holds what it held when the sequence had seen `pos` tokens, minus what was pruned
   * (a session resumed from a shorter prefix of its history). Not a pruning decision: not counted in stats.
   */
  rewind(kv: SequenceKV, pos: number): void;
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

interface PolicyModule {
  // deno-lint-ignore no-explicit-any
  schema: z.ZodObject<any>;
  // deno-lint-ignore no-explicit-any
  create(params: any, shape: PolicyShape): KVPolicy;
}

const REGISTRY: Record<string, PolicyModule> = {
  full,
  streaming,
  h2o,
  tova,
  snapkv,
  pyramidkv,
  lethe,
};

export const POLICY_NAMES: readonly string[] = Object.freeze(Object.keys(REGISTRY));

/** A bad policy spec; the message names the policy and the offending param. */
export class PolicyParamError extends Error {
  override name = "PolicyParamError";
}

function describeIssues(policy: string, issues: z.core.$ZodIssue[]): string {
  return issues.map((i) => {
    if (i.code === "unrecognized_keys") {
      const keys = (i as { keys: string[] }).keys;
      const known = Object.keys(REGISTRY[policy].schema.shape).join(", ") || "none";
      return `unknown param${keys.length > 1 ? "s" : ""} ${keys.map((k) => `"${k}"`).join(", ")} ` +
        `(known: ${known})`;
    }
    const path = i.path.length ? i.path.join(".") : "(spec)";
    return `param "${path}": ${i.message}`;
  }).join("; ");
}

/** Validate a spec and fill defaults; throws PolicyParamError with a clear message. */
export function parsePolicySpec(
  spec: unknown,
): { name: string; params: Record<string, number | boolean | string> } {
  if (typeof spec !== "object" || spec === null || Array.isArray(spec)) {
    throw new PolicyParamError(`kv_policy must be an object like {"name": "lethe", ...params}`);
  }
  const { name, ...rest } = spec as Record<string, unknown>;
  if (typeof name !== "string") {
    throw new PolicyParamError(`kv_policy.name must be a string, one of: ${POLICY_NAMES.join(", ")}`);
  }
  const mod = Object.hasOwn(REGISTRY, name) ? REGISTRY[name] : undefined;
  if (!mod) throw new PolicyParamError(`unknown KV policy "${name}" (known: ${POLICY_NAMES.join(", ")})`);
  const r = mod.schema.safeParse(rest);
  if (!r.success) throw new PolicyParamError(`kv_policy ${name}: ${describeIssues(name, r.error.issues)}`);
  return { name, params: r.data as Record<string, number | boolean | string> };
}

/** A new policy instance for one sequence. */
export function createPolicy(spec: PolicySpec, shape: PolicyShape): KVPolicy {
  if (!Number.isInteger(shape.nLayers) || shape.nLayers < 1) throw new RangeError("nLayers must be ≥ 1");
  if (!Number.isInteger(shape.contextLength) || shape.contextLength < 1) {
    throw new RangeError("contextLength must be ≥ 1");
  }
  const { name, params } = parsePolicySpec(spec);
  return REGISTRY[name].create(params, shape);
}

/** The HTTP layer's schema for `kv_policy: {name, ...params}` (strict: unknown params are rejected). */
export const policySpecSchema = z.discriminatedUnion(
  "name",
  Object.entries(REGISTRY).map(([name, m]) => m.schema.extend({ name: z.literal(name) })) as unknown as [
    z.ZodObject<{ name: z.ZodLiteral<string> }>,
    ...z.ZodObject<{ name: z.ZodLiteral<string> }>[],
  ],
);
