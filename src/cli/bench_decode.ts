/**
 * Decode/prefill throughput of every backend available here, side by side.
 *
 *   deno task bench:decode [--model PATH] [--steps 128] [--prefill 256] [--mid PATH|none] [--mid-steps 16]
 *                          [--batches 1,4,16] [--backends ts,native,webgpu,cuda] [--threads N] [--kv f32|f16]
 *                          [--json OUT]
 *
 * 1. The real model (default ../shared/models/stories260K.gguf): prefill of a --prefill-token prompt, then a
 *    --steps greedy decode of one sequence after a short prompt.
 * 2. A synthetic `mid` shape (ts and webgpu, slow here, run --slow-steps steps and a 32-token prefill) (random weights; `deno task make-model --shape mid`, generated into /tmp when no
 *    --mid is given): decode at batch 1, 4, 16 (aggregate tokens/s) plus prefill.
 * Peak memory: Deno.memoryUsage().rss sampled between steps and /proc/self/status VmHWM.
 * --kv sets every backend's KV cache precision (default f32).
 */
import { parseArgs } from "node:util";
import { existsSync } from "node:fs";
import type { Backend, KVPrecision, StepInput } from "../engine/backend.ts";
import type { SequenceKV } from "../kv/cache.ts";
import { loadModel, SHARED_MODELS } from "../model/loader.ts";
import type { ModelConfig, ModelWeights } from "../model/types.ts";
import { createTsBackend } from "../engine/ts/backend.ts";

type Opener = (config: ModelConfig, weights: ModelWeights) => Promise<Backend>;

let peakRss = 0;
function sampleRss(): void {
  peakRss = Math.max(peakRss, Deno.memoryUsage().rss);
}

function vmHWM(): number | null {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync("/proc/self/status"));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

const mb = (b: number) => `${(b / 1048576).toFixed(0)} MB`;

/** The backends present in this checkout and usable on this machine (probed with dynamic imports). */
async function probeBackends(
  wanted: Set<string>,
  threads: number | undefined,
  kvPrecision: KVPrecision,
): Promise<Map<string, Opener>> {
  const out = new Map<string, Opener>();
  if (wanted.has("ts")) out.set("ts", (c, w) => Promise.resolve(createTsBackend(c, w, { kvPrecision })));
  if (wanted.has("native")) {
    try {
      const build = await import("../../native/build.ts");
      const res = await build.buildNative({ cpuOnly: true });
      const native = await import("../engine/native.ts");
      if (res[0]?.status === "built" || res[0]?.status === "up-to-date") {
        out.set(
          "native",
          (c, w) => Promise.resolve(native.openNativeBackend(c, w, { lib: "cpu", threads, kvPrecision })),
        );
      } else console.log(`skip native: ${res[0]?.message}`);
    } catch (e) {
      console.log(`skip native: ${(e as Error).message}`);
    }
  }
  if (wanted.has("webgpu")) {
    try {
      const wg = await import("../engine/webgpu/backend.ts");
      const avail = await wg.webgpuAvailable();
      if (avail.ok) {
        out.set("webgpu", (c, w) => wg.openWebGPUBackend(c, w, { adapter: avail.adapter, kvPrecision }));
      } else console.log(`skip webgpu: ${avail.reason}`);
    } catch (e) {
      console.log(`skip webgpu: ${(e as Error).message}`);
    }
  }
  if (wanted.has("cuda")) {
    try {
      const cuda = await import("../engine/cuda.ts");
      const p = cuda.probeCuda();
      if (p.devices > 0) out.set("cuda", (c, w) => cuda.openCudaBackend(c, w, { kvPrecision }));
      else console.log(`skip cuda: ${p.error}`);
    } catch (e) {
      console.log(`skip cuda: ${(e as Error).message.split("\n")[0]}`);
    }
  }
  return out;
}

function argmax(a: Float32Array, off: number, n: number): number {
  let b = 0;
  for (let i = 1; i < n; i++) if (a[off + i] > a[off + b]) b = i;
  return b;
}

