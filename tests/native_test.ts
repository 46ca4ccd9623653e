/**
 * The native CPU backend (native/cpu via lethe.h) against the TypeScript reference backend.
 *
 * Tolerance: logits max |native − ts| ≤ 1e-4 · max(1, max |ts logit|) (both f32 math; the reference sums some
 * things in f64); attention scores ≤ 1e-4 · nHeads absolute (they are sums of nHeads probabilities).
 * f16 KV caches: both backends round the same K/V values to half, but a value whose two f32 computations differ
 * in the last bit can land on the two sides of a rounding boundary (one f16 ulp = 2^-11 relative apart), so
 * there the tolerance is twice the f16 unit roundoff (1e-3) instead, and the caches themselves are compared
 * (assertSameF16Cache: layer 0 bit-equal but for flips, deeper layers within one ulp + 1e-3 of their scale).
 */
import assert from "node:assert/strict";
import { assertClose, maxAbs } from "./support/compare.ts";
import { argmax } from "../src/engine/sampler.ts";
import { buildNative, CPU_LIB } from "../native/build.ts";
import { NativeBackend, NativeKV, openNativeBackend } from "../src/engine/native.ts";
import { createTsBackend } from "../src/engine/ts/backend.ts";
import type { Backend, StepInput, StepOutput } from "../src/engine/backend.ts";
import { HostKVCache, type SequenceKV } from "../src/kv/cache.ts";
import { loadModel, SHARED_MODELS } from "../src/model/loader.ts";
import {
  GGMLType,
  type LayerWeights,
  type ModelConfig,
  type ModelWeights,
  type Tensor,
} from "../src/model/types.ts";
import { dequantize, quantize, quantizeQ4_0, quantizeQ8_0 } from "../src/model/ggml.ts";

const built = await buildNative({ cpuOnly: true });
const cpuOk = built[0]?.status === "built" || built[0]?.status === "up-to-date";
if (!cpuOk) console.warn(`native tests skipped: ${built[0]?.message}`);
const ignore = !cpuOk;

const STORIES = Deno.env.get("LETHE_MODEL") ?? SHARED_MODELS.stories260K;
const TINY_HF = SHARED_MODELS.tinystories656K;
const GOLDEN = new URL("../../shared/golden/stories260K_greedy.json", import.meta.url);

function assertLogits(got: StepOutput, want: StepOutput, what: string, rel = 1e-4): void {
  assertClose(got.logits, want.logits, rel * Math.max(1, maxAbs(want.logits)), `${what} logits`);
}

function assertScores(got: StepOutput, want: StepOutput, nHeads: number, what: string, rel = 1e-4): void {
  assert.ok(got.scores && want.scores, `${what}: scores missing`);
  assert.equal(got.scores.length, want.scores.length);
  got.scores.forEach((s, l) => assertClose(s, want.scores![l], rel * nHeads, `${what} scores layer ${l}`));
}

/**
 * Two f16 caches hold the same rows: equal positions; in layer 0 (computed straight from the embeddings) all
 * but `maxFrac` of the values bit-identical, the rest one ulp apart (rounding-boundary flips); in deeper layers
 * (whose inputs a flip upstream perturbs) every value within one ulp + F16_REL of the layer's largest value.
 */
function assertSameF16Cache(a: HostKVCache, b: HostKVCache, maxFrac: number, what: string): void {
  assert.equal(a.precision, "f16");
  assert.equal(b.precision, "f16");
  for (let l = 0; l < a.shape.nLayers; l++) {
    assert.equal(a.len[l], b.len[l]);
    assert.deepEqual(a.positions(l), b.positions(l));
    const d = a.kvDim * a.len[l];
    let differ = 0;
    for (const [x, y] of [[a.k[l], b.k[l]], [a.v[l], b.v[l]]]) {
      const tol = l === 0 ? 0 : F16_REL * maxAbs(y.subarray(0, d));
      for (let i = 0; i < d; i++) {
        if (x[i] === y[i]) continue;
        differ++;
        const ulp = 2 ** (Math.floor(Math.log2(Math.max(Math.abs(y[i]), 2 ** -14))) - 10);
        assert.ok(Math.abs(x[i] - y[i]) <= ulp + tol, `${what}: layer ${l} values ${x[i]} vs ${y[i]}`);
      }
    }
    if (l === 0) {
      assert.ok(differ <= maxFrac * 2 * d, `${what}: layer 0: ${differ} of ${2 * d} f16 values differ`);
    }
  }
}

