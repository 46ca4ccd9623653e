/**
 * The CUDA backend (native/cuda via lethe.h).
 *
 * Everywhere nvcc exists: the library compiles, loads with Deno.dlopen and, without a device or driver,
 * fails cleanly ("no CUDA device: …") from lethe_device_count, lethe_model_create and openCudaBackend.
 * Where a device exists (device count > 0) the GPU tests run instead: logits and attention scores agree with
 * the TypeScript reference on stories260K over a prefill and 64 decode steps, greedy output equals the golden
 * text, quantized weight types agree, batching and KV compaction / export / import behave like the reference,
 * and so does the f16 KV cache (kv_type 1) against the ts reference with kvPrecision "f16".
 * Without a device those are ignored, and the reason is printed. The host-emulator build of the same sources
 * (native/cuda/emu/cuda_emu.h) runs a shorter version of those tests everywhere g++ exists.
 *
 * Tolerance as for the CPU library: logits max |cuda − ts| ≤ 1e-4 · max(1, max |ts logit|); scores ≤ 1e-4 ·
 * nHeads absolute. f16 KV caches (as in tests/native_test.ts): both sides round the same K/V values to half, but
 * a value whose two f32 computations differ in the last bit can land on the two sides of a rounding boundary,
 * so logits/scores are compared with the f16 unit roundoff (5e-4) instead, and the caches themselves are
 * compared at every step: bit-equal but for a few percent of the elements, each within one f16 ulp (+ 5e-4 of
 * the layer's largest value).
 */
import assert from "node:assert/strict";
import { assertClose, maxAbs } from "./support/compare.ts";
import { dirname, resolve } from "node:path";
import { buildNative, CUDA_LIB } from "../native/build.ts";
import { cudaLibraryPath, type CudaProbe, openCudaBackend, probeCuda } from "../src/engine/cuda.ts";
import { createTsBackend } from "../src/engine/ts/backend.ts";
import type { Backend, KVPrecision, StepInput, StepOutput } from "../src/engine/backend.ts";
import { HostKVCache } from "../src/kv/cache.ts";
import { runSequence, Sequence } from "../src/engine/sequence.ts";
import { argmax, GREEDY } from "../src/engine/sampler.ts";
import { createPolicy } from "../src/kv/policy.ts";
import { loadModel, REPO_ROOT, SHARED_MODELS } from "../src/model/loader.ts";
import {
  GGMLType,
  type LayerWeights,
  type ModelConfig,
  type ModelWeights,
  type Tensor,
} from "../src/model/types.ts";
import { quantize, quantizeQ4_0, quantizeQ8_0 } from "../src/model/ggml.ts";

async function hasNvcc(): Promise<boolean> {
  try {
    return (await new Deno.Command("nvcc", { args: ["--version"], stdout: "null", stderr: "null" }).output())
      .success;
  } catch {
    return false;
  }
}

const NVCC = await hasNvcc();
const built = NVCC ? (await buildNative()).find((r) => r.lib === "cuda") : undefined;
const libBuilt = built?.status === "built" || built?.status === "up-to-date";

function tryProbe(path: string): { probe?: CudaProbe; error: string } {
  try {
    return { probe: probeCuda(path), error: "" };
  } catch (e) {
    return { error: (e as Error).message };
  }
}

// The library built here (for the build / no-device tests) ...
const local = libBuilt ? tryProbe(CUDA_LIB) : { probe: undefined, error: "library not built" };
const localNoDevice = (local.probe?.devices ?? -1) < 1;
// ... and the one the GPU tests use: env LETHE_CUDA_LIB (e.g. the host-emulated build, see
// native/cuda/emu/cuda_emu.h) or the same library.
const GPU_LIB = cudaLibraryPath();
const gpu = GPU_LIB === CUDA_LIB ? local : tryProbe(GPU_LIB);
const DEVICES = gpu.probe?.devices ?? -1;
const noGpu = DEVICES < 1;
if (!NVCC) {
  console.log("cuda: nvcc not found; the CUDA library is not built here (build and GPU tests ignored)");
} else if (!libBuilt) console.log(`cuda: build did not succeed: ${built?.message}`);
if (noGpu) {
  const why = gpu.probe?.error ?? (gpu.error || "library not built");
  console.log(`cuda: GPU tests ignored: ${why} (device count ${DEVICES}, ${GPU_LIB})`);
} else {
  console.log(`cuda: running GPU tests on ${gpu.probe!.info} (${GPU_LIB})`);
}

