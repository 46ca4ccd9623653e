/**
 * `deno task load`: a Deno load driver running the k6 scenarios of `loadtest/k6/` where k6 is missing.
 *
 * The scenario parameters, request bodies and checks are imported from `loadtest/k6/scenarios.js`, the very
 * module the k6 scripts import, so both send the same requests and count the same checks under the same
 * names; requests go through the service's one HTTP/SSE client (src/client/http.ts). The model id is
 * `--model` / MODEL, else the first model of the server's `GET /v1/models`, so any model can be driven. Executor: k6's "per-vu-iterations" with maxDuration: every VU runs its iterations one after
 * another and stops starting new ones at the duration; in-flight requests then get `--graceful-stop` to
 * finish before they are aborted (counted as interrupted iterations, as k6 does). A run is always bounded
 * in count and in time, and by default only talks to loopback hosts (`--allow-remote` to lift that).
 *
 *   deno task load [--scenario chat_stream|multiturn_sessions|mixed] [--base-url URL] [--api-key KEY]
 *                  [--model ID] [--vus N] [--iterations N] [--duration 60s] [--max-tokens N] [--turns N]
 *                  [--kv-policy SPEC] [--graceful-stop 10s] [--allow-remote] [--json OUT] [--quiet]
 *
 * `--kv-policy` takes the one KV-policy spec syntax (src/kv/policy_spec.ts: `lethe`,
 * `lethe:mode=fixed,budget=128` or JSON). Environment: BASE_URL, API_KEY (or LETHE_API_KEY), MODEL. Exit codes: 0 all thresholds passed, 99 a threshold was
 * crossed (like k6), 2 bad arguments / refused target / server unreachable.
 *
 * Metrics (k6 names): http_reqs, http_req_failed (status not 2xx/3xx or a network error),
 * http_req_duration (until the body is read), checks, and the custom ones of the k6 scripts: ttft (here: the
 * first SSE event carrying generated text, a true time to first token), tokens_per_second (per request),
 * generated_tokens, turn_prefilled_tokens, turn_cached_tokens.
 */
import { parseArgs } from "node:util";
import { Client as HttpClient } from "../src/client/http.ts";
import { quantile, type TrendStats, trendStats } from "../src/client/stats.ts";
import { parsePolicyText, PolicySpecSyntaxError } from "../src/kv/policy_spec.ts";
import {
  CHAT_STREAM_CHECKS,
  chatStreamBody,
  COMPLETION_CHECKS,
  completionBody,
  parseDuration,
  parseSSE,
  pickModel,
  PROMPTS,
  responseView,
  SCENARIOS,
  SESSION_CREATE_CHECKS,
  SESSION_DELETE_CHECKS,
  sessionIdOf,
  sessionTurnBody,
  sessionTurnChecks,
  usageOf,
} from "./k6/scenarios.js";

export const SCENARIO_NAMES = ["chat_stream", "multiturn_sessions", "mixed"] as const;
export type ScenarioName = typeof SCENARIO_NAMES[number];

/** Hard caps: whatever the flags say, a run stays bounded. */
export const LIMITS = { maxVus: 256, maxIterations: 100_000, maxDurationMs: 3_600_000 };

export class LoadConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LoadConfigError";
  }
}

export interface LoadOptions {
  scenario: ScenarioName;
  baseUrl: string;
  apiKey?: string;
  /** The model id requests name (default: the first of the server's GET /v1/models). */
  model?: string;
  /** Allow a non-loopback target (default: refused). */
  allowRemote?: boolean;
  /** Overrides of the scenario's parameters (for `mixed`: vus/iterations scale every part). */
  vus?: number;
  iterations?: number;
  duration?: string | number;
  maxTokens?: number;
  turns?: number;
  kvPolicy?: Record<string, unknown>;
  gracefulStop?: string | number;
  requestTimeout?: string | number;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
  /** Return every trend's raw samples too (`Summary.samples`), e.g. to pool several runs. */
  keepSamples?: boolean;
}

export type { TrendStats };

export interface ThresholdResult {
  metric: string;
  expr: string;
  value: number | null;
  ok: boolean;
}