/** Prefill `prompt` in one call, then greedy-decode `steps` tokens, comparing every step (logits + scores). */
async function compareDecode(
  nat: Backend,
  ts: Backend,
  prompt: number[],
  steps: number,
  scores = { decay: 0.9, window: 1 << 30 },
  rel = 1e-4,
): Promise<void> {
  const kn = nat.createKV(), kt = ts.createKV();
  let tokens = prompt;
  for (let step = 0; step <= steps; step++) {
    const inN: StepInput = { kv: kn, tokens, logits: step === 0 ? "all" : "last", scores };
    const inT: StepInput = { ...inN, kv: kt };
    const [on] = await nat.forward([inN]);
    const [ot] = await ts.forward([inT]);
    assertLogits(on, ot, `step ${step}`, rel);
    assertScores(on, ot, nat.config.nHeads, `step ${step}`, rel);
    if (nat.kvPrecision === "f16") assertSameF16Cache(kn.toHost(), kt.toHost(), 0.01, `step ${step} cache`);
    for (let l = 0; l < nat.config.nLayers; l++) {
      assert.equal(kn.length(l), kt.length(l));
      assert.deepEqual(kn.positions(l), kt.positions(l));
    }
    assert.equal(kn.nextPos, kt.nextPos);
    const last = ot.logits.subarray(ot.logits.length - nat.config.vocabSize);
    tokens = [argmax(last)];
  }
  kn.free();
}

// ---------- synthetic in-memory models (both RoPE styles, biases, quantized types) ----------

class Rng {
  s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 1;
  }
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s / 0x100000000;
  }
  normal(): number {
    return Math.sqrt(-2 * Math.log(this.next() + 1e-12)) * Math.cos(2 * Math.PI * this.next());
  }
}

function f32Tensor(name: string, shape: number[], x: Float32Array): Tensor {
  return { name, type: GGMLType.F32, shape, data: new Uint8Array(x.buffer, x.byteOffset, x.byteLength) };
}

function synthModel(
  opts: { rope: "interleaved" | "half"; bias: boolean; seed: number; tied: boolean },
): { config: ModelConfig; weights: ModelWeights } {
  const config: ModelConfig = {
    arch: "llama",
    dim: 64,
    nLayers: 3,
    nHeads: 4,
    nKVHeads: 2,
    headDim: 16,
    ffnDim: 96,
    vocabSize: 96,
    contextLength: 256,
    normEps: 1e-5,
    ropeTheta: 10000,
    ropeStyle: opts.rope,
    bosId: 1,
    eosId: 2,
  };
  const rng = new Rng(opts.seed);
  const rand = (name: string, shape: number[], scale: number, offset = 0) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const x = new Float32Array(n);
    for (let i = 0; i < n; i++) x[i] = offset + scale * rng.normal();
    return f32Tensor(name, shape, x);
  };
  const { dim, nHeads, nKVHeads, headDim, ffnDim, vocabSize } = config;
  const qd = nHeads * headDim, kvd = nKVHeads * headDim;
  const layers: LayerWeights[] = [];
  for (let l = 0; l < config.nLayers; l++) {
    const s = 1 / Math.sqrt(dim);
    layers.push({
      attnNorm: rand(`l${l}.attn_norm`, [dim], 0.1, 1),
      wq: rand(`l${l}.wq`, [qd, dim], 3 * s),
      wk: rand(`l${l}.wk`, [kvd, dim], 3 * s),
      wv: rand(`l${l}.wv`, [kvd, dim], s),
      wo: rand(`l${l}.wo`, [dim, qd], s),
      bq: opts.bias ? rand(`l${l}.bq`, [qd], 0.5) : undefined,
      bk: opts.bias ? rand(`l${l}.bk`, [kvd], 0.5) : undefined,
      bv: opts.bias ? rand(`l${l}.bv`, [kvd], 0.5) : undefined,
      ffnNorm: rand(`l${l}.ffn_norm`, [dim], 0.1, 1),
      wGate: rand(`l${l}.w_gate`, [ffnDim, dim], s),
      wUp: rand(`l${l}.w_up`, [ffnDim, dim], s),
      wDown: rand(`l${l}.w_down`, [dim, ffnDim], 1 / Math.sqrt(ffnDim)),
    });
  }
  const tokenEmbd = rand("tok_embd", [vocabSize, dim], 1);
  const output = opts.tied ? tokenEmbd : rand("output", [vocabSize, dim], 1 / Math.sqrt(dim));
  return { config, weights: { tokenEmbd, layers, outputNorm: rand("out_norm", [dim], 0.1, 1), output } };
}

