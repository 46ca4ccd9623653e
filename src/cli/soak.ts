/**
 * `deno task soak`: the service under steady multi-turn load for a fixed time, watched for slow failure —
 * memory that keeps growing once warm, errors, latency that drifts.
 *
 *   deno task soak [--minutes 10] [--window 30s] [--session-vus 4] [--stream-vus 4] [--turns 4]
 *                  [--max-tokens 32] [--backend auto] [--model PATH] [--base-url URL --pid PID]
 *                  [--max-growth-mb 64] [--json OUT]
 *
 * Starts the server itself (src/server/main.ts as a child process on a free loopback port, a temporary Deno
 * KV store), unless `--base-url` names a running one (then `--pid` lets it read that process's memory).
 * The load is the load driver's scenarios (loadtest/driver.ts, the k6 scenarios): `--session-vus` VUs each
 * running multi-turn sessions back to back (create, `--turns` chat turns with session_id, delete) beside
 * `--stream-vus` VUs doing streamed chat completions, run in windows of `--window`. Every window records
 * requests, failures, time to first token (the streamed requests) and tokens; the server's resident memory
 * (VmRSS) is sampled every 5 s.
 *
 * The first fifth of the run (at least one window) is warm-up. The report gives, over the rest: sustained
 * requests/s and generated tokens/s, TTFT p50/p95/p99 at the stated concurrency, the error count, memory
 * growth (first warm window → last, and the least-squares slope in MB per 10 min) and latency drift (TTFT
 * p50 and p95 of the first warm window against the last). Exit code 0 when there were no errors and the
 * memory grew less than `--max-growth-mb` once warm, 1 otherwise, 2 for bad arguments.
 */
import { parseArgs } from "node:util";
import { runLoad, type Summary } from "../../loadtest/driver.ts";
import { parseDuration } from "../../loadtest/k6/scenarios.js";
import { quantile } from "../client/stats.ts";
import { type ServerProcess, startServerProcess } from "../client/server_process.ts";

class SoakError extends Error {}

export interface SoakOptions {
  minutes: number;
  windowMs: number;
  sessionVus: number;
  streamVus: number;
  turns: number;
  maxTokens: number;
  baseUrl?: string;
  pid?: number;
  serverArgs?: string[];
  maxGrowthMb: number;
  log?: (line: string) => void;
}

export interface SoakWindow {
  startS: number;
  requests: number;
  failures: number;
  checkFailures: number;
  tokens: number;
  reqPerS: number;
  tokPerS: number;
  ttftP50: number;
  ttftP95: number;
  rssMb: number | null;
  /** Failed checks by name (what the errors were). */
  failedChecks: Record<string, number>;
}

export interface SoakReport {
  minutes: number;
  concurrency: { sessionVus: number; streamVus: number; total: number };
  warmupS: number;
  requests: number;
  errors: number;
  errorRate: number;
  reqPerS: number;
  tokPerS: number;
  ttftMs: { p50: number; p95: number; p99: number; count: number };
  memory: { warmMb: number; endMb: number; growthMb: number; slopeMbPer10Min: number; peakMb: number } | null;
  drift: { ttftP50: [number, number]; ttftP95: [number, number] };
  windows: SoakWindow[];
  ok: boolean;
}

/** Resident memory of process `pid` in MB (Linux /proc), or null where it cannot be read. */
async function rssMb(pid: number | undefined): Promise<number | null> {
  if (pid === undefined) return null;
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(await Deno.readTextFile(`/proc/${pid}/status`));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

/** Least-squares slope of y over x. */
function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  if (n < 2) return 0;
  const mx = xs.reduce((a, b) => a + b, 0) / n, my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0, den = 0;
  for (let i = 0; i < n; i++) {
    num += (xs[i] - mx) * (ys[i] - my);
    den += (xs[i] - mx) ** 2;
  }
  return den > 0 ? num / den : 0;
}

const checkFailures = (s: Summary) => Object.values(s.checks).reduce((n, c) => n + c.fail, 0);

/** What failed: requests by "HTTP status error-code", then checks by name. */
function failedChecks(runs: Summary[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of runs) {
    for (const [k, n] of Object.entries(r.failuresBy)) out[`HTTP ${k}`] = (out[`HTTP ${k}`] ?? 0) + n;
    for (const [k, c] of Object.entries(r.checks)) if (c.fail) out[k] = (out[k] ?? 0) + c.fail;
  }
  return out;
}