export interface Summary {
  scenario: ScenarioName;
  target: string;
  params: Record<string, unknown>;
  elapsedMs: number;
  iterations: { complete: number; interrupted: number };
  requests: number;
  failures: number;
  /** Failed requests by "status error-code". */
  failuresBy: Record<string, number>;
  failedRate: number;
  checks: Record<string, { pass: number; fail: number }>;
  checksRate: number;
  latency: TrendStats | null;
  ttft: TrendStats | null;
  generatedTokens: number;
  /** Aggregate: generated tokens / elapsed wall time. */
  tokensPerSecond: number;
  trends: Record<string, TrendStats>;
  thresholds: ThresholdResult[];
  ok: boolean;
  /** With `keepSamples`: the raw samples of every trend (ms for latencies). */
  samples?: Record<string, number[]>;
}

const LOOPBACK_NAMES = new Set(["localhost", "::1", "[::1]"]);

/** True for 127.0.0.0/8, ::1 and localhost. */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.toLowerCase();
  if (LOOPBACK_NAMES.has(h) || h.endsWith(".localhost")) return true;
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(h);
  return m !== null && Number(m[1]) === 127 && m.slice(2).every((x) => Number(x) <= 255);
}

/** Validate the target: http(s) URL, loopback unless `allowRemote`. Returns the base URL without a trailing /. */
export function checkTarget(baseUrl: string, allowRemote = false): string {
  let u: URL;
  try {
    u = new URL(baseUrl);
  } catch {
    throw new LoadConfigError(`--base-url: not a URL: ${JSON.stringify(baseUrl)}`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") {
    throw new LoadConfigError(
      `--base-url: only http:// and https:// targets are supported (got ${u.protocol})`,
    );
  }
  if (!allowRemote && !isLoopbackHost(u.hostname)) {
    throw new LoadConfigError(
      `refusing non-loopback target ${u.host}: load tests only run against 127.0.0.1/localhost/::1 ` +
        `unless --allow-remote is given`,
    );
  }
  return u.origin + u.pathname.replace(/\/+$/, "");
}

function positiveInt(name: string, v: number | undefined, fallback: number | undefined, max: number): number {
  const x = v ?? fallback ?? 1;
  if (!Number.isInteger(x) || x < 1) {
    throw new LoadConfigError(`--${name} must be a positive integer (got ${v})`);
  }
  if (x > max) throw new LoadConfigError(`--${name} must be at most ${max} (got ${x})`);
  return x;
}

function durationMs(name: string, v: string | number | undefined, fallback: string | number): number {
  const ms = parseDuration(v ?? fallback);
  if (!Number.isFinite(ms) || ms <= 0) {
    throw new LoadConfigError(`--${name}: expected a duration like 90s, 2m or 1500ms (got ${v})`);
  }
  if (ms > LIMITS.maxDurationMs) throw new LoadConfigError(`--${name} must be at most 1h`);
  return ms;
}

// ---------------------------------------------------------------------------------------------------------
// Metrics

class Recorder {
  requests = 0;
  failed = 0;
  /** Failed requests by "status error-code" (status 0: a network error or timeout). */
  failedBy: Record<string, number> = {};
  trends = new Map<string, number[]>();
  counters = new Map<string, number>();
  checks = new Map<string, { pass: number; fail: number }>();

  add(trend: string, v: number) {
    let a = this.trends.get(trend);
    if (!a) this.trends.set(trend, a = []);
    a.push(v);
  }
  count(name: string, v: number) {
    this.counters.set(name, (this.counters.get(name) ?? 0) + v);
  }
  /** k6's check(): every predicate counted under its name; true when all passed. */
  check(r: View, predicates: Record<string, (r: View) => boolean>): boolean {
    let all = true;
    for (const [name, f] of Object.entries(predicates)) {
      let ok = false;
      try {
        ok = f(r) === true;
      } catch {
        ok = false;
      }
      let c = this.checks.get(name);
      if (!c) this.checks.set(name, c = { pass: 0, fail: 0 });
      if (ok) c.pass++;
      else c.fail++;
      all &&= ok;
    }
    return all;
  }
}

interface View {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** Thrown out of an iteration when the hard stop aborted its request. */
class Interrupted extends Error {}

// ---------------------------------------------------------------------------------------------------------
// HTTP

class Client {
  readonly http: HttpClient;
  constructor(
    base: string,
    apiKey: string,
    readonly rec: Recorder,
    readonly stop: AbortSignal,
    timeoutMs: number,
  ) {
    this.http = new HttpClient(base, { apiKey, timeoutMs });
  }

  /**
   * One request, recorded like k6 records it (http_reqs, http_req_failed, http_req_duration); a network
   * error or timeout is a failed request with status 0. With `stream`, the body is read event by event and
   * `ttft` is the time to the first event carrying generated text.
   */
  async request(method: string, path: string, body: unknown, stream = false): Promise<View> {
    if (this.stop.aborted) throw new Interrupted();
    const t0 = performance.now();
    let view: View;
    try {
      const r = await this.http.request(method, path, body, { stream, signal: this.stop });
      view = responseView(r.status, Object.fromEntries(r.headers.entries()), r.text) as View;
      if (r.sse?.ttftMs != null) this.rec.add("ttft", r.sse.ttftMs);
    } catch (e) {
      if (this.stop.aborted) throw new Interrupted();
      view = responseView(
        0,
        { "x-driver-error": String((e as Error)?.message ?? e).split("\n")[0] },
        "",
      ) as View;
    }
    this.rec.requests++;
    if (view.status < 200 || view.status >= 400) {
      this.rec.failed++;
      let code = view.headers["x-driver-error"] ?? "";
      try {
        code ||= JSON.parse(view.body)?.error?.code ?? "";
      } catch { /* not JSON */ }
      const key = `${view.status} ${code}`.trim();
      this.rec.failedBy[key] = (this.rec.failedBy[key] ?? 0) + 1;
    }
    this.rec.add("http_req_duration", performance.now() - t0);
    return view;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Scenario iterations (mirroring loadtest/k6/requests.js)

interface Params {
  model: string;
  max_tokens: number;
  temperature: number;
  turns: number;
  max_prefill: number;
  kv_policy?: Record<string, unknown>;
}

function recordTokens(rec: Recorder, completionTokens: number, ms: number) {
  rec.count("generated_tokens", completionTokens);
  if (ms > 0) rec.add("tokens_per_second", completionTokens / (ms / 1000));
}

async function chatStream(c: Client, prompt: string, p: Params) {
  const t0 = performance.now();
  const r = await c.request("POST", "/v1/chat/completions", chatStreamBody(prompt, p), true);
  c.rec.check(r, CHAT_STREAM_CHECKS);
  if (r.status === 200) {
    const sse = parseSSE(r.body);
    if (sse.usage) recordTokens(c.rec, sse.usage.completion_tokens, performance.now() - t0);
  }
}

async function completion(c: Client, prompt: string, p: Params) {
  const t0 = performance.now();
  const r = await c.request("POST", "/v1/completions", completionBody(prompt, p));
  c.rec.check(r, COMPLETION_CHECKS);
  const u = usageOf(r);
  if (u) recordTokens(c.rec, u.completion_tokens, performance.now() - t0);
}

async function multiturnSession(c: Client, vu: number, p: Params) {
  const cr = await c.request("POST", "/v1/sessions", p.kv_policy ? { kv_policy: p.kv_policy } : {});
  if (!c.rec.check(cr, SESSION_CREATE_CHECKS)) return;
  const id = sessionIdOf(cr)!;
  try {
    let prev = null;
    for (let t = 0; t < p.turns; t++) {
      const t0 = performance.now();
      const r = await c.request("POST", "/v1/chat/completions", sessionTurnBody(id, t, vu, p));
      c.rec.check(r, sessionTurnChecks(t, prev, p.max_prefill));
      const u = usageOf(r);
      if (!u) break;
      recordTokens(c.rec, u.completion_tokens, performance.now() - t0);
      c.rec.add("turn_cached_tokens", u.prompt_tokens_details.cached_tokens);
      if (t > 0) c.rec.add("turn_prefilled_tokens", u.prompt_tokens - u.prompt_tokens_details.cached_tokens);
      prev = u;
    }
  } finally {
    if (!c.stop.aborted) {
      const del = await c.request("DELETE", `/v1/sessions/${id}`, undefined);
      c.rec.check(del, SESSION_DELETE_CHECKS);
    }
  }
}

/** The shape of an entry of SCENARIOS (loadtest/k6/scenarios.js). */
interface PartDef {
  vus?: number;
  iterations?: number;
  max_tokens?: number;
  temperature?: number;
  turns?: number;
  max_prefill?: number;
  kv_policy?: Record<string, unknown>;
}

interface ScenarioDef extends PartDef {
  duration: string;
  parts?: Record<string, PartDef>;
  thresholds?: Record<string, string[]>;
}

interface Part {
  name: string;
  vus: number;
  iterations: number;
  run: (c: Client, vu: number, iter: number) => Promise<void>;
}

function buildParts(
  o: LoadOptions,
  model = o.model ?? "",
): { parts: Part[]; durationMs: number; thresholds: Record<string, string[]> } {
  const sc = SCENARIOS as unknown as Record<string, ScenarioDef>;
  const prompt = (vu: number, iter: number) => PROMPTS[(vu + iter) % PROMPTS.length];
  const mt = sc.multiturn_sessions;
  const params = (base: PartDef): Params => ({
    model,
    max_tokens: positiveInt("max-tokens", o.maxTokens, base.max_tokens ?? 32, 4096),
    temperature: base.temperature ?? 0,
    turns: positiveInt("turns", o.turns, base.turns ?? mt.turns ?? 4, 1000),
    max_prefill: mt.max_prefill!,
    kv_policy: o.kvPolicy ?? mt.kv_policy,
  });
  const S = sc[o.scenario];
  const durationMsV = durationMs("duration", o.duration, S.duration);
  const vus = (d: number | undefined) => positiveInt("vus", o.vus, d, LIMITS.maxVus);
  const iters = (d: number | undefined) => positiveInt("iterations", o.iterations, d, LIMITS.maxIterations);
  let parts: Part[];
  if (o.scenario === "chat_stream") {
    const p = params(S);
    parts = [{
      name: "chat_stream",
      vus: vus(S.vus!),
      iterations: iters(S.iterations!),
      run: (c, vu, it) => chatStream(c, prompt(vu, it), p),
    }];
  } else if (o.scenario === "multiturn_sessions") {
    const p = params(S);
    parts = [{
      name: "multiturn_sessions",
      vus: vus(S.vus!),
      iterations: iters(S.iterations!),
      run: (c, vu) => multiturnSession(c, vu, p),
    }];
  } else {
    const P = S.parts!;
    const cs = params(P.chat_stream);
    const cp = params(P.completions);
    const ms = params(P.multiturn_sessions);
    parts = [
      {
        name: "chat_stream",
        vus: vus(P.chat_stream.vus),
        iterations: iters(P.chat_stream.iterations),
        run: (c, vu, it) => chatStream(c, prompt(vu, it), cs),
      },
      {
        name: "completions",
        vus: vus(P.completions.vus),
        iterations: iters(P.completions.iterations),
        run: (c, vu, it) => completion(c, prompt(vu, it), cp),
      },
      {
        name: "multiturn_sessions",
        vus: vus(P.multiturn_sessions.vus),
        iterations: iters(P.multiturn_sessions.iterations),
        run: (c, vu) => multiturnSession(c, vu, ms),
      },
    ];
  }
  const total = parts.reduce((a, p) => a + p.vus, 0);
  if (total > LIMITS.maxVus) throw new LoadConfigError(`at most ${LIMITS.maxVus} VUs in all (got ${total})`);
  return { parts, durationMs: durationMsV, thresholds: S.thresholds ?? {} };
}

// ---------------------------------------------------------------------------------------------------------
// Thresholds (k6 syntax: "rate<0.01", "p(95)<2000", "avg<100", "med<=5", "count>0")

const THRESHOLD_RE =
  /^\s*(rate|count|avg|min|max|med|p\((\d+(?:\.\d+)?)\))\s*(<=|>=|<|>|===|==|!=)\s*(-?\d+(?:\.\d+)?)\s*$/;

export function evalThreshold(
  expr: string,
  metric: { rate?: number; count?: number; values?: number[] },
): number | null | "bad" {
  const m = THRESHOLD_RE.exec(expr);
  if (!m) return "bad";
  const agg = m[1];
  if (agg === "rate") return metric.rate ?? null;
  if (agg === "count") return metric.count ?? null;
  const st = trendStats(metric.values ?? []);
  if (!st) return null;
  if (m[2] !== undefined) return quantile(metric.values!, Number(m[2]) / 100);
  return st[agg as "avg" | "min" | "max" | "med"];
}

function compare(value: number, op: string, bound: number): boolean {
  switch (op) {
    case "<":
      return value < bound;
    case "<=":
      return value <= bound;
    case ">":
      return value > bound;
    case ">=":
      return value >= bound;
    case "!=":
      return value !== bound;
    default:
      return value === bound;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Run

/** Run one scenario to completion (bounded by iterations and duration) and summarize it. */
export async function runLoad(o: LoadOptions): Promise<Summary> {
  if (!(SCENARIO_NAMES as readonly string[]).includes(o.scenario)) {
    throw new LoadConfigError(`--scenario must be one of ${SCENARIO_NAMES.join(", ")} (got ${o.scenario})`);
  }
  const base = checkTarget(o.baseUrl, o.allowRemote);
  buildParts(o); // validate before touching the network
  const model = o.model ?? await discoverModel(base, o.apiKey ?? "");
  const { parts, durationMs: dur, thresholds } = buildParts(o, model);
  const graceMs = durationMs("graceful-stop", o.gracefulStop, "10s");
  const timeoutMs = durationMs("request-timeout", o.requestTimeout, "120s");
  const rec = new Recorder();
  const hardStop = new AbortController();
  const t0 = performance.now();
  const deadline = t0 + dur;
  const timer = setTimeout(() => hardStop.abort(), dur + graceMs);
  const client = new Client(base, o.apiKey ?? "", rec, hardStop.signal, timeoutMs);
  let complete = 0;
  let interrupted = 0;
  let vuId = 0;
  const runVU = async (part: Part, vu: number) => {
    for (let it = 0; it < part.iterations; it++) {
      if (performance.now() >= deadline || hardStop.signal.aborted) return;
      try {
        await part.run(client, vu, it);
        complete++;
      } catch (e) {
        if (e instanceof Interrupted || hardStop.signal.aborted) {
          interrupted++;
          return;
        }
        throw e;
      }
    }
  };
  o.log?.(
    `scenario ${o.scenario} → ${base} (model ${model}): ` +
      parts.map((p) => `${p.name} ${p.vus} VUs × ${p.iterations} iterations`).join(", ") +
      `, max duration ${dur / 1000}s`,
  );
  try {
    await Promise.all(parts.flatMap((p) => Array.from({ length: p.vus }, () => runVU(p, ++vuId))));
  } finally {
    clearTimeout(timer);
  }
  const elapsedMs = performance.now() - t0;

  const checkTotals = [...rec.checks.values()].reduce(
    (a, c) => ({ pass: a.pass + c.pass, fail: a.fail + c.fail }),
    { pass: 0, fail: 0 },
  );
  const checksRate = checkTotals.pass + checkTotals.fail > 0
    ? checkTotals.pass / (checkTotals.pass + checkTotals.fail)
    : 1;
  const failedRate = rec.requests > 0 ? rec.failed / rec.requests : 0;
  const metricFor = (name: string) => {
    if (name === "http_req_failed") return { rate: failedRate, count: rec.failed };
    if (name === "checks") return { rate: checksRate, count: checkTotals.pass };
    if (name === "http_reqs") return { count: rec.requests, rate: rec.requests / (elapsedMs / 1000) };
    if (rec.counters.has(name)) return { count: rec.counters.get(name) };
    return { values: rec.trends.get(name) ?? [] };
  };
  const thr: ThresholdResult[] = [];
  for (const [metric, exprs] of Object.entries(thresholds)) {
    for (const expr of exprs) {
      const v = evalThreshold(expr, metricFor(metric));
      if (v === "bad") throw new LoadConfigError(`threshold ${metric}: cannot parse ${JSON.stringify(expr)}`);
      const m = THRESHOLD_RE.exec(expr)!;
      thr.push({ metric, expr, value: v, ok: v !== null && compare(v, m[3], Number(m[4])) });
    }
  }
  const trends: Record<string, TrendStats> = {};
  for (const [k, v] of rec.trends) trends[k] = trendStats(v)!;
  const generated = rec.counters.get("generated_tokens") ?? 0;
  return {
    scenario: o.scenario,
    target: base,
    params: {
      model,
      duration_s: dur / 1000,
      parts: parts.map((p) => ({ name: p.name, vus: p.vus, iterations: p.iterations })),
    },
    elapsedMs,
    iterations: { complete, interrupted },
    requests: rec.requests,
    failures: rec.failed,
    failuresBy: rec.failedBy,
    failedRate,
    checks: Object.fromEntries(rec.checks),
    checksRate,
    latency: trends.http_req_duration ?? null,
    ttft: trends.ttft ?? null,
    generatedTokens: generated,
    tokensPerSecond: generated / (elapsedMs / 1000),
    trends,
    thresholds: thr,
    ok: thr.every((t) => t.ok),
    ...(o.keepSamples ? { samples: Object.fromEntries(rec.trends) } : {}),
  };
}

// ---------------------------------------------------------------------------------------------------------
// k6-like text summary

const fmtMs = (v: number) => v >= 1000 ? `${(v / 1000).toFixed(2)}s` : `${v.toFixed(2)}ms`;
const dots = (name: string, width = 32) => `${name}${".".repeat(Math.max(2, width - name.length))}:`;

function trendLine(name: string, s: TrendStats, time: boolean): string {
  const f = time ? fmtMs : (v: number) => v.toFixed(1);
  return `     ${dots(name)} avg=${f(s.avg)} min=${f(s.min)} med=${f(s.med)} max=${f(s.max)} ` +
    `p(90)=${f(s.p90)} p(95)=${f(s.p95)} p(99)=${f(s.p99)}`;
}

export function formatSummary(s: Summary): string {
  const out: string[] = [];
  const parts = (s.params.parts as { name: string; vus: number; iterations: number }[])
    .map((p) => `${p.name}: ${p.vus} VUs × ${p.iterations} iterations`).join(", ");
  out.push(`  scenario: ${s.scenario} (${parts}, maxDuration ${s.params.duration_s}s)`);
  out.push(`  target:   ${s.target}`);
  out.push("");
  for (const [name, c] of Object.entries(s.checks)) {
    const ok = c.fail === 0;
    out.push(`     ${ok ? "✓" : "✗"} ${name}${ok ? "" : `  ↳ ${c.pass}/${c.pass + c.fail} passed`}`);
  }
  out.push("");
  const tot = Object.values(s.checks).reduce((a, c) => [a[0] + c.pass, a[1] + c.fail], [0, 0]);
  out.push(`     ${dots("checks")} ${(s.checksRate * 100).toFixed(2)}% ✓ ${tot[0]} ✗ ${tot[1]}`);
  out.push(
    `     ${dots("generated_tokens")} ${s.generatedTokens}  ${
      s.tokensPerSecond.toFixed(1)
    } tokens/s (aggregate)`,
  );
  if (s.latency) out.push(trendLine("http_req_duration", s.latency, true));
  out.push(
    `     ${dots("http_req_failed")} ${(s.failedRate * 100).toFixed(2)}% ${s.failures} out of ${s.requests}`,
  );
  out.push(`     ${dots("http_reqs")} ${s.requests}  ${(s.requests / (s.elapsedMs / 1000)).toFixed(2)}/s`);
  out.push(
    `     ${
      dots("iterations")
    } ${s.iterations.complete} complete, ${s.iterations.interrupted} interrupted  ` +
      `(${(s.elapsedMs / 1000).toFixed(1)}s)`,
  );
  for (const [name, st] of Object.entries(s.trends)) {
    if (name === "http_req_duration") continue;
    out.push(trendLine(name, st, name === "ttft"));
  }
  out.push("");
  out.push(
    `  requests ${s.requests}, failures ${s.failures}, latency p50/p95/p99 ` +
      (s.latency ? `${fmtMs(s.latency.med)}/${fmtMs(s.latency.p95)}/${fmtMs(s.latency.p99)}` : "n/a") +
      `, TTFT p50/p95 ${s.ttft ? `${fmtMs(s.ttft.med)}/${fmtMs(s.ttft.p95)}` : "n/a"}, ` +
      `${s.tokensPerSecond.toFixed(1)} tokens/s`,
  );
  for (const t of s.thresholds) {
    out.push(
      `  ${t.ok ? "✓" : "✗"} threshold ${t.metric} ${t.expr} (value ${
        t.value === null ? "n/a" : +t.value.toFixed(4)
      })`,
    );
  }
  return out.join("\n");
}

// ---------------------------------------------------------------------------------------------------------
// CLI

/** The first model the server serves (GET /v1/models), for runs that name none. */
async function discoverModel(base: string, apiKey: string): Promise<string> {
  let r;
  try {
    r = await new HttpClient(base, { apiKey, timeoutMs: 10_000 }).get("/v1/models");
  } catch (e) {
    throw new LoadConfigError(
      `cannot reach ${base}/v1/models: ${String((e as Error)?.message ?? e).split("\n")[0]}`,
    );
  }
  try {
    return pickModel("", r.text);
  } catch (e) {
    throw new LoadConfigError(`GET /v1/models (status ${r.status}): ${(e as Error).message}`);
  }
}

async function preflight(base: string): Promise<void> {
  try {
    const r = await fetch(`${base}/health`, { signal: AbortSignal.timeout(5000) });
    await r.body?.cancel();
  } catch (e) {
    throw new LoadConfigError(
      `cannot reach ${base}/health: ${String((e as Error)?.message ?? e).split("\n")[0]}`,
    );
  }
}

export async function main(args: string[]): Promise<number> {
  let v;
  try {
    v = parseArgs({
      args,
      options: {
        scenario: { type: "string", default: "chat_stream" },
        "base-url": { type: "string" },
        "api-key": { type: "string" },
        model: { type: "string" },
        vus: { type: "string" },
        iterations: { type: "string" },
        duration: { type: "string" },
        "max-tokens": { type: "string" },
        turns: { type: "string" },
        "kv-policy": { type: "string" },
        "graceful-stop": { type: "string" },
        "request-timeout": { type: "string" },
        "allow-remote": { type: "boolean", default: false },
        json: { type: "string" },
        quiet: { type: "boolean", default: false },
        help: { type: "boolean", default: false },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (e) {
    console.error(`load: ${(e as Error).message.split("\n")[0]}`);
    return 2;
  }
  if (v.help) {
    console.log(
      "deno task load [--scenario chat_stream|multiturn_sessions|mixed] [--base-url URL] [--api-key KEY]\n" +
        "  [--model ID] [--vus N] [--iterations N] [--duration 60s] [--max-tokens N] [--turns N] [--kv-policy SPEC]\n" +
        "  [--graceful-stop 10s] [--request-timeout 120s] [--allow-remote] [--json OUT] [--quiet]",
    );
    return 0;
  }
  const int = (name: string, s: string | undefined) => {
    if (s === undefined) return undefined;
    if (!/^\d+$/.test(s)) throw new LoadConfigError(`--${name} must be a positive integer (got ${s})`);
    return Number(s);
  };
  try {
    let kvPolicy: Record<string, unknown> | undefined;
    if (v["kv-policy"] !== undefined) {
      try {
        kvPolicy = parsePolicyText(v["kv-policy"]);
      } catch (e) {
        if (e instanceof PolicySpecSyntaxError) throw new LoadConfigError(`--kv-policy: ${e.message}`);
        throw e;
      }
    }
    const opts: LoadOptions = {
      scenario: v.scenario as ScenarioName,
      baseUrl: v["base-url"] ?? Deno.env.get("BASE_URL") ?? "http://127.0.0.1:8080",
      apiKey: v["api-key"] ?? Deno.env.get("API_KEY") ?? Deno.env.get("LETHE_API_KEY") ?? "",
      model: v.model ?? (Deno.env.get("MODEL") || undefined),
      allowRemote: v["allow-remote"],
      vus: int("vus", v.vus),
      iterations: int("iterations", v.iterations),
      duration: v.duration,
      maxTokens: int("max-tokens", v["max-tokens"]),
      turns: int("turns", v.turns),
      kvPolicy,
      gracefulStop: v["graceful-stop"],
      requestTimeout: v["request-timeout"],
      log: v.quiet ? undefined : (l) => console.error(l),
    };
    // Validate everything (target, numbers) before touching the network.
    if (!(SCENARIO_NAMES as readonly string[]).includes(opts.scenario)) {
      throw new LoadConfigError(
        `--scenario must be one of ${SCENARIO_NAMES.join(", ")} (got ${opts.scenario})`,
      );
    }
    const base = checkTarget(opts.baseUrl, opts.allowRemote);
    buildParts(opts);
    await preflight(base);
    const summary = await runLoad(opts);
    console.log(formatSummary(summary));
    if (v.json) await Deno.writeTextFile(v.json, JSON.stringify(summary, null, 2) + "\n");
    return summary.ok ? 0 : 99;
  } catch (e) {
    if (e instanceof LoadConfigError) {
      console.error(`load: ${e.message}`);
      return 2;
    }
    throw e;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