/** The same model with every matrix stored as `type` (Q8_0 / Q4_0 / F16 via the shared quantizers). */
function requantize(w: ModelWeights, type: GGMLType): ModelWeights {
  const q = (t: Tensor): Tensor => {
    if (t.shape.length !== 2) return t;
    const x = new Float32Array(t.data.slice().buffer);
    const data = type === GGMLType.Q8_0
      ? quantizeQ8_0(x)
      : type === GGMLType.Q4_0
      ? quantizeQ4_0(x)
      : quantize(type, x);
    return { ...t, type, data };
  };
  const tokenEmbd = q(w.tokenEmbd);
  return {
    tokenEmbd,
    outputNorm: w.outputNorm,
    output: w.output === w.tokenEmbd ? tokenEmbd : q(w.output),
    layers: w.layers.map((L) => ({
      ...L,
      wq: q(L.wq),
      wk: q(L.wk),
      wv: q(L.wv),
      wo: q(L.wo),
      wGate: q(L.wGate),
      wUp: q(L.wUp),
      wDown: q(L.wDown),
    })),
  };
}

function randomTokens(rng: Rng, n: number, vocab: number): number[] {
  return Array.from({ length: n }, () => Math.floor(rng.next() * vocab));
}

Deno.test({
  name: "native: synthetic models (interleaved/half RoPE, biases, tied/untied) match ts, prefill + decode",
  ignore,
  async fn() {
    const cases = [
      { rope: "interleaved" as const, bias: false, seed: 1, tied: true },
      { rope: "half" as const, bias: true, seed: 2, tied: false },
    ];
    for (const c of cases) {
      const { config, weights } = synthModel(c);
      const nat = openNativeBackend(config, weights, { threads: 1 });
      const ts = createTsBackend(config, weights);
      await compareDecode(nat, ts, randomTokens(new Rng(c.seed + 10), 9, config.vocabSize), 12);
      // Scores with a short window and decay over a multi-token step.
      await compareDecode(nat, ts, randomTokens(new Rng(c.seed + 20), 7, config.vocabSize), 2, {
        decay: 0.5,
        window: 3,
      });
      nat.dispose();
    }
  },
});

Deno.test({
  name: "native: multi-threaded kernels (threshold lowered) agree with ts",
  ignore,
  async fn() {
    const { config, weights } = synthModel({ rope: "half", bias: true, seed: 3, tied: false });
    Deno.env.set("LETHE_PARALLEL_WORK", "1000"); // every kernel above 1000 multiply-adds uses 2 threads
    let nat: NativeBackend;
    try {
      nat = openNativeBackend(config, weights, { threads: 2 });
    } finally {
      Deno.env.delete("LETHE_PARALLEL_WORK");
    }
    const ts = createTsBackend(config, weights);
    await compareDecode(nat, ts, randomTokens(new Rng(7), 200, config.vocabSize), 2);
    nat.dispose();
  },
});

Deno.test({
  name: "native: F16 / Q8_0 / Q4_0 weights match the ts reference on the same (dequantized) weights",
  ignore,
  async fn() {
    const base = synthModel({ rope: "interleaved", bias: false, seed: 4, tied: false });
    const prompt = randomTokens(new Rng(11), 6, base.config.vocabSize);
    for (const type of [GGMLType.F16, GGMLType.Q8_0, GGMLType.Q4_0]) {
      const w = requantize(base.weights, type);
      // Sanity: the quantized weights really differ from the f32 ones (so the test exercises dequantization).
      const deq = dequantize(w.layers[0].wq.type, w.layers[0].wq.data, 64 * 64);
      assert.notDeepEqual(deq, new Float32Array(base.weights.layers[0].wq.data.slice().buffer));
      const nat = openNativeBackend(base.config, w, { threads: 1 });
      const ts = createTsBackend(base.config, w);
      await compareDecode(nat, ts, prompt, 6);
      nat.dispose();
    }
  },
});

// ---------- real models ----------

Deno.test({
  name: "native: tinystories-656K quantized to F16/Q8_0/Q4_0 stays within quantization error of f32",
  ignore,
  async fn() {
    const m = await loadOrSkip(TINY_HF);
    if (!m) return;
    const prompt = m.tokenizer.encode("Once upon a time, there was a little girl", { addBos: true });
    const tsF32 = createTsBackend(m.config, m.weights);
    const [ref] = await tsF32.forward([{ kv: tsF32.createKV(), tokens: prompt, logits: "all" }]);
    // Relative L2 error of all prompt logits (quantization noise only: the same quantized weights already match
    // the ts reference exactly in the synthetic test above).
    const tols: [GGMLType, number][] = [[GGMLType.F16, 2e-3], [GGMLType.Q8_0, 2e-2], [GGMLType.Q4_0, 2.5e-1]];
    for (const [type, tol] of tols) {
      const nat = openNativeBackend(m.config, requantize(m.weights, type));
      const [got] = await nat.forward([{ kv: nat.createKV(), tokens: prompt, logits: "all" }]);
      let num = 0, den = 0;
      for (let i = 0; i < got.logits.length; i++) {
        num += (got.logits[i] - ref.logits[i]) ** 2;
        den += ref.logits[i] ** 2;
      }
      const rel = Math.sqrt(num / den);
      console.log(
        `tinystories-656K ${GGMLType[type]}: relative L2 logit error vs f32 ${
          rel.toExponential(2)
        } (≤ ${tol})`,
      );
      assert.ok(rel <= tol, `${GGMLType[type]}: relative logit error vs f32 ${rel} > ${tol}`);
      nat.dispose();
    }
  },
});

