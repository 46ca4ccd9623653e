/**
 * deno task eval:kv [--model PATH] [--text FILE] [--policies a,b] [--budgets 0.5,0.25,0.125] [--max-seqs N]
 *                   [--window 512] [--gen-seqs N] [--gen-len N] [--backend ts|native] [--json OUT] [--csv OUT]
 *
 * How faithful a KV policy is to the full cache, at given budgets (fractions of the evaluated window).
 *
 * (a) Teacher-forced: windows of the text are fed token by token through the decode path, every policy
 *     pruning as it goes, in one batch with a full-cache sequence. Per policy and budget: avg_kept (kept
 *     rows per layer, averaged over layers and steps), peak_kept (max over steps of that layer average),
 *     peak_layer (max rows any layer held), nll/ppl of the text, kl_vs_full (mean KL(full ‖ policy) of the
 *     next-token distributions) and top1_vs_full (argmax agreement).
 * (b) Free-running: greedy decoding of `--gen-len` tokens from the openings of `--gen-seqs` stories; per
 *     policy and budget the fraction of tokens equal to the full cache's output before the first divergence,
 *     and the full-cache model's perplexity of the pruned generation.
 *
 * Policies are a list in the one spec syntax (src/kv/policy_spec.ts), e.g.
 * `h2o,lethe:mode=adaptive,tau=50,snapkv`. The budget is passed as an absolute token count. Fixed-budget Lethe prunes back to its share when a layer exceeds it by `slack`, so
 * it is given `budget − slack/2` to sit at the same average as the baselines (compare avg_kept; its peak is
 * higher by slack/2). Adaptive Lethe ignores budgets and gets one row.
 * With no --model both shared models run.
 */
import { intFlag, parseFlags, runMain, UsageError } from "./common.ts";
import { type LoadedModel, loadModel, REPO_ROOT, SHARED_MODELS } from "../model/loader.ts";
import { type BackendChoice, openBackend } from "../engine/select.ts";
import { createTsBackend } from "../engine/ts/backend.ts";
import type { Backend, StepInput } from "../engine/backend.ts";
import type { SequenceKV } from "../kv/cache.ts";
import type { PrunePlan } from "../kv/kv_index.ts";
import { formatPolicyText, parsePolicyList } from "../kv/policy_spec.ts";
import type { KVPolicy, PolicyShape, PolicySpec } from "../kv/contract.ts";
import { createPolicy, parsePolicySpec, POLICY_NAMES } from "../kv/registry.ts";
import { splitStories, tokenizeStories, windows } from "../eval/text.ts";
import { resolve } from "node:path";

const USAGE = `usage: deno task eval:kv [options]
  --model PATH       GGUF file or HF directory (repeatable via commas; default: both shared models)
  --text FILE        stories separated by blank lines (default ../shared/data/tinystories_val_dev.txt)
  --policies LIST    specs, comma-separated: name or name:key=value,… (default streaming,h2o,tova,snapkv,
                     pyramidkv,lethe,lethe:mode=adaptive); known: ${POLICY_NAMES.join(", ")}
  --budgets LIST     fractions of the window (default 0.5,0.25,0.125)
  --window N         window length in tokens (default 512, at most the model's context)
  --max-seqs N       windows evaluated per model (default 6)
  --gen-seqs N       story openings for the generation test (default 2; 0 skips it)
  --gen-len N        greedy tokens generated per opening (default 400)
  --backend NAME     ts|native (default native when it loads, else ts)
  --json OUT         write all rows as JSON
  --csv OUT          write all rows as CSV`;

interface Config {
  label: string;
  spec: PolicySpec;
  /** Fraction of the window, or null for budget-free policies. */
  budget: number | null;
  budgetTokens: number | null;
}

interface Row {
  model: string;
  policy: string;
  params: string;
  budget: number | null;
  budget_tokens: number | null;
  avg_kept: number;
  peak_kept: number;
  peak_layer: number;
  tokens: number;
  nll: number;
  ppl: number;
  kl_vs_full: number;
  top1_vs_full: number;
  gen_prefix_match: number | null;
  gen_ppl_full: number | null;
  prune_ms_per_token: number;
}