const STORIES = Deno.env.get("LETHE_MODEL") ?? SHARED_MODELS.stories260K;
const GOLDEN = resolve(REPO_ROOT, "..", "shared", "golden", "stories260K_greedy.json");

/** A minimal raw binding, independent of src/engine/native.ts. */
const RAW_SYMBOLS = {
  lethe_device_count: { parameters: [], result: "i32" },
  lethe_last_error: { parameters: [], result: "pointer" },
  lethe_backend_info: { parameters: [], result: "pointer" },
  lethe_abi_version: { parameters: [], result: "i32" },
  lethe_model_create: { parameters: ["buffer"], result: "pointer" },
  lethe_model_free: { parameters: ["pointer"], result: "void" },
} as const;

function cstr(p: Deno.PointerValue): string {
  return p === null ? "" : Deno.UnsafePointerView.getCString(p);
}

/** lethe_config bytes (lethe.h: 13 × 4 bytes). */
function configBytes(c: Partial<Record<string, number>> = {}): Uint8Array {
  const b = new ArrayBuffer(52);
  const dv = new DataView(b);
  const ints = [
    c.dim ?? 64,
    c.nLayers ?? 2,
    c.nHeads ?? 4,
    c.nKVHeads ?? 2,
    c.headDim ?? 16,
    c.ffnDim ?? 96,
    c.vocab ?? 32,
  ];
  ints.forEach((v, i) => dv.setInt32(i * 4, v, true));
  dv.setFloat32(28, 1e-5, true);
  dv.setFloat32(32, 10000, true);
  dv.setInt32(36, 0, true);
  dv.setInt32(40, 0, true);
  dv.setInt32(44, c.device ?? 0, true);
  dv.setInt32(48, c.kvType ?? 0, true); // kv_type: 0 = f32, 1 = f16
  return new Uint8Array(b);
}

Deno.test({
  name: "cuda: liblethe_cuda.so compiles with nvcc and loads with Deno.dlopen",
  ignore: !NVCC,
  fn() {
    assert.ok(libBuilt, `CUDA build failed: ${built?.message}`);
    assert.ok(Deno.statSync(CUDA_LIB).isFile, `${CUDA_LIB} missing`);
    const lib = Deno.dlopen(CUDA_LIB, RAW_SYMBOLS);
    assert.equal(lib.symbols.lethe_abi_version(), 1);
    assert.match(cstr(lib.symbols.lethe_backend_info()), /^cuda/);
  },
});