/** Prefill `prompts` (one step), then `steps` greedy decode steps for all sequences together. */
async function decodeRun(
  be: Backend,
  prompts: number[][],
  steps: number,
): Promise<{ prefillTps: number; decodeTps: number; prefillTokens: number }> {
  const V = be.config.vocabSize;
  const kvs: SequenceKV[] = prompts.map(() => be.createKV());
  const t0 = performance.now();
  let outs = await be.forward(
    prompts.map((p, i) => ({ kv: kvs[i], tokens: p, logits: "last" }) as StepInput),
  );
  const t1 = performance.now();
  sampleRss();
  const batch: StepInput[] = kvs.map((kv) => ({ kv, tokens: [0], logits: "last" }));
  for (let s = 0; s < steps; s++) {
    for (let i = 0; i < batch.length; i++) batch[i].tokens[0] = argmax(outs[i].logits, 0, V);
    outs = await be.forward(batch);
    if ((s & 15) === 15) sampleRss();
  }
  const t2 = performance.now();
  sampleRss();
  for (const kv of kvs) kv.free();
  const prefillTokens = prompts.reduce((a, p) => a + p.length, 0);
  return {
    prefillTps: prefillTokens / ((t1 - t0) / 1000),
    decodeTps: (steps * prompts.length) / ((t2 - t1) / 1000),
    prefillTokens,
  };
}

function fmt(x: number | undefined): string {
  return x === undefined ? "-" : x >= 100 ? x.toFixed(0) : x.toFixed(1);
}