function buildConfigs(items: PolicySpec[], budgets: number[], window: number, nLayers: number): Config[] {
  const out: Config[] = [];
  for (const item of items) {
    if (item.name === "full") continue; // the reference runs anyway
    const adaptive = item.name === "lethe" && item.mode === "adaptive";
    const name = formatPolicyText(item);
    if (adaptive) {
      parsePolicySpec(item);
      out.push({ label: name, spec: item, budget: null, budgetTokens: null });
      continue;
    }
    for (const b of budgets) {
      const tokens = Math.max(2, Math.round(b * window));
      const spec: PolicySpec = { ...item, budget: tokens };
      if (item.name === "lethe") {
        spec.mode = "fixed";
        const slack = parsePolicySpec({ ...spec }).params.slack as number;
        spec.budget = Math.max(2, tokens - Math.floor(slack / 2));
      }
      parsePolicySpec(spec); // fail early with a clear message
      out.push({ label: name, spec, budget: b, budgetTokens: tokens });
    }
  }
  void nLayers;
  return out;
}

function logSoftmax(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const lse = Math.log(sum) + max;
  const out = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i] - lse;
  return out;
}

function argmax(a: ArrayLike<number>): number {
  let b = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[b]) b = i;
  return b;
}

function kl(p: Float64Array, q: Float64Array): number {
  let s = 0;
  for (let i = 0; i < p.length; i++) {
    const pi = Math.exp(p[i]);
    if (pi > 0) s += pi * (p[i] - q[i]);
  }
  return Math.max(0, s);
}

interface Seq {
  kv: SequenceKV;
  policy: KVPolicy;
  /** The policy's plan from the last step, applied by the next one. */
  plan: PrunePlan | null;
}

function newSeq(backend: Backend, spec: PolicySpec, shape: PolicyShape): Seq {
  return { kv: backend.createKV(), policy: createPolicy(spec, shape), plan: null };
}

/** One decode step for every sequence (each its own token), policies deciding after it. */
async function stepAll(backend: Backend, seqs: Seq[], tokens: number[]): Promise<Float32Array[]> {
  const batch: StepInput[] = seqs.map((s, i) => ({
    kv: s.kv,
    tokens: [tokens[i]],
    logits: "last",
    scores: s.policy.scoreRequest("decode", 1),
    compact: s.plan ?? undefined,
  }));
  const outs = await backend.forward(batch);
  seqs.forEach((s, i) => s.plan = s.policy.afterStep(s.kv, outs[i].scores, 1, "decode").plan);
  return outs.map((o) => o.logits);
}

/** Rows per layer once the pending plan is applied. */
function keptRows(s: Seq, l: number): number {
  return s.plan?.[l]?.length ?? s.kv.length(l);
}

function keptMean(s: Seq, nLayers: number): { mean: number; max: number } {
  let sum = 0, max = 0;
  for (let l = 0; l < nLayers; l++) {
    sum += keptRows(s, l);
    max = Math.max(max, keptRows(s, l));
  }
  return { mean: sum / nLayers, max };
}