Deno.test({
  name: "cuda: without a device, device count is -1 and model create / openCudaBackend fail cleanly",
  ignore: !libBuilt || !localNoDevice,
  async fn() {
    const lib = Deno.dlopen(CUDA_LIB, RAW_SYMBOLS).symbols;
    assert.equal(lib.lethe_device_count(), -1);
    const err = cstr(lib.lethe_last_error());
    assert.match(err, /^no CUDA device: \S/, err);
    assert.match(cstr(lib.lethe_backend_info()), /^cuda \(no CUDA device: /);

    // A valid config fails on the missing device: NULL + the same kind of message.
    assert.equal(lib.lethe_model_create(configBytes()), null);
    assert.match(cstr(lib.lethe_last_error()), /^no CUDA device: \S/);
    // A bad config is rejected first, with a message naming the problem.
    assert.equal(lib.lethe_model_create(configBytes({ nHeads: 3, nKVHeads: 2 })), null);
    assert.match(cstr(lib.lethe_last_error()), /n_heads 3 is not a multiple of n_kv_heads 2/);
    assert.equal(lib.lethe_model_create(configBytes({ headDim: 15 })), null);
    assert.match(cstr(lib.lethe_last_error()), /head_dim 15 must be even/);
    assert.equal(lib.lethe_model_create(configBytes({ dim: -1 })), null);
    assert.match(cstr(lib.lethe_last_error()), /dimensions out of range/);
    assert.equal(lib.lethe_model_create(null), null);
    assert.match(cstr(lib.lethe_last_error()), /cfg is NULL/);
    for (const kvType of [2, -1]) {
      assert.equal(lib.lethe_model_create(configBytes({ kvType })), null);
      assert.match(
        cstr(lib.lethe_last_error()),
        new RegExp(`unknown kv_type ${kvType} \\(0 = f32, 1 = f16\\)`),
      );
    }
    // f16 (kv_type 1) is a valid config: it too fails only on the missing device.
    assert.equal(lib.lethe_model_create(configBytes({ kvType: 1 })), null);
    assert.match(cstr(lib.lethe_last_error()), /^no CUDA device: \S/);

    assert.equal(local.probe?.devices, -1);
    assert.match(local.probe?.error ?? "", /^no CUDA device: \S/);
    const model = await loadModel(STORIES);
    await assert.rejects(
      () => openCudaBackend(model.config, model.weights, { path: CUDA_LIB }),
      (e: Error) => e instanceof Error && /^no CUDA device: \S/.test(e.message),
    );
    // A missing library is a clear error too (not a crash).
    await assert.rejects(
      () => openCudaBackend(model.config, model.weights, { path: "/nonexistent/liblethe_cuda.so" }),
      /cuda backend unavailable: native library not found/,
    );
  },
});

// ---------------------------------------------------------------------------------------------------------
// GPU tests (device count > 0)

/** Relative tolerance of logits/scores: 1e-4 with f32 KV rows, the f16 unit roundoff with f16 rows. */
const F16_REL = 5e-4;
function relTol(p: KVPrecision): number {
  return p === "f16" ? F16_REL : 1e-4;
}

function assertStep(got: StepOutput, want: StepOutput, nHeads: number, what: string, rel = 1e-4): void {
  assertClose(got.logits, want.logits, rel * Math.max(1, maxAbs(want.logits)), `${what} logits`);
  assert.equal(got.scores?.length, want.scores?.length, `${what}: score layers`);
  want.scores?.forEach((s, l) => assertClose(got.scores![l], s, rel * nHeads, `${what} scores layer ${l}`));
}

/**
 * Two f16 caches hold the same rows: equal positions, every value an f16 value within one f16 ulp (+ F16_REL of
 * the layer's largest value) of the other, and at most `maxFrac` of the values not bit-identical.
 */
function assertSameF16Cache(a: HostKVCache, b: HostKVCache, maxFrac: number, what: string): void {
  assert.equal(a.precision, "f16");
  assert.equal(b.precision, "f16");
  let differ = 0, total = 0;
  for (let l = 0; l < a.shape.nLayers; l++) {
    assert.equal(a.len[l], b.len[l], `${what}: layer ${l} length`);
    assert.deepEqual(a.positions(l), b.positions(l));
    const d = a.kvDim * a.len[l];
    for (const [x, y] of [[a.k[l], b.k[l]], [a.v[l], b.v[l]]]) {
      const tol = F16_REL * maxAbs(y.subarray(0, d));
      for (let i = 0; i < d; i++) {
        total++;
        if (x[i] !== Math.f16round(x[i])) {
          assert.fail(`${what}: layer ${l} value ${x[i]} is not an f16 value`);
        }
        if (x[i] === y[i]) continue;
        differ++;
        const ulp = 2 ** (Math.floor(Math.log2(Math.max(Math.abs(y[i]), 2 ** -14))) - 10);
        assert.ok(Math.abs(x[i] - y[i]) <= ulp + tol, `${what}: layer ${l} values ${x[i]} vs ${y[i]}`);
      }
    }
  }
  assert.ok(differ <= maxFrac * total, `${what}: ${differ} of ${total} f16 values differ`);
}

/**
 * Prefill `prompt` in one call, then greedy-decode `steps` tokens; logits and scores compared every step (and
 * the caches themselves with f16 KV rows).
 */
async function compareDecode(gpu: Backend, ts: Backend, prompt: number[], steps: number): Promise<void> {
  assert.equal(gpu.kvPrecision, ts.kvPrecision);
  const rel = relTol(gpu.kvPrecision);
  const kg = gpu.createKV(), kt = ts.createKV();
  const scores = { decay: 0.95, window: 1 << 30 };
  let tokens = prompt;
  for (let step = 0; step <= steps; step++) {
    const logits = step === 0 ? "all" : "last";
    const [og] = await gpu.forward([{ kv: kg, tokens, logits, scores }]);
    const [ot] = await ts.forward([{ kv: kt, tokens, logits, scores }]);
    assertStep(og, ot, gpu.config.nHeads, `step ${step}`, rel);
    if (gpu.kvPrecision === "f16") assertSameF16Cache(kg.toHost(), kt.toHost(), 0.05, `step ${step} cache`);
    for (let l = 0; l < gpu.config.nLayers; l++) {
      assert.equal(kg.length(l), kt.length(l));
      assert.deepEqual(kg.positions(l), kt.positions(l));
    }
    assert.equal(kg.nextPos, kt.nextPos);
    tokens = [argmax(ot.logits.subarray(ot.logits.length - gpu.config.vocabSize))];
  }
  kg.free();
}

async function agreeStories(path: string, steps: number, kvPrecision: KVPrecision = "f32"): Promise<void> {
  const model = await loadModel(STORIES);
  const gpu = await openCudaBackend(model.config, model.weights, { path, kvPrecision });
  try {
    assert.equal(gpu.kvPrecision, kvPrecision);
    const ts = createTsBackend(model.config, model.weights, { kvPrecision });
    await compareDecode(gpu, ts, model.tokenizer.encode("Once upon a time", { addBos: true }), steps);
  } finally {
    gpu.dispose();
  }
}

async function greedyGolden(path: string): Promise<void> {
  const golden = JSON.parse(await Deno.readTextFile(GOLDEN)) as {
    cases: { prompt: string; steps: number; text: string }[];
  };
  const model = await loadModel(STORIES);
  const gpu = await openCudaBackend(model.config, model.weights, { path });
  try {
    for (const c of golden.cases) {
      const prompt = model.tokenizer.encode(c.prompt, { addBos: true });
      const seq = new Sequence(gpu, model.tokenizer, {
        maxTokens: c.steps + 1 - prompt.length,
        stop: [],
        sampling: GREEDY,
        policy: createPolicy({ name: "full" }, { nLayers: model.config.nLayers, contextLength: 512 }),
      });
      seq.feed(prompt);
      seq.start();
      let text = model.tokenizer.decode(prompt);
      for await (const ev of runSequence(gpu, seq)) text += ev.text;
      assert.equal(text, c.text);
    }
  } finally {
    gpu.dispose();
  }
}

// ---------- synthetic models: every weight type, both RoPE styles, biases ----------

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

function synthModel(
  rope: "interleaved" | "half",
  bias: boolean,
  type: GGMLType,
  seed: number,
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
    ropeStyle: rope,
    bosId: 1,
    eosId: 2,
  };
  const rng = new Rng(seed);
  const vec = (name: string, n: number, scale: number, offset = 0): Tensor => {
    const x = new Float32Array(n);
    for (let i = 0; i < n; i++) x[i] = offset + scale * rng.normal();
    return { name, type: GGMLType.F32, shape: [n], data: new Uint8Array(x.buffer) };
  };
  const mat = (name: string, rows: number, cols: number, scale: number): Tensor => {
    const x = new Float32Array(rows * cols);
    for (let i = 0; i < x.length; i++) x[i] = scale * rng.normal();
    const data = type === GGMLType.F32
      ? new Uint8Array(x.buffer)
      : type === GGMLType.Q8_0
      ? quantizeQ8_0(x)
      : type === GGMLType.Q4_0
      ? quantizeQ4_0(x)
      : quantize(type, x);
    return { name, type, shape: [rows, cols], data };
  };
  const { dim, nHeads, nKVHeads, headDim, ffnDim, vocabSize } = config;
  const qd = nHeads * headDim, kvd = nKVHeads * headDim, s = 1 / Math.sqrt(dim);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < config.nLayers; l++) {
    layers.push({
      attnNorm: vec(`l${l}.attn_norm`, dim, 0.1, 1),
      wq: mat(`l${l}.wq`, qd, dim, 3 * s),
      wk: mat(`l${l}.wk`, kvd, dim, 3 * s),
      wv: mat(`l${l}.wv`, kvd, dim, s),
      wo: mat(`l${l}.wo`, dim, qd, s),
      bq: bias ? vec(`l${l}.bq`, qd, 0.5) : undefined,
      bk: bias ? vec(`l${l}.bk`, kvd, 0.5) : undefined,
      bv: bias ? vec(`l${l}.bv`, kvd, 0.5) : undefined,
      ffnNorm: vec(`l${l}.ffn_norm`, dim, 0.1, 1),
      wGate: mat(`l${l}.w_gate`, ffnDim, dim, s),
      wUp: mat(`l${l}.w_up`, ffnDim, dim, s),
      wDown: mat(`l${l}.w_down`, dim, ffnDim, 1 / Math.sqrt(ffnDim)),
    });
  }
  const tokenEmbd = mat("tok_embd", vocabSize, dim, 1);
  const output = bias ? mat("output", vocabSize, dim, s) : tokenEmbd; // tied and untied both covered
  return { config, weights: { tokenEmbd, layers, outputNorm: vec("out_norm", dim, 0.1, 1), output } };
}

