/**
 * The WebGPU backend on whatever adapter is present (Mesa lavapipe in CI): the conformance suite
 * (tests/support/conformance.ts), with the caches read back from the GPU buffers themselves, plus what only
 * this backend has: its kernels on their own (batched matmul, rmsnorm with a row map, the f16 rounding of
 * kv_append), weight row chunks, query-chunked prefill attention, the fused decode kernel, the two storages of
 * an f16 cache (f16 elements with shader-f16, rounded f32 words without) and caches without a host mirror.
 * Skips (with the reason printed) only when there is no WebGPU adapter at all.
 */
import assert from "node:assert/strict";
import { agree, Checker, conformance, sharedModel, type Tolerances } from "./support/conformance.ts";
import { createTsBackend } from "../src/engine/ts/backend.ts";
import type { ScoreRequest, StepOutput } from "../src/engine/backend.ts";
import { argmax } from "../src/engine/sampler.ts";
import {
  openWebGPUBackend,
  webgpuAvailable,
  type WebGPUBackendOptions,
  WebGPUKV,
} from "../src/engine/webgpu/backend.ts";
import { F32, GpuKernels, type KVStorage, StepRecorder } from "../src/engine/webgpu/kernels.ts";
import { fromF16Bits } from "../src/model/f16.ts";
import { uploadF32, uploadMatrix } from "../src/engine/webgpu/weights.ts";
import { SHARED_MODELS } from "../src/model/loader.ts";
import { GGMLType, type ModelWeights, type Tensor } from "../src/model/types.ts";
import { dequantize, quantize } from "../src/model/ggml.ts";
import type { SequenceKV } from "../src/kv/cache.ts";

const avail = await webgpuAvailable();
if (!avail.ok) console.log(`webgpu tests: SKIPPED, ${avail.reason}`);
const ignore = !avail.ok;
const readback = (kv: SequenceKV) => (kv as WebGPUKV).toHostAsync();

/**
 * f16 caches on lavapipe: its f32 arithmetic (another summation order, exp and reductions of its own) differs
 * from the reference's more than the CPU library's does, so more K/V values land on the other side of an f16
 * rounding boundary, and each flip perturbs what later layers and tokens compute, more the longer the decode.
 * Measured over the suite (64-step decodes) and the 48-step runs below: up to 12% of the values differ
 * (bound 20%); near-cancelling layer-0 values differ by a few subnormal f16 steps (~3e-7 absolute); deeper
 * values by up to 1.7e-3 at a layer maximum of ~2 (bound one ulp + 2e-3 of the layer's maximum, everywhere);
 * logits by 1.1e-3 of their scale (in the small pruned caches of the prune-plan check, where a flipped row
 * carries more of the attention; bound 2e-3); scores by 8.9e-3 at nHeads 8 (bound 2.5e-3 · nHeads = 0.02).
 * The former webgpu bounds were 0.03 / 0.02 / 0.04 absolute (logits, scores, K/V).
 * Everything else (all of f32) at the strict bounds.
 */
const TOL: Partial<Tolerances> = {
  f16Frac: 0.2,
  f16KVRel: 2e-3,
  f16Layer0KVRel: 2e-3,
  f16LogitRel: 2e-3,
  f16ScoreRel: 2.5e-3,
};

conformance({
  name: "webgpu",
  skip: avail.ok ? null : avail.reason,
  open: (config, weights, opts) => openWebGPUBackend(config, weights, opts),
  steps: { decode: 64, types: 6, random: 40, short: 10 },
  golden: true,
  quantError: true,
  // Every type once (both RoPE styles covered); the stories260K variants below run Q8_0, Q4_0, F16 again.
  weightTypes: [
    { type: GGMLType.F32, rope: "half" },
    { type: GGMLType.F16, rope: "interleaved" },
    { type: GGMLType.BF16, rope: "half" },
    { type: GGMLType.Q8_0, rope: "interleaved" },
    { type: GGMLType.Q4_0, rope: "half" },
  ],
  tol: TOL,
  readback,
  elementBytes: (kv) => (kv as WebGPUKV).elemBytes,
});

/** A device of its own with the kernels loaded (shader-f16 where the adapter has it). */
async function kernelDevice(): Promise<{ device: GPUDevice; f16: boolean; k: GpuKernels }> {
  const adapter = (avail as { adapter: GPUAdapter }).adapter;
  const f16 = adapter.features.has("shader-f16");
  const device = await adapter.requestDevice({ requiredFeatures: f16 ? ["shader-f16"] : [] });
  return { device, f16, k: await GpuKernels.load(device, f16) };
}

