/**
 * deno task bench:kv — throughput and memory of long decodes under each KV policy, side by side.
 *
 * A synthetic random-weight model in a real shape (default `mid`, ~25M params f32) decodes `--tokens` steps
 * for a batch of 1 and of 16 sequences with the full cache and with each pruning policy at one equal budget.
 * Random weights give nearly flat attention, so Lethe runs in its fixed-budget mode here (the adaptive
 * breakpoint rule rightly finds nothing to prune on flat scores); every pruned policy gets the same budget.
 * Each configuration runs in its own process so its peak RSS is its own.
 *
 * Prints aggregate tokens/s, per-step latency over time, KV bytes (final and peak), process peak RSS and
 * time spent in the policy (pruning overhead), plus the ratios against the full cache.
 */
import { intFlag, numFlag, parseFlags, runMain, UsageError } from "./common.ts";
import { makeModel, SHAPES } from "./make_model.ts";
import { loadModel, REPO_ROOT } from "../model/loader.ts";
import { BACKEND_CHOICES, type BackendChoice, openBackend } from "../engine/select.ts";
import type { KVPrecision } from "../engine/backend.ts";
import { Sequence } from "../engine/sequence.ts";
import { GREEDY } from "../engine/sampler.ts";
import type { PolicySpec } from "../kv/contract.ts";
import { formatPolicyText, parsePolicyList, parsePolicyText } from "../kv/policy_spec.ts";
import { createPolicy } from "../kv/registry.ts";
import { resolve } from "node:path";

const USAGE = `usage: deno task bench:kv [options]
  --model PATH        a GGUF to benchmark (default: a synthetic model of --shape, made once in /tmp)
  --shape NAME        synthetic shape: ${Object.keys(SHAPES).join(", ")} (default mid)
  --tokens N          decode steps per sequence (default 2048)
  --batches LIST      batch sizes (default 1,16)
  --policies LIST     KV-policy specs, comma-separated (name or name:key=value,…; default
                      full,lethe,streaming,h2o,tova); a spec without a budget gets --budget (Lethe: fixed mode)
  --budget F          kept tokens per layer as a fraction of --tokens (default 0.25)
  --backend NAME      ${BACKEND_CHOICES.join("|")} (default native when built, else auto)
  --kv f32|f16        KV cache element precision (default f16, like the server)
  --json FILE         also write the rows as JSON`;

interface Row {
  policy: string;
  kv_precision: KVPrecision;
  batch: number;
  tokens: number;
  seconds: number;
  tok_s: number;
  step_ms: number[];
  kv_bytes_final: number;
  kv_bytes_peak: number;
  peak_rss_mb: number;
  policy_ms: number;
  policy_pct: number;
  prune_rounds: number;
  kept_per_layer: number[];
}

function peakRssMB(): number {
  try {
    const m = Deno.readTextFileSync("/proc/self/status").match(/VmHWM:\s+(\d+) kB/);
    if (m) return Number(m[1]) / 1024;
  } catch { /* not Linux */ }
  return Deno.memoryUsage().rss / 2 ** 20;
}

/** The spec with the run's budget where it names none (and Lethe in fixed mode unless a mode is given). */
function withBudget(spec: PolicySpec, budget: number): PolicySpec {
  if (spec.name === "full") return spec;
  const out: PolicySpec = { budget, ...spec };
  if (spec.name === "lethe" && spec.mode === undefined) out.mode = "fixed";
  return out;
}

/** One configuration, in this process: returns its row. */
async function runOne(
  modelPath: string,
  backendName: BackendChoice,
  spec: PolicySpec,
  batch: number,
  tokens: number,
  budget: number,
  kvPrecision: KVPrecision,
): Promise<Row> {
  const model = await loadModel(modelPath, { contextLength: Math.max(tokens + 64, 512) });
  const { backend } = await openBackend(model, backendName, { kvPrecision });
  const shape = { nLayers: model.config.nLayers, contextLength: model.config.contextLength };
  const seqs = Array.from({ length: batch }, (_, i) => {
    const s = new Sequence(backend, model.tokenizer, {
      maxTokens: tokens,
      stop: [],
      sampling: GREEDY,
      policy: createPolicy(withBudget(spec, budget), shape),
      stopAtEos: false,
    });
    // distinct short prompts: BOS + a few different tokens
    s.feed([
      Math.max(0, model.config.bosId),
      ...Array.from({ length: 8 }, (_, j) => 3 + ((i * 31 + j * 7) % 250)),
    ]);
    s.start();
    return s;
  });
  const stepMs: number[] = [];
  let kvPeak = 0;
  const t0 = performance.now();
  while (seqs.some((s) => !s.finished)) {
    const live = seqs.filter((s) => !s.finished);
    const ts = performance.now();
    const outs = await backend.forward(live.map((s) => s.nextInput()));
    live.forEach((s, i) => s.accept(outs[i]));
    stepMs.push(performance.now() - ts);
    let kvNow = 0;
    for (const s of seqs) kvNow += s.kv.bytes();
    if (kvNow > kvPeak) kvPeak = kvNow;
  }
  const seconds = (performance.now() - t0) / 1000;
  const buckets = 8;
  const per = Math.ceil(stepMs.length / buckets);
  const step_ms = Array.from({ length: buckets }, (_, b) => {
    const part = stepMs.slice(b * per, (b + 1) * per);
    return part.length ? part.reduce((a, x) => a + x, 0) / part.length : 0;
  });
  const policyMs = seqs.reduce((a, s) => a + s.policy.stats.pruneMs, 0);
  return {
    policy: formatPolicyText(spec),
    kv_precision: backend.kvPrecision,
    batch,
    tokens,
    seconds,
    tok_s: (batch * tokens) / seconds,
    step_ms,
    kv_bytes_final: seqs.reduce((a, s) => a + s.kv.bytes(), 0),
    kv_bytes_peak: kvPeak,
    peak_rss_mb: peakRssMB(),
    policy_ms: policyMs,
    policy_pct: (100 * policyMs) / (seconds * 1000),
    prune_rounds: seqs.reduce((a, s) => a + s.policy.stats.pruneRounds, 0),
    kept_per_layer: seqs[0].stats().keptPerLayer,
  };
}