async function agreeTypes(
  path: string,
  cases: { type: GGMLType; rope: "interleaved" | "half" }[],
  steps: number,
): Promise<void> {
  for (const [i, { type, rope }] of cases.entries()) {
    const { config, weights } = synthModel(rope, rope === "half", type, 10 + i);
    const gpu = await openCudaBackend(config, weights, { path });
    try {
      const rng = new Rng(99 + i);
      const prompt = Array.from({ length: 13 }, () => Math.floor(rng.next() * config.vocabSize));
      await compareDecode(gpu, createTsBackend(config, weights), prompt, steps);
    } catch (e) {
      throw new Error(`type ${GGMLType[type]} rope ${rope}: ${(e as Error).message}`);
    } finally {
      gpu.dispose();
    }
  }
}

/** Batched = alone; per-layer compaction, then decoding; export equals the reference; import reproduces. */
async function batchAndCompaction(path: string, kvPrecision: KVPrecision = "f32"): Promise<void> {
  const model = await loadModel(STORIES);
  const { config } = model;
  const gpu = await openCudaBackend(config, model.weights, { path, kvPrecision });
  const ts = createTsBackend(config, model.weights, { kvPrecision });
  const rel = relTol(kvPrecision);
  try {
    const a = model.tokenizer.encode("Tom had a red ball. He", { addBos: true });
    const b = model.tokenizer.encode("The cat", { addBos: true });
    const scores = { decay: 0.9, window: 4 };
    const kA = gpu.createKV(), kB = gpu.createKV();
    const [oa, ob] = await gpu.forward([
      { kv: kA, tokens: a, logits: "all", scores },
      { kv: kB, tokens: b, logits: "last", scores },
    ]);
    const [ta] = await ts.forward([{ kv: ts.createKV(), tokens: a, logits: "all", scores }]);
    const kT = ts.createKV();
    const [tb] = await ts.forward([{ kv: kT, tokens: b, logits: "last", scores }]);
    assertStep(oa, ta, config.nHeads, "batch seq A", rel);
    assertStep(ob, tb, config.nHeads, "batch seq B", rel);

    for (let l = 0; l < config.nLayers; l++) {
      const n = kB.length(l);
      const keep = Int32Array.from({ length: n }, (_, j) => j).filter((j) => j === 0 || (j + l) % 2 === 1);
      kB.compact(l, keep);
      kT.compact(l, keep);
      assert.equal(kB.length(l), keep.length);
      assert.deepEqual(kB.positions(l), kT.positions(l));
    }
    let tok = [argmax(tb.logits)];
    for (let step = 0; step < 5; step++) {
      const [og] = await gpu.forward([{ kv: kB, tokens: tok, logits: "last", scores }]);
      const [ot] = await ts.forward([{ kv: kT, tokens: tok, logits: "last", scores }]);
      assertStep(og, ot, config.nHeads, `after compaction step ${step}`, rel);
      tok = [argmax(ot.logits)];
    }
    const host = kB.toHost();
    const ref = (kT as HostKVCache).toHost();
    assert.equal(host.nextPos, ref.nextPos);
    assert.equal(host.precision, kvPrecision);
    assert.equal(kB.bytes(), kT.bytes(), "bytes at the stored element size, as the reference counts them");
    for (let l = 0; l < config.nLayers; l++) {
      const n = ref.length(l), d = ref.kvDim;
      assert.equal(host.length(l), n);
      assert.deepEqual(host.positions(l), ref.positions(l));
      if (kvPrecision === "f16") continue; // compared below, value by value
      assertClose(host.k[l].subarray(0, n * d), ref.k[l].subarray(0, n * d), 1e-4, `K layer ${l}`);
      assertClose(host.v[l].subarray(0, n * d), ref.v[l].subarray(0, n * d), 1e-4, `V layer ${l}`);
    }
    if (kvPrecision === "f16") assertSameF16Cache(host, ref, 0.05, "export after compaction");
    const kC = gpu.createKV();
    kC.loadFrom(host);
    assert.equal(kC.bytes(), kB.bytes());
    const back = kC.toHost(); // kv_write then kv_read: bit-exact (f16 values stay f16 values)
    for (let l = 0; l < config.nLayers; l++) {
      const d = host.kvDim * host.len[l];
      assert.deepEqual(back.k[l].subarray(0, d), host.k[l].subarray(0, d));
      assert.deepEqual(back.v[l].subarray(0, d), host.v[l].subarray(0, d));
      assert.deepEqual(back.positions(l), host.positions(l));
    }
    const input: StepInput = { kv: kB, tokens: tok, logits: "last", scores };
    const [fromB] = await gpu.forward([input]);
    const [fromC] = await gpu.forward([{ ...input, kv: kC }]);
    assert.deepEqual(fromC.logits, fromB.logits);
    assert.deepEqual(fromC.scores, fromB.scores);
    kA.free();
    kB.free();
    kC.free();
  } finally {
    gpu.dispose();
  }
}

