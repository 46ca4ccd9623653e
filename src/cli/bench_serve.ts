/**
 * `deno task bench:serve`: serving benchmark of the HTTP service with persistent sessions, per KV policy.
 *
 * Starts the server itself (`src/server/main.ts` as a subprocess on a free loopback port, with a temporary
 * Deno KV store), then for each policy (default: full, then lethe) runs S concurrent multi-turn sessions of T
 * turns each (streaming chat, greedy, N new tokens per turn; turn t's user message is a paragraph of the
 * TinyStories text) and reports side by side:
 * - aggregate generated tokens/s over the concurrent phase, TTFT p50/p95 (first content delta), per-turn
 *   latency, prompt tokens actually prefilled per turn (usage: prompt_tokens - cached_tokens), kept tokens;
 * - resume cost: stored bytes per session (GET /v1/sessions/:id), and the TTFT of one more resumed turn
 *   (store load + decode + prefill of the new message) against sending the same whole conversation WITHOUT
 *   session_id as a fresh request (re-prefilling the whole history), measured one request at a time.
 *
 *   deno task bench:serve [--sessions 8] [--turns 4] [--new-tokens 48] [--policy SPEC]... [--probes 4]
 *                         [--model PATH] [--backend auto] [--text FILE] [--max-batch 16] [--json OUT]
 *                         [--kv-precision f32|f16|int8]
 *
 * `--policy` is repeatable, in the one KV-policy spec syntax (src/kv/policy_spec.ts): `lethe`,
 * `lethe:mode=fixed,budget=64` or `{"name":"lethe","mode":"fixed","budget":64}`. Requests go through the
 * service's HTTP/SSE client (src/client/http.ts) and name the model the server reports on `GET /v1/models`.
 * `--kv-precision` (default f16, the server's default) is passed to the server: it sets the stored snapshot
 * precision and the live KV cache precision (f32 → f32 cache; f16 and int8 → f16 cache).
 */
import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { REPO_ROOT } from "../model/loader.ts";
import { Client } from "../client/http.ts";
import { mean, quantile } from "../client/stats.ts";
import { type ServerProcess, startServerProcess } from "../client/server_process.ts";
import { parsePolicyText, PolicySpecSyntaxError } from "../kv/policy_spec.ts";

/** The resume probe's new message: short, so the probe times loading the history, not prefilling news. */
const PROBE_MESSAGE = "Then they went home.";

class BenchError extends Error {}

interface Msg {
  role: "user" | "assistant";
  content: string;
}

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

interface TurnResult {
  status: number;
  ttftMs: number | null;
  latencyMs: number;
  usage: Usage | null;
  kv: { kept_per_layer: number[]; stored_bytes: number | null; pruning_rounds: number } | null;
  text: string;
  error: string | null;
}

// ---------------------------------------------------------------------------------------------------------
// Server and requests

function startServer(
  o: { model?: string; backend: string; kvPrecision: string; maxBatch: number; dir: string },
): Promise<ServerProcess> {
  const args = [
    "--store",
    `denokv:${resolve(o.dir, "sessions.sqlite")}`,
    "--backend",
    o.backend,
    "--max-batch",
    String(o.maxBatch),
    "--kv-precision",
    o.kvPrecision,
    "--log-level",
    "warn",
  ];
  if (o.model) args.push("--model", resolve(o.model));
  return startServerProcess({ args, logPath: resolve(o.dir, "server.log") }).catch((e) => {
    throw new BenchError((e as Error).message);
  });
}

