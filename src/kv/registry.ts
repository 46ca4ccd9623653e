/**
 * The policies by name: spec validation (zod schemas, defaults filled, clear errors naming the param),
 * creation, and the HTTP layer's schema of `kv_policy`.
 */
import { z } from "zod";
import type { KVPolicy, PolicyShape, PolicySpec } from "./contract.ts";
import * as full from "./policies/full.ts";
import * as streaming from "./policies/streaming.ts";
import * as h2o from "./policies/h2o.ts";
import * as tova from "./policies/tova.ts";
import * as snapkv from "./policies/snapkv.ts";
import * as pyramidkv from "./policies/pyramidkv.ts";
import * as lethe from "./policies/lethe.ts";

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