/**
 * f16 KV rows specifically: bytes halve against an f32 cache of the same rows, exported values are the f32 rows
 * rounded, kv_write/kv_read round trips bit-exactly (decoding continues identically), an f32 snapshot is rounded
 * on load exactly like HostKVCache("f16").loadFrom, rounding edge cases equal Math.f16round, and the f16 rows
 * really change the logits.
 */
async function f16KVRoundTrip(path: string): Promise<void> {
  const model = await loadModel(STORIES);
  const { config } = model;
  const g16 = await openCudaBackend(config, model.weights, { path, kvPrecision: "f16" });
  const g32 = await openCudaBackend(config, model.weights, { path });
  try {
    assert.equal(g16.kvPrecision, "f16");
    assert.match(g16.description, /f16 KV/);
    const prompt = model.tokenizer.encode("Once upon a time, there was a girl", { addBos: true });
    const k16 = g16.createKV(), k32 = g32.createKV();
    const [o16] = await g16.forward([{ kv: k16, tokens: prompt, logits: "all" }]);
    const [o32] = await g32.forward([{ kv: k32, tokens: prompt, logits: "all" }]);
    let d = 0;
    for (let i = 0; i < o16.logits.length; i++) d = Math.max(d, Math.abs(o16.logits[i] - o32.logits[i]));
    assert.ok(d > 0, "f16 KV rows change the logits (not an f32 run in disguise)");
    const keep = Int32Array.from([0, 3, 4, 7, prompt.length - 1]);
    k16.compact(1, keep);
    k32.compact(1, keep);
    assert.equal(k16.bytes() * 2, k32.bytes(), "f16 rows take half the bytes");
    const host = k16.toHost(), h32 = k32.toHost();
    assert.equal(host.precision, "f16");
    assert.equal(host.bytes(), k16.bytes());
    for (let l = 0; l < config.nLayers; l++) {
      assert.deepEqual(host.positions(l), h32.positions(l));
      const n = host.kvDim * host.len[l];
      for (const [a, b] of [[host.k[l], h32.k[l]], [host.v[l], h32.v[l]]]) {
        for (let i = 0; i < n; i++) {
          if (a[i] !== Math.f16round(a[i])) assert.fail(`layer ${l}: ${a[i]} is not an f16 value`);
          // Layer 0's K/V are computed from the same inputs by the same kernels in both caches: the f16 rows
          // are exactly the f32 rows rounded by Math.f16round (the append kernel's rounding, bit for bit).
          if (l === 0 && !Object.is(a[i], Math.f16round(b[i]))) {
            assert.fail(
              `layer 0 element ${i}: f16 row holds ${a[i]}, Math.f16round(${b[i]}) = ${Math.f16round(b[i])}`,
            );
          }
        }
      }
    }
    // Round trip: write back, read again, bit-exact; decoding continues identically.
    const back = g16.createKV();
    back.loadFrom(host);
    const again = back.toHost();
    for (let l = 0; l < config.nLayers; l++) {
      const n = host.kvDim * host.len[l];
      assert.deepEqual(again.k[l].subarray(0, n), host.k[l].subarray(0, n));
      assert.deepEqual(again.v[l].subarray(0, n), host.v[l].subarray(0, n));
      assert.deepEqual(again.positions(l), host.positions(l));
    }
    assert.equal(back.bytes(), k16.bytes());
    const scores = { decay: 0.9, window: 3 };
    const [a] = await g16.forward([{ kv: k16, tokens: [7], logits: "last", scores }]);
    const [b] = await g16.forward([{ kv: back, tokens: [7], logits: "last", scores }]);
    assert.deepEqual(a.logits, b.logits);
    assert.deepEqual(a.scores, b.scores);
    // An f32 snapshot loaded into an f16 cache is rounded exactly like HostKVCache("f16").loadFrom.
    const fromF32 = g16.createKV();
    fromF32.loadFrom(h32);
    const want = new HostKVCache(h32.shape, 1, "f16");
    want.loadFrom(h32);
    const got = fromF32.toHost();
    for (let l = 0; l < config.nLayers; l++) {
      const n = want.kvDim * want.len[l];
      assert.deepEqual(got.k[l].subarray(0, n), want.k[l].subarray(0, n));
      assert.deepEqual(got.v[l].subarray(0, n), want.v[l].subarray(0, n));
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
      2 ** -14 - 2 ** -25, // tie between the largest subnormal and the smallest normal: up to 2^-14
      1e-6,
      -0,
      Math.PI,
      1 / 3,
    ];
    const row = new Float32Array(kvd);
    for (let i = 0; i < kvd; i++) row[i] = edge[i % edge.length] * (i >= edge.length ? -1.5 : 1);
    const e = new HostKVCache(host.shape, 1, "f32");
    for (let l = 0; l < config.nLayers; l++) e.append(l, row, row, 0);
    const ekv = g16.createKV();
    ekv.loadFrom(e);
    const eh = ekv.toHost();
    for (let i = 0; i < kvd; i++) {
      assert.ok(Object.is(eh.k[0][i], Math.f16round(row[i])), `f16(${row[i]}) = ${eh.k[0][i]}`);
      assert.ok(Object.is(eh.v[config.nLayers - 1][i], Math.f16round(row[i])));
    }
    for (const kv of [k16, k32, back, fromF32, ekv]) kv.free();
  } finally {
    g16.dispose();
    g32.dispose();
  }
}