async function loadOrSkip(path: string) {
  try {
    return await loadModel(path);
  } catch (e) {
    console.warn(`skipping: ${(e as Error).message}`);
    return null;
  }
}

Deno.test({
  name: "native: stories260K and tinystories-656K: 64-token decode logits and scores match ts",
  ignore,
  async fn() {
    for (const path of [STORIES, TINY_HF]) {
      const m = await loadOrSkip(path);
      if (!m) continue;
      const nat = openNativeBackend(m.config, m.weights);
      const ts = createTsBackend(m.config, m.weights);
      const prompt = m.tokenizer.encode("Once upon a time, a little dog", { addBos: true });
      await compareDecode(nat, ts, prompt, 64 - prompt.length);
      nat.dispose();
    }
  },
});

Deno.test({
  name: "native: stories260K greedy output equals the golden text",
  ignore,
  async fn() {
    const m = await loadOrSkip(STORIES);
    if (!m) return;
    const golden = JSON.parse(await Deno.readTextFile(GOLDEN));
    const nat = openNativeBackend(m.config, m.weights);
    for (const c of golden.cases as { prompt: string; steps: number; text: string }[]) {
      const kv = nat.createKV();
      const ids: number[] = m.tokenizer.encode(c.prompt, { addBos: true });
      let [out] = await nat.forward([{ kv, tokens: ids, logits: "last" }]);
      const all: number[] = [...ids];
      while (all.length <= c.steps) {
        const next = argmax(out.logits);
        if (next === m.tokenizer.bosId) break;
        all.push(next);
        if (all.length > c.steps) break;
        [out] = await nat.forward([{ kv, tokens: [next], logits: "last" }]);
      }
      assert.equal(m.tokenizer.decode(all), c.text);
      kv.free();
    }
    nat.dispose();
  },
});

Deno.test({
  name: "native: 4 prompts of different lengths batched in one forward equal decoding each alone",
  ignore,
  async fn() {
    const m = await loadOrSkip(STORIES);
    if (!m) return;
    const nat = openNativeBackend(m.config, m.weights);
    const prompts = ["Once upon a time", "The cat", "Tom and Lily went to the park to play with", "A"].map((
      p,
    ) => m.tokenizer.encode(p, { addBos: true }));
    const sc = { decay: 0.95, window: 4 };
    const solo: StepOutput[][] = [];
    const soloKV: SequenceKV[] = [];
    for (const p of prompts) {
      const kv = nat.createKV();
      soloKV.push(kv);
      const outs = [(await nat.forward([{ kv, tokens: p, logits: "all", scores: sc }]))[0]];
      let tok = argmax(outs[0].logits.subarray(outs[0].logits.length - m.config.vocabSize));
      for (let i = 0; i < 10; i++) {
        const [o] = await nat.forward([{ kv, tokens: [tok], logits: "last", scores: sc }]);
        outs.push(o);
        tok = argmax(o.logits);
      }
      solo.push(outs);
    }
    const kvs = prompts.map(() => nat.createKV());
    let outs = await nat.forward(
      prompts.map((p, i) => ({ kv: kvs[i], tokens: p, logits: "all", scores: sc })),
    );
    for (let step = 0; step <= 10; step++) {
      for (let i = 0; i < prompts.length; i++) {
        // Same kernels, same per-row order: batched results equal the single-sequence ones to f32 rounding.
        assertClose(
          outs[i].logits,
          solo[i][step].logits,
          1e-5 * Math.max(1, maxAbs(solo[i][step].logits)),
          `seq ${i}`,
        );
        outs[i].scores!.forEach((s, l) =>
          assertClose(s, solo[i][step].scores![l], 1e-5, `seq ${i} scores ${l}`)
        );
      }
      if (step === 10) break;
      const next = outs.map((o) => argmax(o.logits.subarray(o.logits.length - m.config.vocabSize)));
      outs = await nat.forward(kvs.map((kv, i) => ({ kv, tokens: [next[i]], logits: "last", scores: sc })));
    }
    for (let i = 0; i < prompts.length; i++) assert.equal(kvs[i].nextPos, soloKV[i].nextPos);
    nat.dispose();
  },
});

