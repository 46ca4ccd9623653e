/// <reference lib="dom" />
/**
 * The KV-policy picker: a form built from the API's own zod schemas (src/kv/registry.ts), validated by the same
 * `parsePolicySpec` the server runs, so a spec the form accepts is one the server accepts, with the same
 * messages. Only the parameters the user set are sent; the placeholders show the defaults.
 */
import { z } from "zod";
import { parsePolicySpec, POLICY_NAMES, policySpecSchema } from "../../src/kv/registry.ts";
import { byId, h } from "./dom.ts";

const POLICY_HELP: Record<string, string> = {
  full: "Keeps every token: the reference the others are judged against.",
  streaming: "StreamingLLM: attention sinks and a window of the most recent tokens.",
  h2o: "H2O: the heavy hitters of accumulated attention, plus a recent window.",
  tova: "TOVA: the current query's attention decides which token goes.",
  snapkv: "SnapKV: votes of an observation window of recent queries.",
  pyramidkv: "PyramidKV: SnapKV with budgets shrinking from the lower layers to the upper ones.",
  lethe:
    "Lethe: layer- and time-adaptive. Adaptive mode prunes a layer past its trigger at its score breakpoint; fixed mode keeps a total budget across layers.",
};

const PARAM_HELP: Record<string, string> = {
  budget: "≤ 1: a fraction of the context; > 1: tokens per layer",
  sink: "leading tokens always kept (attention sinks)",
  recentFraction: "share of the budget kept for the newest tokens",
  recent: "newest tokens always kept",
  window: "observation window (recent queries that vote)",
  kernel: "max-pooling width over the votes",
  beta: "pyramid steepness (top layer gets budget / beta)",
  mode: "adaptive: per-layer triggers; fixed: a total budget",
  gamma: "score decay per step",
  tau: "score ratio that marks a breakpoint (adaptive)",
  segments: "breakpoint candidates per prune (adaptive)",
  recentRatio: "newest share of a layer always kept",
  initialTrigger: "rows a layer holds before its first prune (adaptive)",
  slack: "rows a layer may exceed its share by before pruning (fixed)",
  densityPower: "how strongly attention density splits the budget (fixed, per-layer select)",
  minLayer: "middle rows each layer keeps at least (fixed)",
  select: "global: lowest scores over all layers go; layer: per-layer shares",
  farPower: "how far-reaching attention slows a layer's decay",
  farAge: "tokens older than this are far",
};

/** Shown first; a policy's other parameters sit under "More parameters". */
const PRIMARY = new Set([
  "mode",
  "budget",
  "sink",
  "gamma",
  "tau",
  "select",
  "recentFraction",
  "recent",
  "window",
  "beta",
]);

interface Param {
  key: string;
  type: "number" | "integer" | "enum" | "boolean";
  default: unknown;
  options?: string[];
  min?: number;
  max?: number;
}

type JsonProp = {
  type?: string;
  enum?: string[];
  default?: unknown;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
};

/** Each policy's parameters, read from its zod schema. */
function paramsOf(name: string): Param[] {
  // deno-lint-ignore no-explicit-any
  const opt = (policySpecSchema as any).options.find((o: any) => o.shape.name.value === name);
  const js = z.toJSONSchema(opt, { io: "input" }) as { properties: Record<string, JsonProp> };
  return Object.entries(js.properties).filter(([k]) => k !== "name").map(([key, p]) => ({
    key,
    type: p.enum ? "enum" : (p.type as Param["type"]),
    default: p.default,
    options: p.enum,
    min: p.minimum ?? p.exclusiveMinimum,
    max: p.maximum,
  }));
}

export class PolicyForm {
  readonly select = byId<HTMLSelectElement>("policy-name");
  readonly fields = byId<HTMLElement>("policy-params");
  readonly help = byId<HTMLElement>("policy-help");
  readonly error = byId<HTMLElement>("policy-error");

  constructor(initial: Record<string, unknown> = { name: "lethe" }) {
    for (const n of POLICY_NAMES) this.select.append(h("option", { value: n }, n));
    this.select.value = POLICY_NAMES.includes(String(initial.name)) ? String(initial.name) : "lethe";
    this.select.addEventListener("change", () => this.#build({}));
    this.#build(initial);
  }

  #build(values: Record<string, unknown>): void {
    const name = this.select.value;
    this.help.textContent = POLICY_HELP[name] ?? "";
    const inputs: HTMLElement[] = [];
    const more: HTMLElement[] = [];
    for (const p of paramsOf(name)) {
      const id = `param-${p.key}`;
      const v = values[p.key];
      const desc = PARAM_HELP[p.key] ?? "";
      let input: HTMLInputElement | HTMLSelectElement;
      if (p.type === "enum") {
        input = h("select", { id, name: p.key, "aria-describedby": `${id}-help` });
        for (const o of p.options!) {
          input.append(h("option", { value: o, selected: (v ?? p.default) === o }, o));
        }
      } else {
        input = h("input", {
          id,
          name: p.key,
          type: "number",
          inputmode: p.type === "integer" ? "numeric" : "decimal",
          step: p.type === "integer" ? 1 : "any",
          min: p.min,
          max: p.max,
          placeholder: String(p.default),
          value: v === undefined ? undefined : String(v),
          "aria-describedby": `${id}-help`,
        });
      }
      input.addEventListener("input", () => this.validate());
      (PRIMARY.has(p.key) ? inputs : more).push(h(
        "div",
        { class: "field" },
        h("label", { for: id }, p.key),
        input,
        h("small", { id: `${id}-help`, class: "muted" }, desc),
      ));
    }
    this.fields.replaceChildren(
      h("legend", {}, inputs.length + more.length ? "Parameters (empty: the default)" : "No parameters"),
      ...inputs,
      ...(more.length
        ? [h("details", { class: "more" }, h("summary", {}, `More parameters (${more.length})`), ...more)]
        : []),
    );
    this.validate();
  }

  /** The spec as the API takes it: the name and the parameters set (numbers as numbers). */
  spec(): Record<string, unknown> {
    const spec: Record<string, unknown> = { name: this.select.value };
    for (const el of this.fields.querySelectorAll<HTMLInputElement | HTMLSelectElement>("input, select")) {
      if (el.value === "") continue;
      const p = paramsOf(this.select.value).find((x) => x.key === el.name)!;
      if (p.type === "enum" && el.value === p.default) continue;
      spec[el.name] = p.type === "enum" ? el.value : Number(el.value);
    }
    return spec;
  }

  /** Validate with the API's schema; shows the message and marks the field. Returns the spec or null. */
  validate(): Record<string, unknown> | null {
    const spec = this.spec();
    for (const el of this.fields.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    try {
      parsePolicySpec(spec);
      this.error.textContent = "";
      return spec;
    } catch (e) {
      const msg = (e as Error).message;
      this.error.textContent = msg;
      const param = msg.match(/param "([^"]+)"/)?.[1];
      if (param) byIdOrNull(`param-${param}`)?.setAttribute("aria-invalid", "true");
      return null;
    }
  }
}

function byIdOrNull(id: string): HTMLElement | null {
  return document.getElementById(id);
}