const ALL_TYPES = [GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0];

Deno.test({
  name:
    "cuda (GPU): stories260K logits and scores agree with the ts reference over prefill + 64 decode steps",
  ignore: noGpu,
  fn: () => agreeStories(GPU_LIB, 64),
});

Deno.test({
  name: "cuda (GPU): greedy decode of stories260K equals the golden text",
  ignore: noGpu,
  fn: () => greedyGolden(GPU_LIB),
});

Deno.test({
  name: "cuda (GPU): F32/F16/BF16/Q8_0/Q4_0 weights, both RoPE styles, biases agree with ts",
  ignore: noGpu,
  fn: () =>
    agreeTypes(
      GPU_LIB,
      ALL_TYPES.flatMap((type) => [{ type, rope: "interleaved" as const }, { type, rope: "half" as const }]),
      6,
    ),
});

Deno.test({
  name: "cuda (GPU): a batch equals each sequence alone; compaction, export and import match the reference",
  ignore: noGpu,
  fn: () => batchAndCompaction(GPU_LIB),
});

Deno.test({
  name:
    "cuda (GPU): f16 KV cache matches ts f16 (64 decode steps, batch, compaction, kv_read/kv_write, bytes)",
  ignore: noGpu,
  async fn() {
    await agreeStories(GPU_LIB, 64, "f16");
    await batchAndCompaction(GPU_LIB, "f16");
    await f16KVRoundTrip(GPU_LIB);
  },
});