/** One streaming chat completion, timed: TTFT = first SSE event with generated text. */
async function chatTurn(http: Client, body: Record<string, unknown>): Promise<TurnResult> {
  const r = await http.post("/v1/chat/completions", {
    ...body,
    stream: true,
    stream_options: { include_usage: true },
  }, { stream: true });
  const sse = r.sse;
  const out: TurnResult = {
    status: r.status,
    ttftMs: sse?.ttftMs ?? null,
    latencyMs: r.ms,
    usage: sse?.usage ?? null,
    kv: sse?.kv ?? null,
    text: sse?.text ?? "",
    error: sse ? sse.error : r.text.slice(0, 200),
  };
  if (sse && !sse.done && !out.error) out.error = "stream ended without [DONE]";
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// The benchmark

interface BenchConfig {
  model: string;
  sessions: number;
  turns: number;
  newTokens: number;
  probes: number;
  policies: Record<string, unknown>[];
  paragraphs: string[];
}

export interface PolicyResult {
  policy: Record<string, unknown>;
  label: string;
  wallMs: number;
  generatedTokens: number;
  tokensPerSecond: number;
  ttftMs: { p50: number; p95: number };
  errors: number;
  perTurn: {
    turn: number;
    latencyMsMean: number;
    latencyMsP50: number;
    ttftMsP50: number;
    promptTokensMean: number;
    cachedTokensMean: number;
    prefilledTokensMean: number;
    completionTokensMean: number;
  }[];
  session: {
    tokensMean: number;
    keptPerLayerMean: number[];
    storedBytesMean: number;
    storedBytesPerToken: number;
    pruningRoundsMean: number;
  };
  resume: {
    probes: number;
    resumedTtftMsP50: number;
    resumedPrefilledMean: number;
    freshTtftMsP50: number;
    freshPrefilledMean: number;
  };
}

function policyLabel(p: Record<string, unknown>): string {
  const { name, ...rest } = p;
  const extra = Object.entries(rest).map(([k, v]) => `${k}=${v}`).join(",");
  return extra ? `${name}(${extra})` : String(name);
}

function userMessage(cfg: BenchConfig, session: number, turn: number): string {
  return cfg.paragraphs[(session * cfg.turns + turn) % cfg.paragraphs.length];
}

async function runPolicy(
  http: Client,
  cfg: BenchConfig,
  policy: Record<string, unknown>,
): Promise<PolicyResult> {
  const ids: string[] = [];
  for (let s = 0; s < cfg.sessions; s++) {
    const r = await http.post("/v1/sessions", { kv_policy: policy });
    if (r.status !== 201) throw new BenchError(`POST /v1/sessions: ${r.status} ${r.text.slice(0, 200)}`);
    ids.push(r.json!.id as string);
  }
  const convs: Msg[][] = ids.map(() => []);
  const results: TurnResult[][] = ids.map(() => []);
  const t0 = performance.now();
  await Promise.all(ids.map(async (id, s) => {
    for (let t = 0; t < cfg.turns; t++) {
      const content = userMessage(cfg, s, t);
      const r = await chatTurn(http, {
        model: cfg.model,
        session_id: id,
        messages: [{ role: "user", content }],
        max_tokens: cfg.newTokens,
        temperature: 0,
      });
      results[s].push(r);
      if (r.error) break;
      convs[s].push({ role: "user", content }, { role: "assistant", content: r.text });
    }
  }));
  const wallMs = performance.now() - t0;
  const all = results.flat();
  const errors = all.filter((r) => r.error !== null);
  if (errors.length > 0) {
    console.error(
      `  ${policyLabel(policy)}: ${errors.length} failed turns, first: ${errors[0].status} ${
        errors[0].error
      }`,
    );
  }
  const ok = all.filter((r) => r.error === null && r.usage);
  const generated = ok.reduce((a, r) => a + r.usage!.completion_tokens, 0);
  const perTurn = Array.from({ length: cfg.turns }, (_, t) => {
    const rs = results.map((x) => x[t]).filter((r) => r && r.error === null && r.usage);
    return {
      turn: t + 1,
      latencyMsMean: mean(rs.map((r) => r.latencyMs)),
      latencyMsP50: quantile(rs.map((r) => r.latencyMs), 0.5),
      ttftMsP50: quantile(rs.map((r) => r.ttftMs ?? NaN), 0.5),
      promptTokensMean: mean(rs.map((r) => r.usage!.prompt_tokens)),
      cachedTokensMean: mean(rs.map((r) => r.usage!.prompt_tokens_details.cached_tokens)),
      prefilledTokensMean: mean(
        rs.map((r) => r.usage!.prompt_tokens - r.usage!.prompt_tokens_details.cached_tokens),
      ),
      completionTokensMean: mean(rs.map((r) => r.usage!.completion_tokens)),
    };
  });

  // Resume cost: what each session stores.
  const infos: {
    tokens: number;
    kv: { kept_per_layer: number[]; stored_bytes: number; pruning_rounds: number };
  }[] = [];
  for (const id of ids) {
    const r = await http.get(`/v1/sessions/${id}`);
    if (r.status !== 200) throw new BenchError(`GET /v1/sessions/${id}: ${r.status}`);
    infos.push(r.json as (typeof infos)[number]);
  }
  const nLayers = infos[0].kv.kept_per_layer.length;
  const keptMean = Array.from({ length: nLayers }, (_, l) => mean(infos.map((i) => i.kv.kept_per_layer[l])));
  const storedMean = mean(infos.map((i) => i.kv.stored_bytes));
  const tokensMean = mean(infos.map((i) => i.tokens));

  // Resume vs re-prefill, one request at a time (alternating order), max_tokens 1.
  const probes = Math.min(cfg.probes, ids.length);
  const resumed: TurnResult[] = [];
  const fresh: TurnResult[] = [];
  for (let s = 0; s < probes; s++) {
    if (results[s].some((r) => r.error !== null)) continue;
    const content = PROBE_MESSAGE;
    const withSession = () =>
      chatTurn(http, {
        model: cfg.model,
        session_id: ids[s],
        messages: [{ role: "user", content }],
        max_tokens: 1,
        temperature: 0,
      });
    const withoutSession = () =>
      chatTurn(http, {
        model: cfg.model,
        messages: [...convs[s], { role: "user", content }],
        kv_policy: policy,
        max_tokens: 1,
        temperature: 0,
      });
    if (s % 2 === 0) {
      resumed.push(await withSession());
      fresh.push(await withoutSession());
    } else {
      fresh.push(await withoutSession());
      resumed.push(await withSession());
    }
  }
  for (const r of [...resumed, ...fresh]) {
    if (r.error) throw new BenchError(`resume probe failed: ${r.status} ${r.error}`);
  }
  for (const id of ids) await http.delete(`/v1/sessions/${id}`);
  const prefilled = (r: TurnResult) => r.usage!.prompt_tokens - r.usage!.prompt_tokens_details.cached_tokens;
  const ttfts = ok.map((r) => r.ttftMs).filter((x): x is number => x !== null);
  return {
    policy,
    label: policyLabel(policy),
    wallMs,
    generatedTokens: generated,
    tokensPerSecond: generated / (wallMs / 1000),
    ttftMs: { p50: quantile(ttfts, 0.5), p95: quantile(ttfts, 0.95) },
    errors: errors.length,
    perTurn,
    session: {
      tokensMean,
      keptPerLayerMean: keptMean,
      storedBytesMean: storedMean,
      storedBytesPerToken: storedMean / tokensMean,
      pruningRoundsMean: mean(infos.map((i) => i.kv.pruning_rounds)),
    },
    resume: {
      probes: resumed.length,
      resumedTtftMsP50: quantile(resumed.map((r) => r.ttftMs ?? NaN), 0.5),
      resumedPrefilledMean: mean(resumed.map(prefilled)),
      freshTtftMsP50: quantile(fresh.map((r) => r.ttftMs ?? NaN), 0.5),
      freshPrefilledMean: mean(fresh.map(prefilled)),
    },
  };
}

function formatTable(rows: PolicyResult[], cfg: BenchConfig): string {
  const f1 = (x: number) => Number.isFinite(x) ? x.toFixed(1) : "n/a";
  const f0 = (x: number) => Number.isFinite(x) ? Math.round(x).toString() : "n/a";
  const lines: [string, ...string[]][] = [
    ["generated tokens/s (aggregate)", ...rows.map((r) => f1(r.tokensPerSecond))],
    [
      "generated tokens / wall s",
      ...rows.map((r) => `${r.generatedTokens} / ${(r.wallMs / 1000).toFixed(2)}`),
    ],
    ["TTFT p50 / p95 (ms)", ...rows.map((r) => `${f1(r.ttftMs.p50)} / ${f1(r.ttftMs.p95)}`)],
  ];
  for (let t = 0; t < cfg.turns; t++) {
    lines.push([
      `turn ${t + 1} latency mean / p50 (ms)`,
      ...rows.map((r) => `${f1(r.perTurn[t].latencyMsMean)} / ${f1(r.perTurn[t].latencyMsP50)}`),
    ]);
  }
  for (let t = 0; t < cfg.turns; t++) {
    lines.push([
      `turn ${t + 1} prompt / cached / prefilled`,
      ...rows.map((r) =>
        `${f0(r.perTurn[t].promptTokensMean)} / ${f0(r.perTurn[t].cachedTokensMean)} / ${
          f0(r.perTurn[t].prefilledTokensMean)
        }`
      ),
    ]);
  }
  lines.push(
    ["session tokens (mean)", ...rows.map((r) => f0(r.session.tokensMean))],
    ["kept tokens per layer (mean)", ...rows.map((r) => r.session.keptPerLayerMean.map(f0).join(","))],
    ["pruning rounds per session", ...rows.map((r) => f1(r.session.pruningRoundsMean))],
    ["stored bytes per session (mean)", ...rows.map((r) => f0(r.session.storedBytesMean))],
    ["stored bytes per history token", ...rows.map((r) => f1(r.session.storedBytesPerToken))],
    ["resumed turn TTFT p50 (ms)", ...rows.map((r) => f1(r.resume.resumedTtftMsP50))],
    ["  prefilled tokens", ...rows.map((r) => f1(r.resume.resumedPrefilledMean))],
    ["re-prefill whole history TTFT p50 (ms)", ...rows.map((r) => f1(r.resume.freshTtftMsP50))],
    ["  prefilled tokens", ...rows.map((r) => f1(r.resume.freshPrefilledMean))],
  );
  if (rows.some((r) => r.errors > 0)) lines.push(["failed turns", ...rows.map((r) => String(r.errors))]);
  const header: [string, ...string[]] = ["", ...rows.map((r) => r.label)];
  const all = [header, ...lines];
  const w0 = Math.max(...all.map((l) => l[0].length));
  const ws = rows.map((_, i) => Math.max(...all.map((l) => l[i + 1].length)));
  return all.map((l) => l[0].padEnd(w0) + "  " + l.slice(1).map((c, i) => c.padStart(ws[i])).join("  ")).join(
    "\n",
  );
}

function parsePolicy(raw: string): Record<string, unknown> {
  try {
    return parsePolicyText(raw);
  } catch (e) {
    if (e instanceof PolicySpecSyntaxError) throw new BenchError(`--policy: ${e.message}`);
    throw e;
  }
}

function loadParagraphs(path: string): string[] {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    throw new BenchError(`cannot read --text ${path}: ${(e as Error).message.split("\n")[0]}`);
  }
  const ps = text.split(/\n\s*\n/).map((p) => p.trim().replace(/\s+/g, " "))
    .filter((p) => p.length >= 80 && p.length <= 400);
  if (ps.length === 0) throw new BenchError(`--text ${path}: no paragraphs of 80–400 characters`);
  return ps;
}