export async function runSoak(o: SoakOptions): Promise<SoakReport> {
  let server: ServerProcess | null = null;
  let dir: string | null = null;
  const log = o.log ?? (() => {});
  try {
    let base = o.baseUrl, pid = o.pid;
    if (!base) {
      dir = await Deno.makeTempDir({ prefix: "lethe-soak-" });
      server = await startServerProcess({
        args: ["--store", `denokv:${dir}/sessions.sqlite`, "--log-level", "warn", ...(o.serverArgs ?? [])],
        logPath: `${dir}/server.log`,
      });
      base = server.url;
      pid = server.pid;
      log(`soak: server ${base} (pid ${pid}, backend ${server.backend}), log ${server.logPath}`);
    }
    const samples: { t: number; mb: number }[] = [];
    const t0 = performance.now();
    const endAt = t0 + o.minutes * 60_000;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const mb = await rssMb(pid);
        if (mb !== null) samples.push({ t: (performance.now() - t0) / 1000, mb });
        await new Promise((r) => setTimeout(r, 5000));
      }
    })();
    const windows: SoakWindow[] = [];
    const ttfts: number[][] = [];
    const load = (scenario: "multiturn_sessions" | "chat_stream", vus: number, ms: number) =>
      runLoad({
        scenario,
        baseUrl: base!,
        vus,
        iterations: 100_000,
        duration: `${ms}ms`,
        gracefulStop: "60s",
        turns: o.turns,
        maxTokens: o.maxTokens,
        keepSamples: true,
      });
    while (performance.now() < endAt - 1000) {
      const startS = (performance.now() - t0) / 1000;
      const ms = Math.min(o.windowMs, endAt - performance.now());
      const w0 = performance.now();
      const runs = await Promise.all([
        ...(o.sessionVus ? [load("multiturn_sessions", o.sessionVus, ms)] : []),
        ...(o.streamVus ? [load("chat_stream", o.streamVus, ms)] : []),
      ]);
      const secs = (performance.now() - w0) / 1000;
      const ttft = runs.flatMap((r) => r.samples?.ttft ?? []);
      ttfts.push(ttft);
      const w: SoakWindow = {
        startS,
        requests: runs.reduce((n, r) => n + r.requests, 0),
        failures: runs.reduce((n, r) => n + r.failures, 0),
        checkFailures: runs.reduce((n, r) => n + checkFailures(r), 0),
        tokens: runs.reduce((n, r) => n + r.generatedTokens, 0),
        reqPerS: 0,
        tokPerS: 0,
        ttftP50: quantile(ttft, 0.5),
        ttftP95: quantile(ttft, 0.95),
        rssMb: await rssMb(pid),
        failedChecks: failedChecks(runs),
      };
      w.reqPerS = w.requests / secs;
      w.tokPerS = w.tokens / secs;
      windows.push(w);
      log(
        `  t=${startS.toFixed(0).padStart(5)}s  ${w.requests} req (${w.reqPerS.toFixed(1)}/s)  ` +
          `${w.tokPerS.toFixed(0)} tok/s  TTFT p50/p95 ${w.ttftP50.toFixed(1)}/${w.ttftP95.toFixed(1)} ms  ` +
          `errors ${w.failures + w.checkFailures}${
            w.checkFailures || w.failures ? ` ${JSON.stringify(w.failedChecks)}` : ""
          }  RSS ${w.rssMb?.toFixed(0) ?? "?"} MB`,
      );
    }
    sampling = false;
    await sampler;
    const elapsedS = (performance.now() - t0) / 1000;
    const nWarm = Math.min(windows.length - 1, Math.max(1, Math.ceil(windows.length / 5)));
    const warmupS = windows[nWarm]?.startS ?? 0;
    const warm = windows.slice(nWarm);
    const warmTtft = ttfts.slice(nWarm).flat();
    const warmS = elapsedS - warmupS;
    const requests = warm.reduce((n, w) => n + w.requests, 0);
    const allErrors = windows.reduce((n, w) => n + w.failures + w.checkFailures, 0);
    const mem = samples.filter((s) => s.t >= warmupS);
    let memory: SoakReport["memory"] = null;
    if (mem.length >= 2) {
      const firstWin = mem.filter((s) => s.t < warmupS + o.windowMs / 1000).map((s) => s.mb);
      const lastWin = mem.filter((s) => s.t >= elapsedS - o.windowMs / 1000).map((s) => s.mb);
      const warmMb = quantile(firstWin.length ? firstWin : [mem[0].mb], 0.5);
      const endMb = quantile(lastWin.length ? lastWin : [mem[mem.length - 1].mb], 0.5);
      memory = {
        warmMb,
        endMb,
        growthMb: endMb - warmMb,
        slopeMbPer10Min: slope(mem.map((s) => s.t), mem.map((s) => s.mb)) * 600,
        peakMb: Math.max(...samples.map((s) => s.mb)),
      };
    }
    // Drift compares whole windows: a last window cut short by the end of the run is skipped.
    const full = warm.filter((w, i) =>
      i === 0 || i < warm.length - 1 || w.requests >= warm[i - 1].requests / 2
    );
    const first = full[0], last = full[full.length - 1];
    const report: SoakReport = {
      minutes: o.minutes,
      concurrency: { sessionVus: o.sessionVus, streamVus: o.streamVus, total: o.sessionVus + o.streamVus },
      warmupS,
      requests,
      errors: allErrors,
      errorRate: allErrors / Math.max(1, windows.reduce((n, w) => n + w.requests, 0)),
      reqPerS: requests / warmS,
      tokPerS: warm.reduce((n, w) => n + w.tokens, 0) / warmS,
      ttftMs: {
        p50: quantile(warmTtft, 0.5),
        p95: quantile(warmTtft, 0.95),
        p99: quantile(warmTtft, 0.99),
        count: warmTtft.length,
      },
      memory,
      drift: { ttftP50: [first.ttftP50, last.ttftP50], ttftP95: [first.ttftP95, last.ttftP95] },
      windows,
      ok: allErrors === 0 && (memory === null || memory.growthMb < o.maxGrowthMb),
    };
    return report;
  } finally {
    await server?.stop();
    if (dir) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

export function formatSoak(r: SoakReport): string {
  const f = (v: number, d = 1) => Number.isFinite(v) ? v.toFixed(d) : "n/a";
  const m = r.memory;
  return [
    `soak: ${r.minutes} min, ${r.concurrency.total} concurrent VUs (${r.concurrency.sessionVus} multi-turn ` +
    `sessions, ${r.concurrency.streamVus} streamed chats), warm-up ${f(r.warmupS, 0)} s`,
    `  sustained (warm): ${f(r.reqPerS)} requests/s, ${
      f(r.tokPerS, 0)
    } generated tokens/s, ${r.requests} requests`,
    `  TTFT (streamed chats): p50 ${f(r.ttftMs.p50)} ms, p95 ${f(r.ttftMs.p95)} ms, p99 ${
      f(r.ttftMs.p99)
    } ms ` +
    `(${r.ttftMs.count} streams)`,
    `  errors: ${r.errors} (rate ${r.errorRate.toFixed(4)})`,
    m
      ? `  memory (server RSS): ${f(m.warmMb, 0)} MB warm → ${f(m.endMb, 0)} MB at the end ` +
        `(growth ${f(m.growthMb)} MB, slope ${f(m.slopeMbPer10Min)} MB/10 min, peak ${f(m.peakMb, 0)} MB)`
      : "  memory: not measured (no server pid)",
    `  latency drift: TTFT p50 ${f(r.drift.ttftP50[0])} → ${f(r.drift.ttftP50[1])} ms, ` +
    `p95 ${f(r.drift.ttftP95[0])} → ${f(r.drift.ttftP95[1])} ms (first warm window → last)`,
    `  ${r.ok ? "OK" : "FAILED"}`,
  ].join("\n");
}

export async function main(args: string[]): Promise<number> {
  let o: SoakOptions, json: string | undefined;
  try {
    const v = parseArgs({
      args,
      options: {
        minutes: { type: "string", default: "10" },
        window: { type: "string", default: "30s" },
        "session-vus": { type: "string", default: "4" },
        "stream-vus": { type: "string", default: "4" },
        turns: { type: "string", default: "4" },
        "max-tokens": { type: "string", default: "32" },
        backend: { type: "string" },
        model: { type: "string" },
        "base-url": { type: "string" },
        pid: { type: "string" },
        "max-growth-mb": { type: "string", default: "64" },
        json: { type: "string" },
      },
      strict: true,
    }).values;
    const num = (name: string, s: string, min: number) => {
      const n = Number(s);
      if (!Number.isFinite(n) || n < min) {
        throw new SoakError(`--${name} must be a number ≥ ${min} (got ${s})`);
      }
      return n;
    };
    const windowMs = parseDuration(v.window!);
    if (!Number.isFinite(windowMs) || windowMs < 1000) {
      throw new SoakError(`--window: a duration ≥ 1s (got ${v.window})`);
    }
    o = {
      minutes: num("minutes", v.minutes!, 0.05),
      windowMs,
      sessionVus: num("session-vus", v["session-vus"]!, 0),
      streamVus: num("stream-vus", v["stream-vus"]!, 0),
      turns: num("turns", v.turns!, 1),
      maxTokens: num("max-tokens", v["max-tokens"]!, 1),
      baseUrl: v["base-url"],
      pid: v.pid ? num("pid", v.pid, 1) : undefined,
      serverArgs: [...(v.backend ? ["--backend", v.backend] : []), ...(v.model ? ["--model", v.model] : [])],
      maxGrowthMb: num("max-growth-mb", v["max-growth-mb"]!, 0),
      log: (l) => console.error(l),
    };
    if (o.sessionVus + o.streamVus < 1) throw new SoakError("at least one VU");
    json = v.json;
  } catch (e) {
    console.error(`soak: ${(e as Error).message.split("\n")[0]}`);
    return 2;
  }
  const r = await runSoak(o);
  console.log(formatSoak(r));
  if (json) await Deno.writeTextFile(json, JSON.stringify(r, null, 2) + "\n");
  return r.ok ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