// ---------- the same kernels on the host emulator (runs without a GPU) ----------

/**
 * A prefill long enough to run on native.ts's worker thread (nonblocking FFI) agrees with ts; bad input is a
 * clear error (also from the worker thread) and leaves the cache usable.
 */
async function longPrefillAndErrors(path: string): Promise<void> {
  const model = await loadModel(STORIES);
  const { config } = model;
  const gpu = await openCudaBackend(config, model.weights, { path });
  const ts = createTsBackend(config, model.weights);
  try {
    const text = "Lily and Ben went to the park. They saw a big dog. The dog was happy and ran to them.";
    const ids = model.tokenizer.encode(text, { addBos: true });
    assert.ok(ids.length >= 20, `prompt of ${ids.length} tokens`);
    const scores = { decay: 0.95, window: 7 };
    const kg = gpu.createKV(), kt = ts.createKV();
    const [og] = await gpu.forward([{ kv: kg, tokens: ids, logits: "all", scores }]);
    const [ot] = await ts.forward([{ kv: kt, tokens: ids, logits: "all", scores }]);
    assertStep(og, ot, config.nHeads, "long prefill");

    const bad = [...ids.slice(0, 24), config.vocabSize];
    await assert.rejects(
      () => gpu.forward([{ kv: gpu.createKV(), tokens: bad, logits: "last" }]),
      new RegExp(`token id ${config.vocabSize} out of range`),
    );
    assert.throws(() => kg.compact(0, Int32Array.from([2, 1])), /strictly ascending/);
    assert.throws(() => kg.compact(1, Int32Array.from([0, ids.length])), /strictly ascending/);
    assert.equal(kg.length(0), ids.length);
    const [og2] = await gpu.forward([{ kv: kg, tokens: [5], logits: "last", scores }]);
    const [ot2] = await ts.forward([{ kv: kt, tokens: [5], logits: "last", scores }]);
    assertStep(og2, ot2, config.nHeads, "after rejected input");
    kg.free();
  } finally {
    gpu.dispose();
  }
}