Deno.test({
  name: "native: per-layer compaction then continued decoding matches ts doing the same",
  ignore,
  async fn() {
    const m = await loadOrSkip(STORIES);
    if (!m) return;
    const nat = openNativeBackend(m.config, m.weights);
    const ts = createTsBackend(m.config, m.weights);
    const kn = nat.createKV(), kt = ts.createKV();
    const prompt = m.tokenizer.encode("Once upon a time there was a big red ball", { addBos: true });
    const sc = { decay: 0.9, window: 1 << 20 };
    let [on] = await nat.forward([{ kv: kn, tokens: prompt, logits: "last", scores: sc }]);
    let [ot] = await ts.forward([{ kv: kt, tokens: prompt, logits: "last", scores: sc }]);
    for (let round = 0; round < 3; round++) {
      // A different keep set per layer: sinks + every other middle token + recent.
      for (let l = 0; l < m.config.nLayers; l++) {
        const n = kn.length(l);
        const keep: number[] = [];
        for (let j = 0; j < n; j++) if (j < 2 || j >= n - 3 || (j + l + round) % 2 === 0) keep.push(j);
        kn.compact(l, Int32Array.from(keep));
        kt.compact(l, Int32Array.from(keep));
        assert.equal(kn.length(l), keep.length);
        assert.deepEqual(kn.positions(l), kt.positions(l));
      }
      assert.equal(kn.bytes(), kt.bytes());
      for (let i = 0; i < 8; i++) {
        const tok = argmax(ot.logits);
        [on] = await nat.forward([{ kv: kn, tokens: [tok], logits: "last", scores: sc }]);
        [ot] = await ts.forward([{ kv: kt, tokens: [tok], logits: "last", scores: sc }]);
        assertLogits(on, ot, `round ${round} step ${i}`);
        assertScores(on, ot, m.config.nHeads, `round ${round} step ${i}`);
      }
    }
    assert.throws(() => kn.compact(0, Int32Array.from([1, 1])), /strictly ascending/);
    assert.throws(() => kn.compact(0, Int32Array.from([kn.length(0)])), /strictly ascending/);
    nat.dispose();
  },
});

Deno.test({
  name: "native: KV toHost/loadFrom round trip, and a ts cache continued natively",
  ignore,
  async fn() {
    const m = await loadOrSkip(STORIES);
    if (!m) return;
    const nat = openNativeBackend(m.config, m.weights);
    const ts = createTsBackend(m.config, m.weights);
    const prompt = m.tokenizer.encode("Lily had a small cat named Tom", { addBos: true });
    const kn = nat.createKV();
    await nat.forward([{ kv: kn, tokens: prompt, logits: "none" }]);
    kn.compact(2, Int32Array.from([0, 1, 5, 6, 7]));
    const host = kn.toHost();
    assert.ok(host instanceof HostKVCache);
    assert.equal(host.nextPos, prompt.length);
    assert.equal(host.len[2], 5);
    assert.deepEqual(Array.from(host.positions(2)), [0, 1, 5, 6, 7]);
    assert.equal(host.bytes(), kn.bytes());
    const back = nat.createKV();
    back.loadFrom(host);
    const again = back.toHost();
    for (let l = 0; l < m.config.nLayers; l++) {
      const d = host.kvDim * host.len[l];
      assert.deepEqual(again.k[l].subarray(0, d), host.k[l].subarray(0, d));
      assert.deepEqual(again.v[l].subarray(0, d), host.v[l].subarray(0, d));
      assert.deepEqual(again.positions(l), host.positions(l));
    }
    // Continue decoding from the restored copy == from the original.
    const [a] = await nat.forward([{ kv: kn, tokens: [42], logits: "last" }]);
    const [b] = await nat.forward([{ kv: back, tokens: [42], logits: "last" }]);
    assert.deepEqual(a.logits, b.logits);
    // Cross-backend: a ts-built cache loaded into native continues like ts.
    const kt = ts.createKV();
    await ts.forward([{ kv: kt, tokens: prompt, logits: "none" }]);
    const fromTs = nat.createKV();
    fromTs.loadFrom(kt.toHost());
    const [c] = await nat.forward([{ kv: fromTs, tokens: [42], logits: "last" }]);
    const [d] = await ts.forward([{ kv: kt, tokens: [42], logits: "last" }]);
    assertLogits(c, d, "ts cache continued natively");
    // Shape mismatch is refused.
    assert.throws(
      () => back.loadFrom(new HostKVCache({ nLayers: 2, nKVHeads: 4, headDim: 8 })),
      /shape mismatch/,
    );
    nat.dispose();
  },
});

