/**
 * The one textual syntax for a KV-policy spec, used by every CLI flag, environment variable and server option
 * (the HTTP API takes the JSON object form):
 *
 *   lethe                              the policy with its defaults
 *   lethe:mode=fixed,budget=128        name, then comma-separated key=value params
 *   {"name":"lethe","budget":128}      a JSON object with "name"
 *
 * In the key=value form a value that reads as a number is a number, `true`/`false` are booleans, anything
 * else is a string. The result is only parsed, not validated: `parsePolicySpec` validates it against the
 * policy's schema.
 *
 * A list of specs (`parsePolicyList`, for the CLIs that compare policies) separates them with commas as well:
 * `streaming,lethe:mode=fixed,budget=128,h2o` — a comma item that is `name` or starts with `name:` begins a
 * spec, a `key=value` item continues the one before. JSON objects go in a JSON array.
 */
import type { PolicySpec } from "./contract.ts";

/** A spec text that is not in any of the three forms. */
export class PolicySpecSyntaxError extends Error {
  override name = "PolicySpecSyntaxError";
}

const NAME_RE = /^[a-z][a-z0-9_]*$/;
const KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

function value(text: string): number | boolean | string {
  if (text === "true") return true;
  if (text === "false") return false;
  if (/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(text)) return Number(text);
  return text;
}

function json(s: string, what: string): unknown {
  try {
    return JSON.parse(s);
  } catch (e) {
    throw new PolicySpecSyntaxError(`${what} is not valid JSON: ${(e as Error).message}`);
  }
}

/** Parse `name`, `name:k=v,…` or a JSON object into a PolicySpec; throws PolicySpecSyntaxError. */
export function parsePolicyText(text: string): PolicySpec {
  const s = text.trim();
  if (s.startsWith("{")) {
    const obj = json(s, "KV policy spec");
    if (typeof obj !== "object" || obj === null || Array.isArray(obj)) {
      throw new PolicySpecSyntaxError(`KV policy spec must be a JSON object like {"name":"lethe"}`);
    }
    if (typeof (obj as { name?: unknown }).name !== "string") {
      throw new PolicySpecSyntaxError(`KV policy spec needs a string "name"`);
    }
    return obj as PolicySpec;
  }
  const colon = s.indexOf(":");
  const name = colon < 0 ? s : s.slice(0, colon);
  if (!NAME_RE.test(name)) {
    throw new PolicySpecSyntaxError(
      `KV policy spec "${s.slice(0, 80)}": expected a name, name:key=value,… or a JSON object`,
    );
  }
  const spec: PolicySpec = { name };
  if (colon < 0) return spec;
  const rest = s.slice(colon + 1);
  if (rest.trim() === "") return spec;
  for (const part of rest.split(",")) {
    const eq = part.indexOf("=");
    const key = (eq < 0 ? part : part.slice(0, eq)).trim();
    if (eq < 0 || !KEY_RE.test(key) || key === "name") {
      throw new PolicySpecSyntaxError(`KV policy spec "${s.slice(0, 80)}": bad parameter "${part.trim()}"`);
    }
    if (Object.hasOwn(spec, key)) {
      throw new PolicySpecSyntaxError(`KV policy spec "${s.slice(0, 80)}": "${key}" given twice`);
    }
    spec[key] = value(part.slice(eq + 1).trim());
  }
  return spec;
}

/** The canonical text form of a spec (`name:k=v,…`, keys in the given order). */
export function formatPolicyText(spec: { name: string; [k: string]: unknown }): string {
  const params = Object.entries(spec).filter(([k]) => k !== "name");
  return params.length === 0 ? spec.name : `${spec.name}:${params.map(([k, v]) => `${k}=${v}`).join(",")}`;
}

/** Parse a comma-separated list of specs (see above) or a JSON array of spec objects. */
export function parsePolicyList(text: string): PolicySpec[] {
  const s = text.trim();
  if (s.startsWith("[")) {
    const arr = json(s, "KV policy list");
    if (!Array.isArray(arr) || arr.length === 0) {
      throw new PolicySpecSyntaxError("KV policy list must be a non-empty JSON array of spec objects");
    }
    return arr.map((o) => parsePolicyText(JSON.stringify(o)));
  }
  const groups: string[] = [];
  for (const item of s.split(",")) {
    const head = item.trim().match(/^([a-z][a-z0-9_]*)(:|$)/);
    if (head || groups.length === 0) groups.push(item);
    else groups[groups.length - 1] += "," + item;
  }
  return groups.map(parsePolicyText);
}