Deno.test({
  name: "webgpu kernels: batched matmul (f32, f16, q8_0, q4_0 weights; bias; residual; row chunks) equals JS",
  ignore,
  async fn() {
    const { device, f16, k } = await kernelDevice();
    const rows = 40, cols = 64, n = 11; // n > 8 spans two token tiles
    let seed = 7;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
    const w = new Float32Array(rows * cols).map(rnd);
    const x = new Float32Array(n * cols).map(rnd);
    const y0 = new Float32Array(n * rows).map(rnd);
    const bias = new Float32Array(rows).map(rnd);
    const types = [GGMLType.F32, GGMLType.F16, GGMLType.Q8_0, GGMLType.Q4_0];
    for (const type of types) {
      for (const maxBinding of [1 << 20, 3 * cols * 4]) {
        const data = quantize(type, w);
        const t: Tensor = { name: "w", type, shape: [rows, cols], data };
        const wq = dequantize(type, data, rows * cols); // what the shader should see
        const m = uploadMatrix(device, "w", [t], { f16, maxBinding });
        if (maxBinding < 1 << 20) assert.ok(m.chunks.length > 1, "row chunks");
        const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
        const X = uploadF32(device, "x", x), B = uploadF32(device, "b", bias);
        const Y = device.createBuffer({ size: y0.byteLength, usage });
        device.queue.writeBuffer(Y, 0, y0);
        const rec = new StepRecorder(k);
        for (const ch of m.chunks) {
          rec.threads(k.pipeline("matmul", m.type), ch.rows * 2, [ch.buffer, "P", X, Y, B], [
            n,
            cols,
            ch.rows,
            rows,
            ch.row0,
            1,
            1,
            cols,
          ]);
        }
        const st = device.createBuffer({
          size: y0.byteLength,
          usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
        });
        const enc = device.createCommandEncoder();
        rec.encode(enc);
        enc.copyBufferToBuffer(Y, 0, st, 0, y0.byteLength);
        device.queue.submit([enc.finish()]);
        await st.mapAsync(GPUMapMode.READ);
        const got = new Float32Array(st.getMappedRange().slice(0));
        st.unmap();
        for (let i = 0; i < n; i++) {
          for (let o = 0; o < rows; o++) {
            let s = y0[i * rows + o] + bias[o];
            for (let c = 0; c < cols; c++) s += wq[o * cols + c] * x[i * cols + c];
            const d = Math.abs(got[i * rows + o] - s);
            assert.ok(
              d < 1e-4,
              `${GGMLType[type]} chunk ${maxBinding}: y[${i},${o}] = ${got[i * rows + o]}, want ${s}`,
            );
          }
        }
      }
    }
    // rmsnorm with a row map
    const dim = 64, eps = 1e-5;
    const xs = new Float32Array(3 * dim).map(rnd), wn = new Float32Array(dim).map(rnd);
    const map = new Uint32Array([2, 0]);
    const Xb = uploadF32(device, "x", xs), Wb = uploadF32(device, "w", wn);
    const Mb = device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(Mb, 0, map);
    const Yb = device.createBuffer({
      size: 2 * dim * 4,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
    });
    const st = device.createBuffer({
      size: 2 * dim * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const rec = new StepRecorder(k);
    rec.threads(k.pipeline("rmsnorm"), 2, ["P", Xb, Wb, Yb, Mb], [2, dim, new F32(eps), 1]);
    const enc = device.createCommandEncoder();
    rec.encode(enc);
    enc.copyBufferToBuffer(Yb, 0, st, 0, 2 * dim * 4);
    device.queue.submit([enc.finish()]);
    await st.mapAsync(GPUMapMode.READ);
    const got = new Float32Array(st.getMappedRange().slice(0));
    for (let r = 0; r < 2; r++) {
      const src = xs.subarray(map[r] * dim, (map[r] + 1) * dim);
      const ss = src.reduce((a, v) => a + v * v, 0);
      const sc = 1 / Math.sqrt(ss / dim + eps);
      for (let d = 0; d < dim; d++) assert.ok(Math.abs(got[r * dim + d] - src[d] * sc * wn[d]) < 1e-5);
    }
    device.destroy();
  },
});

Deno.test({
  name: "webgpu kv_append: f16 rounding is bit-exact with Math.f16round (ties, subnormals, overflow, -0)",
  ignore,
  async fn() {
    const { device, f16, k } = await kernelDevice();
    // edge cases: ties to even in the normal and subnormal ranges, range boundaries, overflow, signed zero
    const e: number[] = [
      0,
      -0,
      1,
      -1,
      65504,
      65519.99,
      65520,
      -65520,
      70000,
      1e30,
      -1e30,
      Infinity,
      -Infinity,
    ];
    for (
      const x of [1, 2 ** -14, 2 ** -20, 2 ** -24, 2 ** -25, 3 * 2 ** -25, 5 * 2 ** -25, 2 ** -26, 1e-40]
    ) {
      e.push(x, -x, x * (1 + 2 ** -11), x * (1 + 3 * 2 ** -11), x * (1 - 2 ** -12), x * (1 + 2 ** -20));
    }
    const u = new Uint32Array(1), f = new Float32Array(u.buffer);
    let seed = 99;
    const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0);
    while (e.length < 2 * 64 * 160) {
      // random bit patterns with exponents spread over f32 subnormals .. beyond the f16 range
      u[0] = ((rnd() & 0x80000000) | (((rnd() % 60) + 90) << 23) | (rnd() & 0x7fffff)) >>> 0;
      e.push(f[0]);
    }
    const kvDim = 64, t = e.length / (2 * kvDim);
    const src = Float32Array.from(e);
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    const qkv = uploadF32(device, "qkv", src);
    for (const storage of (f16 ? ["f32r", "f16"] : ["f32r"]) as KVStorage[]) {
      const eb = storage === "f16" ? 2 : 4;
      const K = device.createBuffer({ size: t * kvDim * eb, usage });
      const V = device.createBuffer({ size: t * kvDim * eb, usage });
      const P = device.createBuffer({ size: t * 4, usage });
      const rec = new StepRecorder(k);
      // stride 2·kvDim, k at 0: K gets the first half of each row, V the second
      rec.threads(k.pipeline("kv_append", storage), (t * kvDim) / 2, ["P", qkv, K, V, P], [
        t,
        kvDim,
        2 * kvDim,
        0,
        0,
        0,
        0,
        0,
      ]);
      const st = device.createBuffer({
        size: 2 * t * kvDim * eb,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      });
      const enc = device.createCommandEncoder();
      rec.encode(enc);
      enc.copyBufferToBuffer(K, 0, st, 0, t * kvDim * eb);
      enc.copyBufferToBuffer(V, 0, st, t * kvDim * eb, t * kvDim * eb);
      device.queue.submit([enc.finish()]);
      await st.mapAsync(GPUMapMode.READ);
      const buf = st.getMappedRange().slice(0);
      st.unmap();
      const got = storage === "f16" ? fromF16Bits(new Uint16Array(buf)) : new Float32Array(buf);
      for (let r = 0; r < t; r++) {
        for (let c = 0; c < 2 * kvDim; c++) {
          const x = src[r * 2 * kvDim + c];
          const g = c < kvDim ? got[r * kvDim + c] : got[t * kvDim + r * kvDim + c - kvDim];
          if (!Object.is(g, Math.f16round(x))) {
            assert.fail(`${storage}: ${x} stored as ${g}, Math.f16round gives ${Math.f16round(x)}`);
          }
        }
      }
      rec.release();
    }
    device.destroy();
  },
});

/** Prefill + `steps` greedy steps on stories260K against ts, with the given backend options. */
async function variant(
  name: string,
  weights: ModelWeights,
  opts: WebGPUBackendOptions,
  steps = 6,
  scores: ScoreRequest = { decay: 0.8, window: 2 },
): Promise<string> {
  const m = await sharedModel(SHARED_MODELS.stories260K);
  const ts = createTsBackend(m.config, weights, { kvPrecision: opts.kvPrecision });
  const gpu = await openWebGPUBackend(m.config, weights, opts);
  try {
    const ids = m.tokenizer.encode("One day a little bird", { addBos: true });
    await agree(new Checker(TOL), gpu, ts, ids, steps, scores, name, readback);
    return gpu.description;
  } finally {
    gpu.dispose();
  }
}

function convertWeights(w: ModelWeights, type: GGMLType): ModelWeights {
  const conv = (t: Tensor): Tensor => {
    const cols = t.shape[t.shape.length - 1];
    if (t.shape.length < 2 || ((type === GGMLType.Q8_0 || type === GGMLType.Q4_0) && cols % 32 !== 0)) {
      return t;
    }
    const n = t.shape.reduce((a, b) => a * b, 1);
    return { ...t, type, data: quantize(type, dequantize(t.type, t.data, n)) };
  };
  const emb = conv(w.tokenEmbd);
  return {
    tokenEmbd: emb,
    output: w.output === w.tokenEmbd ? emb : conv(w.output),
    outputNorm: w.outputNorm,
    layers: w.layers.map((l) => ({
      ...l,
      wq: conv(l.wq),
      wk: conv(l.wk),
      wv: conv(l.wv),
      wo: conv(l.wo),
      wGate: conv(l.wGate),
      wUp: conv(l.wUp),
      wDown: conv(l.wDown),
    })),
  };
}

Deno.test({
  name:
    "webgpu: stories260K as Q8_0 / Q4_0 / F16 (and F16 → f32 without shader-f16) matches ts on the same weights",
  ignore,
  async fn() {
    const m = await sharedModel(SHARED_MODELS.stories260K);
    assert.match(await variant("q8_0", convertWeights(m.weights, GGMLType.Q8_0), {}), /q8_0/);
    assert.match(await variant("q4_0", convertWeights(m.weights, GGMLType.Q4_0), {}), /q4_0/);
    const f16w = convertWeights(m.weights, GGMLType.F16);
    const d16 = await variant("f16", f16w, {});
    if (avail.ok && avail.adapter.features.has("shader-f16")) assert.match(d16, /f16/);
    assert.doesNotMatch(await variant("f16 fallback", f16w, { f16: false }), /f16/);
  },
});

Deno.test({
  name:
    "webgpu: row-chunked weights, query-chunked prefill attention and the fused decode kernel still match",
  ignore,
  async fn() {
    const m = await sharedModel(SHARED_MODELS.stories260K);
    const d = await variant("chunked", m.weights, { maxWeightBinding: 4096, attScratchBytes: 256 });
    assert.ok(d.length > 0);
    await variant("fused decode attention", m.weights, { fusedDecode: true });
  },
});

Deno.test({
  name: "webgpu: a cache without the host mirror reads back asynchronously; a bad config is refused",
  ignore,
  async fn() {
    const m = await sharedModel(SHARED_MODELS.stories260K);
    const gpu = await openWebGPUBackend(m.config, m.weights, { hostMirror: false });
    try {
      const kv = gpu.createKV() as WebGPUKV;
      const [r] = await gpu.forward([{ kv, tokens: [1, 400, 59], logits: "last" }]);
      assert.equal(r.logits.length, m.config.vocabSize);
      assert.throws(() => kv.toHost(), /toHostAsync/);
      const host = await kv.toHostAsync();
      assert.deepEqual(Array.from(host.pos[0].subarray(0, 3)), [0, 1, 2]);
    } finally {
      gpu.dispose();
    }
    await assert.rejects(openWebGPUBackend({ ...m.config, nKVHeads: 3 }, m.weights), /bad model config/);
  },
});

/** Adapter storage variants of an f16 cache: f16 elements (shader-f16) and rounded f32 words (without). */
function f16Variants(): { name: string; opts: WebGPUBackendOptions; storage: KVStorage }[] {
  const v: { name: string; opts: WebGPUBackendOptions; storage: KVStorage }[] = [
    { name: "f16 KV in f32 words", opts: { kvPrecision: "f16", f16: false }, storage: "f32r" },
  ];
  if (avail.ok && avail.adapter.features.has("shader-f16")) {
    v.unshift({ name: "f16 KV (shader-f16)", opts: { kvPrecision: "f16" }, storage: "f16" });
  }
  return v;
}

/** ts with an f16 cache vs webgpu with an f16 cache, in lockstep; returns the GPU outputs of every step. */
async function lockstepF16(opts: WebGPUBackendOptions, storage: KVStorage | null, steps: number) {
  const m = await sharedModel(SHARED_MODELS.stories260K);
  const ts = createTsBackend(m.config, m.weights, { kvPrecision: "f16" });
  const gpu = await openWebGPUBackend(m.config, m.weights, opts);
  const check = new Checker(TOL);
  const outs: StepOutput[] = [];
  try {
    const ids = m.tokenizer.encode("Once upon a time", { addBos: true });
    const scores = { decay: 0.95, window: 4 };
    const a = ts.createKV(), b = gpu.createKV() as WebGPUKV;
    if (storage) assert.equal(b.storage, storage);
    let tokens = ids;
    for (let s = 0; s <= steps; s++) {
      const [ra] = await ts.forward([{ kv: a, tokens, logits: s === 0 ? "all" : "last", scores }]);
      const [rb] = await gpu.forward([{ kv: b, tokens, logits: s === 0 ? "all" : "last", scores }]);
      check.step(rb, ra, m.config.nHeads, "f16", `step ${s}`);
      outs.push(rb);
      tokens = [argmax(ra.logits.subarray(ra.logits.length - m.config.vocabSize))];
    }
    check.f16Cache(await b.toHostAsync(), a.toHost(), "after decode");
    assert.equal(b.bytes(), a.bytes() * (b.storage === "f16" ? 1 : 2));
    return outs;
  } finally {
    gpu.dispose();
  }
}

Deno.test({
  name:
    "webgpu f16 KV: f16 elements and rounded f32 words give the same outputs bit for bit; fused and chunked too",
  ignore,
  async fn() {
    const runs: StepOutput[][] = [];
    for (const v of f16Variants()) runs.push(await lockstepF16(v.opts, v.storage, 32));
    // the fused decode kernel and query-chunked prefill attention read f16 rows too
    await lockstepF16({ ...f16Variants()[0].opts, fusedDecode: true, attScratchBytes: 256 }, null, 16);
    for (let i = 1; i < runs.length; i++) {
      for (let s = 0; s < runs[0].length; s++) {
        assert.deepEqual(runs[i][s].logits, runs[0][s].logits, `storage variants, step ${s}`);
        assert.deepEqual(runs[i][s].scores, runs[0][s].scores, `storage variants, step ${s} scores`);
      }
    }
  },
});

Deno.test({
  name: "webgpu: a step applies the prune plans of every layer of every sequence inside its one submit",
  ignore,
  async fn() {
    const m = await sharedModel(SHARED_MODELS.stories260K);
    const gpu = await openWebGPUBackend(m.config, m.weights);
    const ts = createTsBackend(m.config, m.weights);
    const device = gpu.kernels.device, queue = device.queue;
    let submits = 0, buffers = 0;
    const submit = queue.submit.bind(queue), create = device.createBuffer.bind(device);
    queue.submit = (cbs) => (submits++, submit(cbs));
    device.createBuffer = (d) => (buffers++, create(d));
    try {
      const L = m.config.nLayers;
      const prompts = ["Once upon a time there was a big", "The little cat sat on the"].map((p) =>
        m.tokenizer.encode(p, { addBos: true })
      );
      const kvs = prompts.map(() => gpu.createKV()), refs = prompts.map(() => ts.createKV());
      const every = (kv: SequenceKV, r: number) =>
        Array.from(
          { length: L },
          (_, l) => Int32Array.from({ length: kv.length(l) }, (_, j) => j).filter((j) => j % r),
        );
      const step = async (tok: number, plans?: (kv: SequenceKV) => (Int32Array | null)[]) => {
        const inputs = kvs.map((kv, i) => ({
          kv,
          tokens: prompts[i],
          logits: "last" as const,
          compact: plans?.(kv),
        }));
        prompts.fill([tok]);
        const od = await gpu.forward(inputs);
        const or = await ts.forward(inputs.map((x, i) => ({ ...x, kv: refs[i] })));
        od.forEach((o, i) => new Checker(TOL).step(o, or[i], m.config.nHeads, "f32", `seq ${i}`));
      };
      await step(5);
      await step(6, (kv) => every(kv, 5)); // the keep buffer takes its size
      submits = buffers = 0;
      await step(7);
      const plain = { submits, buffers };
      submits = buffers = 0;
      await step(8, (kv) => every(kv, 3)); // every layer of both sequences
      assert.deepEqual({ submits, buffers }, plain, "a step with plans: the same one submit, no new buffer");
      assert.equal(plain.submits, 1);
      for (const [i, kv] of kvs.entries()) {
        new Checker(TOL).cache(await readback(kv), refs[i].toHost(), `seq ${i}`);
      }
      // Outside a step (a finished sequence's last plan): every layer in one submit too.
      submits = 0;
      const plan = every(kvs[0], 2);
      kvs[0].compact(plan);
      refs[0].compact(plan);
      assert.equal(submits, 1);
      new Checker(TOL).cache(await readback(kvs[0]), refs[0].toHost(), "after compact()");
    } finally {
      gpu.dispose();
    }
  },
});