Deno.test({
  name: "native: bad input gets clear errors (token range, foreign cache, freed cache, missing library)",
  ignore,
  async fn() {
    const { config, weights } = synthModel({ rope: "interleaved", bias: false, seed: 5, tied: true });
    const nat = openNativeBackend(config, weights, { threads: 1 });
    const other = openNativeBackend(config, weights, { threads: 1 });
    const kv = nat.createKV();
    await assert.rejects(nat.forward([{ kv, tokens: [config.vocabSize], logits: "last" }]), /out of range/);
    await assert.rejects(nat.forward([{ kv, tokens: [], logits: "last" }]), /no tokens/);
    await assert.rejects(
      nat.forward([{ kv: other.createKV(), tokens: [1], logits: "last" }]),
      /does not belong/,
    );
    await assert.rejects(
      nat.forward([{ kv: new HostKVCache(kv.shape), tokens: [1], logits: "last" }]),
      /does not belong/,
    );
    await assert.rejects(
      nat.forward([{ kv, tokens: [1], logits: "last" }, { kv, tokens: [2], logits: "last" }]),
      /share a cache/,
    );
    assert.equal(kv.length(0), 0, "a failed step appends nothing");
    kv.free();
    await assert.rejects(nat.forward([{ kv, tokens: [1], logits: "last" }]), /after free/);
    assert.throws(
      () => openNativeBackend(config, weights, { path: "/nonexistent/liblethe.so" }),
      /not found/,
    );
    const bad = { ...weights, layers: weights.layers.slice(1) };
    assert.throws(() => openNativeBackend(config, bad), /layers/);
    const wrongShape = { ...weights, tokenEmbd: { ...weights.tokenEmbd, shape: [config.vocabSize, 32] } };
    assert.throws(() => openNativeBackend(config, wrongShape), /expected/);
    assert.ok(nat instanceof NativeBackend && kv instanceof NativeKV);
    assert.ok(nat.description.includes("cpu"), nat.description);
    assert.ok(CPU_LIB.endsWith("liblethe_cpu.so"));
    nat.dispose();
    other.dispose();
  },
});

// ---------- f16 KV cache ----------

/** Logit/score tolerance (relative) of f16-KV comparisons: twice the f16 unit roundoff (see the top). */
const F16_REL = 1e-3;

/** Every stored value of a snapshot is an f16 value (exactly representable in half precision). */
function assertF16Values(h: HostKVCache, what: string): void {
  for (let l = 0; l < h.shape.nLayers; l++) {
    const d = h.kvDim * h.len[l];
    for (const a of [h.k[l], h.v[l]]) {
      for (let i = 0; i < d; i++) {
        if (a[i] !== Math.f16round(a[i])) {
          assert.fail(`${what}: layer ${l} value ${a[i]} is not an f16 value`);
        }
      }
    }
  }
}

Deno.test({
  name: "native: f16 KV cache matches ts f16 at every step of a 64-token decode (synthetic + stories260K)",
  ignore,
  async fn() {
    const synth = synthModel({ rope: "half", bias: true, seed: 21, tied: false });
    const models = [{ ...synth, prompt: randomTokens(new Rng(22), 9, synth.config.vocabSize) }];
    const m = await loadOrSkip(STORIES);
    if (m) {
      models.push({
        config: m.config,
        weights: m.weights,
        prompt: m.tokenizer.encode("Once upon a time, a little dog", { addBos: true }),
      });
    }
    for (const { config, weights, prompt } of models) {
      const nat = openNativeBackend(config, weights, { kvPrecision: "f16", threads: 1 });
      assert.equal(nat.kvPrecision, "f16");
      const ts = createTsBackend(config, weights, { kvPrecision: "f16" });
      await compareDecode(nat, ts, prompt, 64 - prompt.length, undefined, F16_REL);
      // The f16 cache really changes the numbers (the comparison above is not an f32 one in disguise).
      const nat32 = openNativeBackend(config, weights, { threads: 1 });
      const [a] = await nat.forward([{ kv: nat.createKV(), tokens: prompt, logits: "all" }]);
      const [b] = await nat32.forward([{ kv: nat32.createKV(), tokens: prompt, logits: "all" }]);
      let d = 0;
      for (let i = 0; i < a.logits.length; i++) d = Math.max(d, Math.abs(a.logits[i] - b.logits[i]));
      console.log(
        `f16 vs f32 KV: max logit diff ${d.toExponential(2)} (max |logit| ${maxAbs(b.logits).toFixed(1)})`,
      );
      assert.ok(d > 0);
      nat32.dispose();
      nat.dispose();
    }
  },
});