async function evalModel(
  model: LoadedModel,
  backend: Backend,
  text: string,
  configs: (nLayers: number, window: number) => Config[],
  opts: { window: number; maxSeqs: number; genSeqs: number; genLen: number },
): Promise<{ rows: Row[]; fullPpl: number; window: number; windows: number }> {
  const cfgShape = { nLayers: model.config.nLayers, contextLength: model.config.contextLength };
  const window = Math.min(opts.window, model.config.contextLength);
  const cfgs = configs(model.config.nLayers, window);
  const stories = splitStories(text);
  const ids = tokenizeStories(model.tokenizer, stories);
  const wins = windows(ids, window, opts.maxSeqs);
  const nL = model.config.nLayers;
  const acc = cfgs.map(() => ({
    nll: 0,
    kl: 0,
    top1: 0,
    kept: 0,
    peak: 0,
    peakLayer: 0,
    steps: 0,
    pruneMs: 0,
  }));
  let fullNll = 0, count = 0;

  for (const w of wins) {
    const seqs: Seq[] = [newSeq(backend, { name: "full" }, cfgShape)];
    for (const c of cfgs) seqs.push(newSeq(backend, c.spec, cfgShape));
    for (let t = 0; t + 1 < w.length; t++) {
      const logits = await stepAll(backend, seqs, seqs.map(() => w[t]));
      const pFull = logSoftmax(logits[0]);
      const target = w[t + 1];
      fullNll -= pFull[target];
      count++;
      const top = argmax(pFull);
      for (let i = 0; i < cfgs.length; i++) {
        const q = logSoftmax(logits[i + 1]);
        const a = acc[i];
        a.nll -= q[target];
        a.kl += kl(pFull, q);
        if (argmax(q) === top) a.top1++;
        const k = keptMean(seqs[i + 1], nL);
        a.kept += k.mean;
        a.peak = Math.max(a.peak, k.mean);
        a.peakLayer = Math.max(a.peakLayer, k.max);
        a.steps++;
      }
    }
    for (let i = 0; i < cfgs.length; i++) acc[i].pruneMs += seqs[i + 1].policy.stats.pruneMs;
    for (const s of seqs) s.kv.free();
  }

  // (b) free-running greedy generation from story openings
  const gen = cfgs.map(() => ({ match: 0, nll: 0, n: 0 }));
  const openings = stories.slice(0, opts.genSeqs).map((s) => {
    const toks = model.tokenizer.encode(s, { addBos: model.tokenizer.bosId >= 0 });
    return toks.slice(0, Math.min(toks.length, 16));
  });
  const genLen = Math.min(opts.genLen, model.config.contextLength - 17);
  for (const prompt of openings) {
    const seqs: Seq[] = [newSeq(backend, { name: "full" }, cfgShape)];
    for (const c of cfgs) seqs.push(newSeq(backend, c.spec, cfgShape));
    // the prompt is fed through the decode path too, so policies see the same steps as in (a)
    let logits: Float32Array[] = [];
    for (const t of prompt) logits = await stepAll(backend, seqs, seqs.map(() => t));
    const outs: number[][] = seqs.map(() => []);
    for (let g = 0; g < genLen; g++) {
      const next = logits.map((l) => argmax(l));
      next.forEach((t, i) => outs[i].push(t));
      if (g + 1 < genLen) logits = await stepAll(backend, seqs, next);
    }
    for (const s of seqs) s.kv.free();
    // score each pruned generation with the full-cache model
    const batch = cfgs.map((_, i) => ({
      kv: backend.createKV(),
      tokens: [...prompt, ...outs[i + 1]],
      logits: "all" as const,
    }));
    const scored = await backend.forward(batch);
    const V = model.config.vocabSize;
    for (let i = 0; i < cfgs.length; i++) {
      let div = outs[i + 1].findIndex((t, j) => t !== outs[0][j]);
      if (div < 0) div = genLen;
      gen[i].match += div / genLen;
      const toks = batch[i].tokens;
      for (let j = prompt.length - 1; j + 1 < toks.length; j++) {
        const lp = logSoftmax(scored[i].logits.subarray(j * V, (j + 1) * V));
        gen[i].nll -= lp[toks[j + 1]];
        gen[i].n++;
      }
      batch[i].kv.free();
    }
  }

  const rows: Row[] = cfgs.map((c, i) => {
    const a = acc[i];
    const { name: _n, ...params } = parsePolicySpec(c.spec).params as Record<string, unknown> & {
      name?: string;
    };
    return {
      model: model.name,
      policy: c.label,
      params: Object.entries(params).map(([k, v]) => `${k}=${v}`).join(" "),
      budget: c.budget,
      budget_tokens: c.budgetTokens,
      avg_kept: a.kept / a.steps,
      peak_kept: a.peak,
      peak_layer: a.peakLayer,
      tokens: a.steps,
      nll: a.nll / a.steps,
      ppl: Math.exp(a.nll / a.steps),
      kl_vs_full: a.kl / a.steps,
      top1_vs_full: a.top1 / a.steps,
      gen_prefix_match: openings.length ? gen[i].match / openings.length : null,
      gen_ppl_full: gen[i].n ? Math.exp(gen[i].nll / gen[i].n) : null,
      prune_ms_per_token: a.pruneMs / a.steps,
    };
  });
  return { rows, fullPpl: Math.exp(fullNll / count), window, windows: wins.length };
}

function fmt(x: number | null, d = 4): string {
  return x === null ? "-" : x.toFixed(d);
}