/**
 * Compiles native/cuda/lethe_cuda.cu with g++ against native/cuda/emu/cuda_emu.h (CUDA threads as fibers,
 * __syncthreads and warp shuffles emulated; 64-thread blocks, so multi-warp reductions are exercised) into a
 * temporary library. Returns its path, or why it could not be built.
 */
async function buildEmulated(): Promise<{ path?: string; error?: string }> {
  const src = resolve(REPO_ROOT, "native", "cuda", "lethe_cuda.cu");
  const flags = [
    "-std=c++20",
    "-O2",
    "-x",
    "c++",
    "-DLETHE_EMU",
    "-DLETHE_BLOCK_OVERRIDE=64",
    // A 200-float attention budget: a step's rows are split into many chunks (multi-chunk attention + scores).
    "-DLETHE_ATT_BUDGET_FLOATS=200",
    "-fPIC",
    "-shared",
  ];
  try {
    const dir = await Deno.makeTempDir({ prefix: "lethe_cuda_emu_" });
    const path = `${dir}/liblethe_cuda_emu.so`;
    const out = await new Deno.Command("g++", {
      args: [...flags, "-o", path, src],
      stdout: "piped",
      stderr: "piped",
    })
      .output();
    if (!out.success) {
      return { error: new TextDecoder().decode(out.stderr).split("\n").slice(0, 10).join("\n") };
    }
    return { path };
  } catch (e) {
    return { error: `g++ not runnable: ${(e as Error).message}` };
  }
}

const emu = await buildEmulated();
if (!emu.path) console.log(`cuda: host-emulator test ignored: ${emu.error}`);

Deno.test({
  name:
    "cuda (host emulator): the CUDA kernels agree with ts (stories260K, weight types, batch, compaction, f16 KV)",
  ignore: !emu.path,
  async fn(t) {
    const path = emu.path!;
    try {
      await t.step(
        "f32 KV: stories260K, weight types, batch, compaction, worker-thread prefill, errors",
        async () => {
          const info = probeCuda(path);
          assert.equal(info.devices, 1);
          assert.match(info.info, /host emulator/);
          await agreeStories(path, 6);
          await agreeTypes(path, [
            { type: GGMLType.F16, rope: "half" },
            { type: GGMLType.BF16, rope: "interleaved" },
            { type: GGMLType.Q8_0, rope: "half" },
            { type: GGMLType.Q4_0, rope: "interleaved" },
          ], 2);
          await batchAndCompaction(path);
          await longPrefillAndErrors(path);
        },
      );
      await t.step(
        "f16 KV (kv_type 1): matches ts f16 step by step; compaction; round trips; bytes halve",
        async () => {
          // kv_type is validated: f16 accepted, anything else a clear error.
          const lib = Deno.dlopen(path, RAW_SYMBOLS);
          try {
            const sym = lib.symbols;
            for (const kvType of [2, -1, 0x10000]) {
              assert.equal(sym.lethe_model_create(configBytes({ kvType })), null);
              assert.match(
                cstr(sym.lethe_last_error()),
                new RegExp(`unknown kv_type ${kvType} \\(0 = f32, 1 = f16\\)`),
              );
            }
            const m16 = sym.lethe_model_create(configBytes({ kvType: 1 }));
            assert.notEqual(m16, null, cstr(sym.lethe_last_error()));
            sym.lethe_model_free(m16);
          } finally {
            lib.close();
          }
          await agreeStories(path, 6, "f16");
          await batchAndCompaction(path, "f16");
          await f16KVRoundTrip(path);
        },
      );
    } finally {
      await Deno.remove(dirname(path), { recursive: true }); // the loaded library stays mapped
    }
  },
});