Deno.test({
  name: "native: f16 KV toHost/loadFrom round trips exactly, bytes halve, f32 snapshots are rounded on load",
  ignore,
  async fn() {
    const { config, weights } = synthModel({ rope: "interleaved", bias: false, seed: 23, tied: true });
    const nat = openNativeBackend(config, weights, { kvPrecision: "f16", threads: 1 });
    const nat32 = openNativeBackend(config, weights, { threads: 1 });
    const prompt = randomTokens(new Rng(24), 20, config.vocabSize);
    const kn = nat.createKV(), k32 = nat32.createKV();
    await nat.forward([{ kv: kn, tokens: prompt, logits: "none" }]);
    await nat32.forward([{ kv: k32, tokens: prompt, logits: "none" }]);
    kn.compact(1, Int32Array.from([0, 3, 4, 9, 19]));
    k32.compact(1, Int32Array.from([0, 3, 4, 9, 19]));
    assert.equal(kn.bytes() * 2, k32.bytes(), "f16 rows take half the bytes");
    const host = kn.toHost();
    assert.equal(host.precision, "f16");
    assert.equal(host.bytes(), kn.bytes());
    assertF16Values(host, "toHost");
    // The f16 rows are the f32 rows rounded (same kernels up to the append).
    const h32 = k32.toHost();
    for (let l = 0; l < config.nLayers; l++) {
      const d = host.kvDim * host.len[l];
      let diff = 0;
      for (let i = 0; i < d; i++) diff = Math.max(diff, Math.abs(host.k[l][i] - Math.f16round(h32.k[l][i])));
      assert.ok(diff <= 1e-2, `layer ${l}: f16 K differs from rounded f32 K by ${diff}`);
    }
    // Round trip: write back, read again, bit-exact; decoding continues identically.
    const back = nat.createKV();
    back.loadFrom(host);
    const again = back.toHost();
    for (let l = 0; l < config.nLayers; l++) {
      const d = host.kvDim * host.len[l];
      assert.deepEqual(again.k[l].subarray(0, d), host.k[l].subarray(0, d));
      assert.deepEqual(again.v[l].subarray(0, d), host.v[l].subarray(0, d));
      assert.deepEqual(again.positions(l), host.positions(l));
    }
    assert.equal(back.bytes(), kn.bytes());
    const [a] = await nat.forward([{ kv: kn, tokens: [7], logits: "last" }]);
    const [b] = await nat.forward([{ kv: back, tokens: [7], logits: "last" }]);
    assert.deepEqual(a.logits, b.logits);
    // An f32 snapshot loaded into an f16 cache is rounded exactly like HostKVCache("f16").loadFrom.
    const fromF32 = nat.createKV();
    fromF32.loadFrom(h32);
    const want = new HostKVCache(h32.shape, 1, "f16");
    want.loadFrom(h32);
    const got = fromF32.toHost();
    for (let l = 0; l < config.nLayers; l++) {
      const d = want.kvDim * want.len[l];
      assert.deepEqual(got.k[l].subarray(0, d), want.k[l].subarray(0, d));
      assert.deepEqual(got.v[l].subarray(0, d), want.v[l].subarray(0, d));
    }
    // Rounding edge cases through the library: ties to even, overflow to inf, subnormals, -0.
    const kvd = config.nKVHeads * config.headDim;
    const edge = [
      1 + 2 ** -11, // tie: rounds down to 1 (even)
      1 + 3 * 2 ** -11, // tie: rounds up to 1 + 2^-9
      65519.99, // just below the inf threshold: 65504
      65520, // overflows to inf
      -70000,
      2 ** -25, // tie at the smallest subnormal: rounds to 0
      3 * 2 ** -25, // rounds up to 2^-23
      1e-6,
      -0,
      Math.PI,
      1 / 3,
    ];
    const row = new Float32Array(kvd);
    for (let i = 0; i < kvd; i++) row[i] = edge[i % edge.length] * (i >= edge.length ? -1.5 : 1);
    const e = new HostKVCache(host.shape, 1, "f32");
    for (let l = 0; l < config.nLayers; l++) e.append(l, row, row, 0);
    const ekv = nat.createKV();
    ekv.loadFrom(e);
    const eh = ekv.toHost();
    for (let i = 0; i < kvd; i++) {
      assert.ok(Object.is(eh.k[0][i], Math.f16round(row[i])), `f16(${row[i]}) = ${eh.k[0][i]}`);
      assert.ok(Object.is(eh.v[2][i], Math.f16round(row[i])));
    }
    for (const kv of [kn, k32, back, fromF32, ekv]) kv.free();
    nat.dispose();
    nat32.dispose();
  },
});