await runMain(async () => {
  const f = parseFlags(Deno.args, {
    model: { type: "string" },
    text: { type: "string" },
    policies: { type: "string" },
    budgets: { type: "string" },
    window: { type: "string" },
    "max-seqs": { type: "string" },
    "gen-seqs": { type: "string" },
    "gen-len": { type: "string" },
    backend: { type: "string" },
    json: { type: "string" },
    csv: { type: "string" },
  }, USAGE);
  const backendChoice = f.backend as BackendChoice | undefined;
  if (backendChoice !== undefined && backendChoice !== "ts" && backendChoice !== "native") {
    throw new UsageError(`--backend must be ts or native, got "${f.backend}"`);
  }
  let items: PolicySpec[];
  try {
    items = parsePolicyList(f.policies ?? "streaming,h2o,tova,snapkv,pyramidkv,lethe,lethe:mode=adaptive");
    for (const it of items) parsePolicySpec(it);
  } catch (e) {
    throw new UsageError(`--policies: ${(e as Error).message}`);
  }
  const budgets = (f.budgets ?? "0.5,0.25,0.125").split(",").map((s) => {
    const b = Number(s);
    if (!(b > 0 && b <= 1)) throw new UsageError(`--budgets: each must be a fraction in (0, 1], got "${s}"`);
    return b;
  });
  const window = intFlag("window", f.window, 512, 8);
  const maxSeqs = intFlag("max-seqs", f["max-seqs"], 6, 1);
  const genSeqs = intFlag("gen-seqs", f["gen-seqs"], 2, 0);
  const genLen = intFlag("gen-len", f["gen-len"], 400, 1);
  const textPath = f.text ?? resolve(REPO_ROOT, "..", "shared", "data", "tinystories_val_dev.txt");
  let text: string;
  try {
    text = await Deno.readTextFile(textPath);
  } catch (e) {
    throw new UsageError(`cannot read --text ${textPath}: ${(e as Error).message}`);
  }
  if (splitStories(text).length === 0) throw new UsageError(`--text ${textPath} holds no text`);
  const models = f.model ? f.model.split(",") : [SHARED_MODELS.stories260K, SHARED_MODELS.tinystories656K];

  const all: Row[] = [];
  const summaries: unknown[] = [];
  for (const path of models) {
    const model = await loadModel(path);
    let backend: Backend;
    let reason: string;
    if (backendChoice === "ts") {
      backend = createTsBackend(model.config, model.weights);
      reason = "requested";
    } else {
      try {
        ({ backend, reason } = await openBackend(model, "native"));
      } catch (e) {
        if (backendChoice === "native") throw e;
        backend = createTsBackend(model.config, model.weights);
        reason = `native unavailable (${String((e as Error).message).split("\n")[0]})`;
      }
    }
    console.error(`[eval:kv] ${model.name} on ${backend.name}: ${reason}`);
    const t0 = performance.now();
    const res = await evalModel(model, backend, text, (nL, w) => {
      try {
        return buildConfigs(items, budgets, w, nL);
      } catch (e) {
        throw new UsageError(`--policies: ${(e as Error).message}`);
      }
    }, { window, maxSeqs, genSeqs, genLen });
    backend.dispose();
    const secs = (performance.now() - t0) / 1000;
    summaries.push({
      model: model.name,
      backend: backend.name,
      window: res.window,
      windows: res.windows,
      full_ppl: res.fullPpl,
      seconds: secs,
    });
    console.log(
      `\n${model.name} (${backend.name}): ${res.windows} windows × ${res.window} tokens, decode path; ` +
        `full-cache ppl ${res.fullPpl.toFixed(4)}; ${secs.toFixed(1)} s`,
    );
    const lw = Math.max(28, ...res.rows.map((r) => r.policy.length + 1));
    console.log(
      "policy".padEnd(lw) + "budget".padStart(7) + "avg_kept".padStart(9) + "peak".padStart(7) +
        "ppl".padStart(9) + "Δppl%".padStart(7) + "KL".padStart(9) + "top1%".padStart(7) +
        "gen_match".padStart(10) +
        "gen_ppl".padStart(9),
    );
    for (const r of res.rows) {
      console.log(
        r.policy.padEnd(lw) +
          (r.budget_tokens === null ? "-" : String(r.budget_tokens)).padStart(7) +
          r.avg_kept.toFixed(1).padStart(9) + r.peak_kept.toFixed(0).padStart(7) +
          r.ppl.toFixed(4).padStart(9) +
          ((r.ppl / res.fullPpl - 1) * 100).toFixed(1).padStart(7) + fmt(r.kl_vs_full).padStart(9) +
          (r.top1_vs_full * 100).toFixed(1).padStart(7) + fmt(r.gen_prefix_match, 3).padStart(10) +
          fmt(r.gen_ppl_full, 3).padStart(9),
      );
    }
    all.push(...res.rows);
  }
  if (f.json) {
    await Deno.writeTextFile(
      f.json,
      JSON.stringify({ text: textPath, runs: summaries, rows: all }, null, 1) + "\n",
    );
  }
  if (f.csv) {
    const cols = Object.keys(all[0] ?? {}) as (keyof Row)[];
    const esc = (v: unknown) => {
      const s = v === null ? "" : String(v);
      return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
    };
    const lines = [cols.join(","), ...all.map((r) => cols.map((c) => esc(r[c])).join(","))];
    await Deno.writeTextFile(f.csv, lines.join("\n") + "\n");
  }
});