function table(rows: string[][]): string {
  const w = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((s, c) => (c === 0 ? s.padEnd(w[c]) : s.padStart(w[c]))).join("  ")).join(
    "\n",
  );
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      model: { type: "string" },
      steps: { type: "string", default: "128" },
      prefill: { type: "string", default: "256" },
      mid: { type: "string" },
      "mid-steps": { type: "string", default: "16" },
      "slow-steps": { type: "string", default: "4" },
      batches: { type: "string", default: "1,4,16" },
      backends: { type: "string", default: "ts,native,webgpu,cuda" },
      threads: { type: "string" },
      kv: { type: "string", default: "f32" },
      json: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(
      "usage: deno task bench:decode [--model PATH] [--steps N] [--prefill N] [--mid PATH|none] [--mid-steps N]\n" +
        "       [--slow-steps N] [--batches 1,4,16] [--backends ts,native,webgpu,cuda] [--threads N]\n" +
        "       [--kv f32|f16] [--json OUT]",
    );
    return 0;
  }
  const int = (name: string, v: string | undefined, min = 0) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer ≥ ${min}, got ${v}`);
    return n;
  };
  const steps = int("steps", values.steps, 1);
  const prefillN = int("prefill", values.prefill, 1);
  const midSteps = int("mid-steps", values["mid-steps"], 1);
  const slowSteps = int("slow-steps", values["slow-steps"], 1);
  const batches = values.batches!.split(",").map((b) => int("batches", b, 1));
  const threads = values.threads === undefined ? undefined : int("threads", values.threads, 0);
  const modelPath = values.model ?? Deno.env.get("LETHE_MODEL") ?? SHARED_MODELS.stories260K;

  const kv = values.kv as KVPrecision;
  if (kv !== "f32" && kv !== "f16") throw new Error(`--kv must be f32 or f16, got ${values.kv}`);
  const backends = await probeBackends(new Set(values.backends!.split(",")), threads, kv);
  if (backends.size === 0) throw new Error("no backend available");
  const results: Record<string, unknown>[] = [];

  // ---- real model, single sequence ----
  const m = await loadModel(modelPath);
  sampleRss();
  const prompt = m.tokenizer.encode("Once upon a time", { addBos: m.tokenizer.bosId >= 0 });
  const longPrompt: number[] = [];
  const text = "One day, a little girl named Lily went to the park with her mom. She saw a big red ball. ";
  while (longPrompt.length < prefillN) longPrompt.push(...m.tokenizer.encode(text));
  longPrompt.length = Math.min(prefillN, m.config.contextLength);
  console.log(
    `\n${m.name}: ${steps}-token greedy decode after a ${prompt.length}-token prompt; prefill ${longPrompt.length} tokens; ${kv} KV`,
  );
  const real: Record<string, { decode: number; prefill: number }> = {};
  for (const [name, open] of backends) {
    const be = await open(m.config, m.weights);
    await decodeRun(be, [prompt], 8); // warm-up
    const r = await decodeRun(be, [prompt], steps);
    const p = await decodeRun(be, [longPrompt], 1);
    real[name] = { decode: r.decodeTps, prefill: p.prefillTps };
    results.push({
      model: m.name,
      backend: name,
      batch: 1,
      decode_tps: r.decodeTps,
      prefill_tps: p.prefillTps,
    });
    be.dispose();
  }
  const rows = [["backend", "decode tok/s", "prefill tok/s", "decode ×ts"]];
  for (const [name, r] of Object.entries(real)) {
    rows.push([
      name,
      fmt(r.decode),
      fmt(r.prefill),
      real.ts ? `${(r.decode / real.ts.decode).toFixed(1)}×` : "-",
    ]);
  }
  console.log(table(rows));

  // ---- synthetic mid shape, batches ----
  if (values.mid !== "none") {
    let midPath = values.mid;
    if (!midPath) {
      midPath = "/tmp/lethe_bench_mid_f32.gguf";
      if (!existsSync(midPath)) {
        const mk = await import("./make_model.ts");
        console.log(`\ngenerating ${midPath} (make-model --shape mid) ...`);
        await mk.makeModel({ shape: "mid", out: midPath, type: "f32", seed: 1 });
      }
    }
    const mid = await loadModel(midPath);
    sampleRss();
    const c = mid.config;
    console.log(
      `\n${mid.name} (synthetic random weights, ${c.nLayers}L dim ${c.dim} ffn ${c.ffnDim} vocab ${c.vocabSize}): ` +
        `${midSteps} decode steps per batch (ts/webgpu: ${slowSteps}) after 8-token prompts; prefill 128 tokens (ts/webgpu: 32)`,
    );
    const midRows = [[
      "backend",
      ...batches.map((b) => `b${b} tok/s`),
      "prefill tok/s",
      `b${batches.at(-1)}/b1`,
    ]];
    for (const [name, open] of backends) {
      const be = await open(c, mid.weights);
      const slow = name === "ts" || name === "webgpu";
      const n = slow ? slowSteps : midSteps;
      const rng = (i: number, j: number) => (i * 7919 + j * 104729) % c.vocabSize;
      await decodeRun(be, [[1, 2, 3]], 2); // warm-up
      const tps: number[] = [];
      for (const b of batches) {
        const prompts = Array.from(
          { length: b },
          (_, i) => Array.from({ length: 8 }, (_, j) => rng(i + 1, j)),
        );
        const r = await decodeRun(be, prompts, n);
        tps.push(r.decodeTps);
        results.push({ model: mid.name, backend: name, batch: b, decode_tps: r.decodeTps });
      }
      const p = await decodeRun(be, [Array.from({ length: slow ? 32 : 128 }, (_, j) => rng(99, j))], 1);
      results.push({ model: mid.name, backend: name, batch: 1, prefill_tps: p.prefillTps });
      const b1 = batches.indexOf(1);
      midRows.push([
        name,
        ...tps.map(fmt),
        fmt(p.prefillTps),
        b1 >= 0 ? `${(tps[tps.length - 1] / tps[b1]).toFixed(1)}×` : "-",
      ]);
      be.dispose();
    }
    console.log(table(midRows));
  }
  sampleRss();
  const hwm = vmHWM();
  console.log(`\npeak memory: rss (sampled) ${mb(peakRss)}, VmHWM ${hwm === null ? "n/a" : mb(hwm)}`);
  if (values.json) {
    await Deno.writeTextFile(
      values.json,
      JSON.stringify({ kv_precision: kv, results, peak_rss: peakRss, vm_hwm: hwm }, null, 2) + "\n",
    );
  }
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (e) {
    console.error(`bench:decode: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