Deno.test({
  name: "native: 200 steps of random per-layer compactions interleaved with appends (slot reuse) match ts",
  ignore,
  async fn() {
    // Compaction only rewrites the library's logical→slot index and frees slots that later appends reuse, so
    // after many rounds the rows sit in scrambled slots: logits, scores and kv_read (logical order) must still
    // equal the ts backend doing the same, for f32 and f16 caches, two sequences batched together.
    for (const precision of ["f32", "f16"] as const) {
      const { config, weights } = synthModel({ rope: "half", bias: true, seed: 31, tied: false });
      const nat = openNativeBackend(config, weights, { kvPrecision: precision, threads: 1 });
      const ts = createTsBackend(config, weights, { kvPrecision: precision });
      const rel = precision === "f16" ? F16_REL : 1e-4;
      const rng = new Rng(precision === "f16" ? 33 : 32);
      const sc = { decay: 0.95, window: 4 };
      const kn = [nat.createKV(), nat.createKV()], kt = [ts.createKV(), ts.createKV()];
      let next = [randomTokens(rng, 6, config.vocabSize), randomTokens(rng, 3, config.vocabSize)];
      for (let step = 0; step < 200; step++) {
        const on = await nat.forward(
          kn.map((kv, s) => ({ kv, tokens: next[s], logits: "last", scores: sc })),
        );
        const ot = await ts.forward(kt.map((kv, s) => ({ kv, tokens: next[s], logits: "last", scores: sc })));
        for (let s = 0; s < 2; s++) {
          assertLogits(on[s], ot[s], `${precision} step ${step} seq ${s}`, rel);
          assertScores(on[s], ot[s], config.nHeads, `${precision} step ${step} seq ${s}`, rel);
        }
        if (step % 25 === 24) { // the caches themselves, in logical order
          for (let s = 0; s < 2; s++) {
            const hn = kn[s].toHost(), ht = kt[s].toHost();
            if (precision === "f16") {
              assertSameF16Cache(hn, ht, 0.01, `step ${step} seq ${s} cache`);
              continue;
            }
            for (let l = 0; l < config.nLayers; l++) {
              const d = hn.kvDim * hn.len[l];
              assert.equal(hn.len[l], ht.len[l]);
              assert.deepEqual(hn.positions(l), ht.positions(l));
              assertClose(hn.k[l].subarray(0, d), ht.k[l].subarray(0, d), 1e-4 * maxAbs(ht.k[l]), `k ${l}`);
              assertClose(hn.v[l].subarray(0, d), ht.v[l].subarray(0, d), 1e-4 * maxAbs(ht.v[l]), `v ${l}`);
            }
          }
        }
        // Random keep sets per sequence and layer: often one row (streaming-like), sometimes many or none
        // dropped, now and then everything (the next step then attends only to its own new tokens).
        for (let s = 0; s < 2; s++) {
          for (let l = 0; l < config.nLayers; l++) {
            const n = kn[s].length(l);
            assert.equal(n, kt[s].length(l));
            const r = rng.next();
            let keep: number[];
            if (r < 0.02) keep = [];
            else if (r < 0.15) keep = Array.from({ length: n }, (_, j) => j);
            else if (r < 0.55 || n < 24) {
              const drop = Math.floor(rng.next() * n);
              keep = Array.from({ length: n }, (_, j) => j).filter((j) => j !== drop);
            } else keep = Array.from({ length: n }, (_, j) => j).filter(() => rng.next() < 0.7);
            kn[s].compact(l, Int32Array.from(keep));
            kt[s].compact(l, Int32Array.from(keep));
            assert.deepEqual(kn[s].positions(l), kt[s].positions(l));
          }
          assert.equal(kn[s].bytes(), kt[s].bytes());
        }
        // Mostly one token per sequence, sometimes a few (several slots taken in one append).
        next = [0, 1].map((s) => {
          const last = on[s].logits;
          return step % 17 === 5 + s
            ? [argmax(last), ...randomTokens(rng, 2, config.vocabSize)]
            : [argmax(last)];
        });
        if (step === 120) { // a scrambled cache exported and re-imported continues identically
          const copy = nat.createKV();
          copy.loadFrom(kn[1].toHost());
          const [a] = await nat.forward([{ kv: copy, tokens: [5], logits: "last" }]);
          const [b] = await ts.forward([{ kv: kt[1].toHost(), tokens: [5], logits: "last" }]);
          assertLogits(a, b, `${precision} reloaded copy`, rel);
          copy.free();
        }
      }
      for (const kv of kn) kv.free();
      nat.dispose();
    }
  },
});