async function main(args: string[]): Promise<number> {
  const { values: v } = parseArgs({
    args,
    options: {
      sessions: { type: "string", default: "8" },
      turns: { type: "string", default: "4" },
      "new-tokens": { type: "string", default: "48" },
      probes: { type: "string", default: "4" },
      policy: { type: "string", multiple: true },
      model: { type: "string" },
      backend: { type: "string", default: "auto" },
      text: { type: "string", default: resolve(REPO_ROOT, "../shared/data/tinystories_val_dev.txt") },
      "max-batch": { type: "string", default: "16" },
      "kv-precision": { type: "string", default: "f16" },
      json: { type: "string" },
    },
    strict: true,
    allowPositionals: false,
  });
  const int = (name: string, s: string, min: number, max: number) => {
    const n = Number(s);
    if (!/^\d+$/.test(s) || n < min || n > max) {
      throw new BenchError(`--${name} must be an integer in [${min}, ${max}] (got ${s})`);
    }
    return n;
  };
  const cfg: BenchConfig = {
    model: "",
    sessions: int("sessions", v.sessions, 1, 256),
    turns: int("turns", v.turns, 1, 64),
    newTokens: int("new-tokens", v["new-tokens"], 1, 1024),
    probes: int("probes", v.probes, 0, 256),
    policies: (v.policy && v.policy.length ? v.policy : ["full", "lethe"]).map(parsePolicy),
    paragraphs: loadParagraphs(v.text),
  };
  const maxBatch = int("max-batch", v["max-batch"], 1, 1024);
  const kvPrecision = v["kv-precision"];
  if (!["f32", "f16", "int8"].includes(kvPrecision)) {
    throw new BenchError(`--kv-precision must be f32, f16 or int8 (got ${kvPrecision})`);
  }
  const dir = await Deno.makeTempDir({ prefix: "lethe-bench-serve-" });
  let server: ServerProcess | null = null;
  try {
    server = await startServer({ model: v.model, backend: v.backend, kvPrecision, maxBatch, dir });
    const http = new Client(server.url, { timeoutMs: 300_000 });
    cfg.model = await http.modelId();
    console.log(
      `bench:serve: ${server.url} model=${cfg.model} backend=${server.backend}; ${cfg.sessions} sessions × ${cfg.turns} turns × ` +
        `${cfg.newTokens} new tokens (greedy, streaming), max batch ${maxBatch}, KV ${kvPrecision}, ` +
        `Deno KV store in ${dir}`,
    );
    // Warm-up (JIT, allocator, store paths) so the first policy is not penalized.
    await runPolicy(http, {
      ...cfg,
      sessions: Math.min(2, cfg.sessions),
      turns: 2,
      newTokens: 8,
      probes: 1,
    }, {
      name: "full",
    });
    const rows: PolicyResult[] = [];
    for (const p of cfg.policies) {
      const t0 = performance.now();
      rows.push(await runPolicy(http, cfg, p));
      console.error(`  ${policyLabel(p)} done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    }
    console.log(formatTable(rows, cfg));
    console.log(
      "(resumed turn = one more session turn: store load + snapshot decode + prefill of the new message; " +
        "re-prefill = the same conversation sent without session_id; both max_tokens 1, one request at a time)",
    );
    if (v.json) {
      await Deno.writeTextFile(
        v.json,
        JSON.stringify(
          {
            config: {
              ...cfg,
              paragraphs: undefined,
              text: v.text,
              maxBatch,
              kvPrecision,
              backend: server.backend,
            },
            results: rows,
          },
          null,
          2,
        ) + "\n",
      );
    }
    return rows.every((r) => r.errors === 0) ? 0 : 1;
  } finally {
    await server?.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    if (e instanceof BenchError || (e as { code?: string })?.code?.startsWith?.("ERR_PARSE_ARGS")) {
      console.error(`bench:serve: ${(e as Error).message.split("\n")[0]}`);
      Deno.exit(2);
    }
    throw e;
  }
}