await runMain(async () => {
  const f = parseFlags(Deno.args, {
    model: { type: "string" },
    shape: { type: "string" },
    tokens: { type: "string" },
    batches: { type: "string" },
    policies: { type: "string" },
    budget: { type: "string" },
    backend: { type: "string" },
    kv: { type: "string" },
    json: { type: "string" },
    "run-one": { type: "string" },
  }, USAGE);
  const tokens = intFlag("tokens", f.tokens, 2048, 16);
  const budgetFrac = numFlag("budget", f.budget, 0.25);
  if (!(budgetFrac > 0 && budgetFrac < 1)) throw new UsageError("--budget must be a fraction in (0, 1)");
  const budget = Math.round(budgetFrac * tokens);
  const backendName = (f.backend ?? "native") as BackendChoice;
  if (!BACKEND_CHOICES.includes(backendName)) {
    throw new UsageError(`--backend must be one of ${BACKEND_CHOICES.join(", ")}`);
  }
  const kvPrecision = (f.kv ?? "f16") as KVPrecision;
  if (kvPrecision !== "f32" && kvPrecision !== "f16") throw new UsageError("--kv must be f32 or f16");

  if (f["run-one"]) {
    const [modelPath, specText, batch] = JSON.parse(f["run-one"]);
    const spec = parsePolicyText(specText);
    console.log(
      JSON.stringify(await runOne(modelPath, backendName, spec, batch, tokens, budget, kvPrecision)),
    );
    return;
  }
  const batches = (f.batches ?? "1,16").split(",").map((b) => intFlag("batches", b, 1, 1));
  let policies: PolicySpec[];
  try {
    policies = parsePolicyList(f.policies ?? "full,lethe,streaming,h2o,tova");
    for (const p of policies) createPolicy(withBudget(p, budget), { nLayers: 1, contextLength: tokens }); // validate early
  } catch (e) {
    throw new UsageError(`--policies: ${(e as Error).message}`);
  }
  let modelPath = f.model;
  if (!modelPath) {
    const shape = f.shape ?? "mid";
    if (!Object.hasOwn(SHAPES, shape)) {
      throw new UsageError(`--shape must be one of ${Object.keys(SHAPES).join(", ")}`);
    }
    modelPath = resolve(Deno.env.get("TMPDIR") ?? "/tmp", `lethe-bench-${shape}-f32.gguf`);
    try {
      await Deno.stat(modelPath);
    } catch {
      console.error(`[bench:kv] writing synthetic ${shape} model to ${modelPath}`);
      await makeModel({ shape, out: modelPath, type: "f32", seed: 1 });
    }
  }
  console.error(
    `[bench:kv] ${modelPath}: ${tokens} decode steps, budget ${budget} tokens/layer (${budgetFrac}), backend ${backendName}, KV ${kvPrecision}`,
  );
  const rows: Row[] = [];
  for (const batch of batches) {
    for (const spec of policies) {
      const name = formatPolicyText(spec);
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          resolve(REPO_ROOT, "src/cli/bench_kv.ts"),
          "--tokens",
          String(tokens),
          "--budget",
          String(budgetFrac),
          "--backend",
          backendName,
          "--kv",
          kvPrecision,
          "--run-one",
          JSON.stringify([modelPath, name, batch]),
        ],
        stdin: "null",
        stderr: "inherit",
      }).output();
      if (out.code !== 0) throw new Error(`bench:kv run ${name} batch ${batch} failed (exit ${out.code})`);
      const row = JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop()!) as Row;
      rows.push(row);
      console.error(`[bench:kv] ${name} batch ${batch}: ${row.tok_s.toFixed(1)} tok/s`);
    }
  }
  const mb = (b: number) => (b / 2 ** 20).toFixed(1);
  console.log(
    `\nbench:kv — ${
      modelPath.split("/").pop()
    }, ${tokens} decode steps/sequence, budget ${budget} tokens/layer, ${backendName}, KV ${kvPrecision}`,
  );
  console.log(
    "policy      batch   tok/s  ×full  ms/step (first→last eighth)  KV final MB  KV peak MB  −KV vs full  peak RSS MB  policy %",
  );
  for (const r of rows) {
    const full = rows.find((x) => x.policy === "full" && x.batch === r.batch);
    const ratio = full ? (r.tok_s / full.tok_s).toFixed(2) + "×" : "-";
    const saved = full ? (100 * (1 - r.kv_bytes_peak / full.kv_bytes_peak)).toFixed(1) + "%" : "-";
    console.log(
      `${r.policy.padEnd(11)} ${String(r.batch).padStart(5)} ${r.tok_s.toFixed(1).padStart(7)} ${
        ratio.padStart(6)
      }  ` +
        `${r.step_ms[0].toFixed(1).padStart(6)} → ${
          r.step_ms[r.step_ms.length - 1].toFixed(1).padEnd(18)
        }  ` +
        `${mb(r.kv_bytes_final).padStart(11)} ${mb(r.kv_bytes_peak).padStart(11)} ${saved.padStart(12)} ` +
        `${r.peak_rss_mb.toFixed(0).padStart(12)} ${r.policy_pct.toFixed(2).padStart(9)}`,
    );
  }
  if (f.json) await Deno.writeTextFile(f.json, JSON.stringify(rows, null, 2));
});
