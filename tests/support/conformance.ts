/**
 * The backend conformance suite: every backend (ts, native, webgpu, cuda through its host emulator or on a
 * real device) runs these same checks against the TypeScript reference backend, from its own test file
 * (tests/backend_<name>_test.ts) that adds only what is specific to it.
 *
 * Tolerances (STRICT; the strictest that any of the three former per-backend files asserted for the same
 * quantity, kept as they were):
 * - f32 KV: logits within min(1e-4 · max(1, max |ref logit|), 1e-3); attention scores (sums of nHeads
 *   probabilities) within 1e-4; K/V contents within min(1e-4, 1e-4 · the layer's largest value). Both sides
 *   compute in f32 with different summation orders, so bit equality is not expected across backends.
 * - Within one backend, a batch equals each sequence alone within 1e-5 (logits) and 1e-6 (scores).
 * - f16 KV: both sides round the same K/V values to half precision, bit-exactly alike, but a value whose two
 *   f32 computations differ in the last bit can land on the two sides of a rounding boundary (one f16 ulp =
 *   2^-11 relative apart) and perturb what later layers and tokens compute. So logits agree within
 *   5e-4 · max(1, max |ref logit|), scores within 5e-4 · nHeads, the greedy token at every step, and the caches
 *   are compared value by value: every value an f16 value; in layer 0 (computed straight from the
 *   embeddings) at most 1% of the values differ and only by one ulp; in every layer a differing value is within
 *   one ulp + 5e-4 of the layer's largest value, and at most 5% of all values differ.
 * A backend's own test file may loosen one of these only with the measurement that justifies it.
 *
 * `LETHE_CONFORMANCE_REPORT=1` prints, per backend and check, the worst deviation seen as a fraction of its
 * tolerance.
 */
import assert from "node:assert/strict";
import { assertClose, maxAbs } from "./compare.ts";
import { randomTokens, requantize, Rng, synthModel } from "./synthetic.ts";
import { argmax, GREEDY } from "../../src/engine/sampler.ts";
import { createTsBackend } from "../../src/engine/ts/backend.ts";
import type { Backend, KVPrecision, ScoreRequest, StepInput, StepOutput } from "../../src/engine/backend.ts";
import { runSequence, Sequence } from "../../src/engine/sequence.ts";
import { HostKVCache, type SequenceKV } from "../../src/kv/cache.ts";
import { createPolicy } from "../../src/kv/registry.ts";
import { type LoadedModel, loadModel, REPO_ROOT, SHARED_MODELS } from "../../src/model/loader.ts";
import { GGMLType, type ModelConfig, type ModelWeights } from "../../src/model/types.ts";
import { dequantize } from "../../src/model/ggml.ts";
import { decodeSnapshot, encodeSnapshot } from "../../src/session/codec.ts";
import { resolve } from "node:path";

export interface Tolerances {
  logitRel: number;
  logitAbs: number;
  scoreAbs: number;
  kvAbs: number;
  batchLogitAbs: number;
  batchScoreAbs: number;
  f16LogitRel: number;
  /** Times nHeads. */
  f16ScoreRel: number;
  /** Added to one ulp, times the layer's largest value. */
  f16KVRel: number;
  /** The same for layer 0 (0: one ulp at most). */
  f16Layer0KVRel: number;
  f16Layer0Frac: number;
  f16Frac: number;
}

export const STRICT: Tolerances = {
  logitRel: 1e-4,
  logitAbs: 1e-3,
  scoreAbs: 1e-4,
  kvAbs: 1e-4,
  batchLogitAbs: 1e-5,
  batchScoreAbs: 1e-6,
  f16LogitRel: 5e-4,
  f16ScoreRel: 5e-4,
  f16KVRel: 5e-4,
  f16Layer0KVRel: 0,
  f16Layer0Frac: 0.01,
  f16Frac: 0.05,
};

export interface Target {
  /** Backend name as it appears in test names ("native", "cuda (host emulator)", …). */
  name: string;
  /** Why the suite does not run here (printed), or null. */
  skip: string | null;
  open(config: ModelConfig, weights: ModelWeights, opts: { kvPrecision?: KVPrecision }): Promise<Backend>;
  /**
   * Decode steps of the long agreement runs, of the weight-type runs, of the random-compaction run, and of the
   * short runs inside the batch, compaction and resume checks (10 where a step is cheap).
   */
  steps: { decode: number; types: number; random: number; short: number };
  /** Run the 200-step golden decode. */
  golden: boolean;
  /** Run the quantization-error check on tinystories-656K (the target takes F16/Q8_0/Q4_0 weights). */
  quantError: boolean;
  /** Weight types × RoPE styles of the synthetic agreement run. */
  weightTypes: { type: GGMLType; rope: "interleaved" | "half" }[];
  /** Loosened tolerances, each justified where the target is defined. */
  tol?: Partial<Tolerances>;
  /** The cache as the device holds it, read independently of any host copy. Default: toHost(). */
  readback?(kv: SequenceKV): Promise<HostKVCache>;
  /** Bytes per stored K/V element of a cache (default: 2 for f16 precision, 4 for f32). */
  elementBytes?(kv: SequenceKV, precision: KVPrecision): number;
}

export const ALL_WEIGHT_TYPES = [GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0];
/** Every weight type with both RoPE styles. */
export const EVERY_WEIGHT_CASE = ALL_WEIGHT_TYPES.flatMap((type) => [
  { type, rope: "interleaved" as const },
  { type, rope: "half" as const },
]);

export const GOLDEN = resolve(REPO_ROOT, "..", "shared", "golden", "stories260K_greedy.json");

const models = new Map<string, Promise<LoadedModel>>();
export function sharedModel(path: string): Promise<LoadedModel> {
  let m = models.get(path);
  if (!m) models.set(path, m = loadModel(path));
  return m;
}

/** Apply a prune plan given for the first layers (the rest unchanged) to a cache now. */
export function prune(kv: SequenceKV, plan: (Int32Array | null)[]): void {
  kv.compact(Array.from({ length: kv.shape.nLayers }, (_, l) => plan[l] ?? null));
}

// ---------------------------------------------------------------------------------------------- measuring

const worst = new Map<string, number>();
let current = "";

function note(check: string, dev: number, tol: number): void {
  const key = `${current} · ${check}`;
  const r = tol > 0 ? dev / tol : dev > 0 ? Infinity : 0;
  if (!(r <= (worst.get(key) ?? 0))) worst.set(key, r);
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length, "length");
  let d = 0;
  for (let i = 0; i < a.length; i++) {
    const x = Math.abs(a[i] - b[i]);
    if (!(x <= d)) d = x;
  }
  return d;
}

function within(check: string, got: Float32Array, want: Float32Array, tol: number, what: string): void {
  note(check, maxDiff(got, want), tol);
  assertClose(got, want, tol, what);
}

// ---------------------------------------------------------------------------------------------- assertions

export class Checker {
  readonly t: Tolerances;
  constructor(tol: Partial<Tolerances> | undefined) {
    this.t = { ...STRICT, ...tol };
  }

  /** One step's outputs against the reference's, at the precision of the caches. */
  step(got: StepOutput, want: StepOutput, nHeads: number, precision: KVPrecision, what: string): void {
    const t = this.t;
    const scale = Math.max(1, maxAbs(want.logits));
    if (precision === "f16") {
      within("f16 logits", got.logits, want.logits, t.f16LogitRel * scale, `${what} logits`);
    } else {
      within("logits", got.logits, want.logits, Math.min(t.logitRel * scale, t.logitAbs), `${what} logits`);
    }
    assert.equal(got.scores?.length, want.scores?.length, `${what}: score layers`);
    const stol = precision === "f16" ? t.f16ScoreRel * nHeads : t.scoreAbs;
    want.scores?.forEach((s, l) =>
      within(precision === "f16" ? "f16 scores" : "scores", got.scores![l], s, stol, `${what} scores ${l}`)
    );
  }

  /** Batched vs alone on the same backend. */
  same(got: StepOutput, want: StepOutput, what: string): void {
    within("batch logits", got.logits, want.logits, this.t.batchLogitAbs, `${what} logits`);
    assert.equal(got.scores?.length, want.scores?.length, `${what}: score layers`);
    want.scores?.forEach((s, l) =>
      within("batch scores", got.scores![l], s, this.t.batchScoreAbs, `${what} scores ${l}`)
    );
  }

  /**
   * Same rows (lengths, positions, nextPos) and K/V within the f32 tolerance, or the f16 rules (`share`: also
   * the bound on the share of differing values over all layers).
   */
  cache(got: HostKVCache, want: HostKVCache, what: string, share = true): void {
    assert.equal(got.nextPos, want.nextPos, `${what}: nextPos`);
    assert.equal(got.precision, want.precision, `${what}: precision`);
    if (got.precision === "f16") return this.f16Cache(got, want, what, share);
    for (let l = 0; l < got.shape.nLayers; l++) {
      const n = want.len[l], d = n * want.kvDim;
      assert.equal(got.len[l], n, `${what}: layer ${l} length`);
      assert.deepEqual(got.positions(l), want.positions(l), `${what}: layer ${l} positions`);
      for (const [name, a, b] of [["K", got.k[l], want.k[l]], ["V", got.v[l], want.v[l]]] as const) {
        const ref = b.subarray(0, d);
        const tol = Math.min(this.t.kvAbs, this.t.kvAbs * maxAbs(ref));
        within("kv", a.subarray(0, d), ref, tol, `${what}: layer ${l} ${name}`);
      }
    }
  }

  f16Cache(a: HostKVCache, b: HostKVCache, what: string, share = true): void {
    assert.equal(a.precision, "f16");
    assert.equal(b.precision, "f16");
    let differ = 0, total = 0;
    for (let l = 0; l < a.shape.nLayers; l++) {
      assert.equal(a.len[l], b.len[l], `${what}: layer ${l} length`);
      assert.deepEqual(a.positions(l), b.positions(l), `${what}: layer ${l} positions`);
      const d = a.kvDim * a.len[l];
      let layerDiffer = 0;
      for (const [x, y] of [[a.k[l], b.k[l]], [a.v[l], b.v[l]]]) {
        const tol = (l === 0 ? this.t.f16Layer0KVRel : this.t.f16KVRel) * maxAbs(y.subarray(0, d));
        for (let i = 0; i < d; i++) {
          total++;
          if (x[i] !== Math.f16round(x[i])) {
            assert.fail(`${what}: layer ${l} value ${x[i]} is not an f16 value`);
          }
          if (Object.is(x[i], y[i]) || x[i] === y[i]) continue;
          layerDiffer++;
          const ulp = 2 ** (Math.floor(Math.log2(Math.max(Math.abs(y[i]), 2 ** -14))) - 10);
          const lim = ulp + tol;
          note("f16 kv", Math.abs(x[i] - y[i]), lim);
          assert.ok(Math.abs(x[i] - y[i]) <= lim, `${what}: layer ${l} values ${x[i]} vs ${y[i]}`);
        }
      }
      if (l === 0) {
        note("f16 kv layer 0 fraction", layerDiffer / (2 * d || 1), this.t.f16Layer0Frac);
        assert.ok(
          layerDiffer <= this.t.f16Layer0Frac * 2 * d,
          `${what}: layer 0: ${layerDiffer} of ${2 * d} f16 values differ`,
        );
      }
      differ += layerDiffer;
    }
    if (!share) return;
    note("f16 kv fraction", differ / (total || 1), this.t.f16Frac);
    assert.ok(differ <= this.t.f16Frac * total, `${what}: ${differ} of ${total} f16 values differ`);
  }
}

/** Bit-exact equality of two snapshots (values, positions, lengths, nextPos, precision). */
export function assertExactKV(a: HostKVCache, b: HostKVCache, what: string): void {
  assert.equal(a.nextPos, b.nextPos, `${what}: nextPos`);
  assert.equal(a.precision, b.precision, `${what}: precision`);
  for (let l = 0; l < a.shape.nLayers; l++) {
    const n = a.len[l];
    assert.equal(b.len[l], n, `${what}: layer ${l} length`);
    const d = n * a.kvDim;
    assert.deepEqual(b.pos[l].subarray(0, n), a.pos[l].subarray(0, n), `${what}: layer ${l} pos`);
    assert.deepEqual(b.k[l].subarray(0, d), a.k[l].subarray(0, d), `${what}: layer ${l} K`);
    assert.deepEqual(b.v[l].subarray(0, d), a.v[l].subarray(0, d), `${what}: layer ${l} V`);
  }
}

/** Every stored value of a snapshot is an f16 value (exactly representable in half precision). */
export function assertF16Values(h: HostKVCache, what: string): void {
  for (let l = 0; l < h.shape.nLayers; l++) {
    const d = h.kvDim * h.len[l];
    for (const a of [h.k[l], h.v[l]]) {
      for (let i = 0; i < d; i++) {
        if (!Object.is(a[i], Math.f16round(a[i]))) {
          assert.fail(`${what}: layer ${l} value ${a[i]} is not f16`);
        }
      }
    }
  }
}

function lastLogits(o: StepOutput, vocab: number): Float32Array {
  return o.logits.subarray(o.logits.length - vocab);
}

/**
 * Prefill `prompt` in one call (logits of every token), then greedy-decode `steps` tokens, the backend and
 * the reference in lockstep: outputs, lengths, positions every step (the caches too with f16 rows, and the
 * greedy token); the caches at the end.
 */
export async function agree(
  check: Checker,
  dut: Backend,
  ref: Backend,
  prompt: number[],
  steps: number,
  scores: ScoreRequest,
  what: string,
  snapshot: (kv: SequenceKV) => Promise<HostKVCache> = (kv) => Promise.resolve(kv.toHost()),
): Promise<void> {
  const c = dut.config, p = dut.kvPrecision;
  const kd = dut.createKV(), kr = ref.createKV();
  try {
    let tokens = prompt;
    for (let step = 0; step <= steps; step++) {
      const input: StepInput = { kv: kd, tokens, logits: step === 0 ? "all" : "last", scores };
      const [od] = await dut.forward([input]);
      const [or] = await ref.forward([{ ...input, kv: kr }]);
      check.step(od, or, c.nHeads, p, `${what} step ${step}`);
      if (p === "f16") {
        check.f16Cache(await snapshot(kd), kr.toHost(), `${what} step ${step} cache`);
        assert.equal(
          argmax(lastLogits(od, c.vocabSize)),
          argmax(lastLogits(or, c.vocabSize)),
          "greedy token",
        );
      }
      for (let l = 0; l < c.nLayers; l++) {
        assert.equal(kd.length(l), kr.length(l));
        assert.deepEqual(kd.positions(l), kr.positions(l));
      }
      assert.equal(kd.nextPos, kr.nextPos);
      tokens = [argmax(lastLogits(or, c.vocabSize))];
    }
    check.cache(await snapshot(kd), kr.toHost(), `${what}: cache after decode`);
  } finally {
    kd.free();
  }
}

// ---------------------------------------------------------------------------------------------- the suite

/** Registers the conformance tests of one backend. */
export function conformance(target: Target): void {
  const ignore = target.skip !== null;
  const name = target.name;
  const check = new Checker(target.tol);
  const snapshot = (kv: SequenceKV) => target.readback ? target.readback(kv) : Promise.resolve(kv.toHost());
  const elemBytes = (kv: SequenceKV, p: KVPrecision) => target.elementBytes?.(kv, p) ?? (p === "f16" ? 2 : 4);
  const test = (title: string, fn: () => Promise<void>) =>
    Deno.test({
      name: `${name}: ${title}`,
      ignore,
      async fn() {
        current = `${name}: ${title}`;
        await fn();
      },
    });

  async function open(config: ModelConfig, weights: ModelWeights, kvPrecision: KVPrecision = "f32") {
    const dut = await target.open(config, weights, { kvPrecision });
    assert.equal(dut.kvPrecision, kvPrecision);
    return { dut, ref: createTsBackend(config, weights, { kvPrecision }) };
  }

  test("synthetic models (interleaved/half RoPE, biases, tied/untied) match ts, prefill + decode", async () => {
    const cases = [
      { rope: "interleaved" as const, bias: false, seed: 1, tied: true },
      { rope: "half" as const, bias: true, seed: 2, tied: false },
    ];
    for (const c of cases) {
      const { config, weights } = synthModel(c);
      const { dut, ref } = await open(config, weights);
      try {
        const sc = { decay: 0.9, window: 1 << 30 };
        await agree(
          check,
          dut,
          ref,
          randomTokens(new Rng(c.seed + 10), 9, config.vocabSize),
          Math.min(12, target.steps.decode),
          sc,
          c.rope,
          snapshot,
        );
        // Scores with a short window and decay over a multi-token step.
        const p2 = randomTokens(new Rng(c.seed + 20), 7, config.vocabSize);
        await agree(check, dut, ref, p2, 2, { decay: 0.5, window: 3 }, `${c.rope} window 3`, snapshot);
      } finally {
        dut.dispose();
      }
    }
  });

  test("weight types (F32/F16/BF16/Q8_0/Q4_0), both RoPE styles: ts on the same weights agrees", async () => {
    for (const [i, { type, rope }] of target.weightTypes.entries()) {
      const base = synthModel({ rope, bias: rope === "half", tied: rope !== "half", seed: 10 + i });
      const w = requantize(base.weights, type);
      if (type !== GGMLType.F32) {
        // The stored weights really differ from the f32 ones (the run exercises dequantization).
        const deq = dequantize(w.layers[0].wq.type, w.layers[0].wq.data, 64 * 64);
        assert.notDeepEqual(deq, new Float32Array(base.weights.layers[0].wq.data.slice().buffer));
      }
      const { dut, ref } = await open(base.config, w);
      try {
        const prompt = randomTokens(new Rng(99 + i), 13, base.config.vocabSize);
        await agree(
          check,
          dut,
          ref,
          prompt,
          target.steps.types,
          { decay: 0.95, window: 1 << 30 },
          GGMLType[type],
          snapshot,
        );
      } catch (e) {
        throw new Error(`type ${GGMLType[type]} rope ${rope}: ${(e as Error).message}`);
      } finally {
        dut.dispose();
      }
    }
  });

  test("stories260K and tinystories-656K: prefill + decode, logits, scores and caches match ts", async () => {
    const runs: [string, string, ScoreRequest][] = [
      [SHARED_MODELS.stories260K, "Once upon a time", { decay: 0.95, window: 4 }],
      [SHARED_MODELS.tinystories656K, "The little dog ran to the park", { decay: 0.9, window: 1 << 30 }],
    ];
    for (const [path, text, sc] of runs) {
      const m = await sharedModel(path);
      const { dut, ref } = await open(m.config, m.weights);
      try {
        const prompt = m.tokenizer.encode(text, { addBos: true });
        await agree(check, dut, ref, prompt, target.steps.decode, sc, m.name, snapshot);
      } finally {
        dut.dispose();
      }
    }
  });

  if (target.golden) {
    test("stories260K greedy output equals the golden text (runSequence, full policy)", async () => {
      const golden = JSON.parse(await Deno.readTextFile(GOLDEN)) as {
        cases: { prompt: string; steps: number; text: string }[];
      };
      const m = await sharedModel(SHARED_MODELS.stories260K);
      const dut = await target.open(m.config, m.weights, {});
      try {
        for (const c of golden.cases) {
          const prompt = m.tokenizer.encode(c.prompt, { addBos: true });
          assert.equal(prompt[0], 1, "BOS = 1");
          const seq = new Sequence(dut, m.tokenizer, {
            // `steps` counts positions after BOS: the sequence ends with steps + 1 tokens.
            maxTokens: c.steps + 1 - prompt.length,
            stop: [],
            sampling: GREEDY,
            policy: createPolicy({ name: "full" }, { nLayers: m.config.nLayers, contextLength: 512 }),
          });
          seq.feed(prompt);
          seq.start();
          let text = m.tokenizer.decode(prompt);
          for await (const ev of runSequence(dut, seq)) text += ev.text;
          assert.equal(text, c.text);
          seq.kv.free();
        }
      } finally {
        dut.dispose();
      }
    });
  }

  test("a batch of prompts of different lengths equals each alone (prefill, decode, mixed steps)", async () => {
    const m = await sharedModel(SHARED_MODELS.stories260K);
    const V = m.config.vocabSize;
    const dut = await target.open(m.config, m.weights, {});
    try {
      const prompts = ["Once upon a time", "The cat", "Tom and Lily went to the park to play with", "A"]
        .slice(0, target.steps.short >= 10 ? 4 : 3) // four where a step is cheap
        .map((p) => m.tokenizer.encode(p, { addBos: true }));
      const sc = { decay: 0.95, window: 4 };
      const solo: StepOutput[][] = [];
      const soloKV: SequenceKV[] = [];
      for (const p of prompts) {
        const kv = dut.createKV();
        soloKV.push(kv);
        const outs = [(await dut.forward([{ kv, tokens: p, logits: "all", scores: sc }]))[0]];
        for (let i = 0; i < target.steps.short; i++) {
          const tok = argmax(lastLogits(outs[i], V));
          outs.push((await dut.forward([{ kv, tokens: [tok], logits: "last", scores: sc }]))[0]);
        }
        solo.push(outs);
      }
      const kvs = prompts.map(() => dut.createKV());
      let outs = await dut.forward(
        prompts.map((p, i) => ({ kv: kvs[i], tokens: p, logits: "all", scores: sc })),
      );
      for (let step = 0; step <= target.steps.short; step++) {
        for (let i = 0; i < prompts.length; i++) check.same(outs[i], solo[i][step], `step ${step} seq ${i}`);
        if (step === target.steps.short) break;
        const next = outs.map((o) => argmax(lastLogits(o, V)));
        outs = await dut.forward(kvs.map((kv, i) => ({ kv, tokens: [next[i]], logits: "last", scores: sc })));
      }
      for (let i = 0; i < prompts.length; i++) assert.equal(kvs[i].nextPos, soloKV[i].nextPos);
      // Mixed: one sequence prefills while another decodes without logits or scores.
      const kvN = dut.createKV();
      const mixed = await dut.forward([
        { kv: kvs[0], tokens: [5], logits: "none" },
        { kv: kvN, tokens: prompts[2], logits: "last", scores: sc },
      ]);
      assert.equal(mixed[0].logits.length, 0);
      assert.equal(mixed[0].scores, undefined);
      const [alone] = await dut.forward([{
        kv: dut.createKV(),
        tokens: prompts[2],
        logits: "last",
        scores: sc,
      }]);
      check.same(mixed[1], alone, "mixed batch");
      for (const kv of [...kvs, ...soloKV, kvN]) kv.free();
    } finally {
      dut.dispose();
    }
  });

  for (const precision of ["f32", "f16"] as const) {
    test(`${precision} KV: per-layer compaction, decoding on, snapshots and round trips match ts`, async () => {
      const m = await sharedModel(SHARED_MODELS.stories260K);
      const { config } = m;
      const { dut, ref } = await open(config, m.weights, precision);
      try {
        const ids = m.tokenizer.encode("Lily and Ben found a shiny box under the old tree in the garden", {
          addBos: true,
        });
        const sc = { decay: 0.95, window: 8 };
        const kd = dut.createKV(), kr = ref.createKV();
        let [od] = await dut.forward([{ kv: kd, tokens: ids, logits: "last", scores: sc }]);
        let [or] = await ref.forward([{ kv: kr, tokens: ids, logits: "last", scores: sc }]);
        check.step(od, or, config.nHeads, precision, "prefill");
        const decode = async (n: number, what: string, pairs: [SequenceKV, SequenceKV][]) => {
          for (let s = 0; s < n; s++) {
            const tok = argmax(or.logits);
            for (const [d, r] of pairs) {
              [od] = await dut.forward([{ kv: d, tokens: [tok], logits: "last", scores: sc }]);
              [or] = await ref.forward([{ kv: r, tokens: [tok], logits: "last", scores: sc }]);
              check.step(od, or, config.nHeads, precision, `${what} step ${s}`);
            }
          }
        };
        for (let round = 0; round < 3; round++) {
          // A different keep set per layer: sinks + every other middle row + recent; in round 1 layer 1
          // keeps only its newest row.
          const plan = Array.from({ length: config.nLayers }, (_, l) => {
            const n = kd.length(l);
            if (round === 1 && l === 1) return Int32Array.of(n - 1);
            const keep: number[] = [];
            for (let j = 0; j < n; j++) if (j < 2 || j >= n - 3 || (j + l + round) % 2 === 0) keep.push(j);
            return Int32Array.from(keep);
          });
          const before = await snapshot(kd);
          prune(kd, plan);
          prune(kr, plan);
          for (let l = 0; l < config.nLayers; l++) {
            assert.equal(kd.length(l), plan[l].length);
            assert.deepEqual(kd.positions(l), kr.positions(l));
          }
          assert.equal(kd.bytes(), (kr.bytes() * elemBytes(kd, precision)) / (precision === "f16" ? 2 : 4));
          // The device holds exactly the kept rows of what it held (moved bit for bit) …
          const after = await snapshot(kd);
          for (let l = 0; l < config.nLayers; l++) {
            const d = after.kvDim;
            plan[l].forEach((src, i) => {
              assert.deepEqual(
                after.k[l].subarray(i * d, i * d + d),
                before.k[l].subarray(src * d, src * d + d),
              );
              assert.deepEqual(
                after.v[l].subarray(i * d, i * d + d),
                before.v[l].subarray(src * d, src * d + d),
              );
            });
          }
          // … and any host copy agrees with it.
          assertExactKV(after, kd.toHost(), `round ${round}: host copy vs device`);
          check.cache(after, kr.toHost(), `round ${round} after compaction`);
          // round 2 grows past capacity where the run is long enough
          await decode(round === 2 ? 2 * target.steps.short : target.steps.short, `round ${round}`, [[
            kd,
            kr,
          ]]);
        }
        // Snapshots: the backend's → a fresh cache of it (bit-exact) and → ts; ts's → the backend.
        const snap = kd.toHost();
        assert.ok(snap instanceof HostKVCache);
        assert.equal(snap.precision, precision);
        assert.equal(snap.nextPos, kd.nextPos);
        assert.equal(snap.bytes(), kr.bytes());
        const d2 = dut.createKV();
        d2.loadFrom(snap);
        assertExactKV(snap, await snapshot(d2), "loadFrom (device)");
        assertExactKV(snap, d2.toHost(), "loadFrom (host)");
        assert.equal(d2.bytes(), kd.bytes());
        const r2 = ref.createKV();
        r2.loadFrom(snap);
        const d3 = dut.createKV();
        d3.loadFrom(kr.toHost());
        const r3 = kr.toHost();
        // A restored copy continues exactly like the original, bit for bit.
        const tok = argmax(or.logits);
        const [a] = await dut.forward([{ kv: kd, tokens: [tok], logits: "last", scores: sc }]);
        const [b] = await dut.forward([{ kv: d2, tokens: [tok], logits: "last", scores: sc }]);
        assert.deepEqual(b.logits, a.logits);
        assert.deepEqual(b.scores, a.scores);
        [or] = await ref.forward([{ kv: kr, tokens: [tok], logits: "last", scores: sc }]);
        await ref.forward([{ kv: r2, tokens: [tok], logits: "last" }]);
        await ref.forward([{ kv: r3, tokens: [tok], logits: "last" }]);
        await dut.forward([{ kv: d3, tokens: [tok], logits: "last" }]);
        await decode(Math.min(4, target.steps.short), "after loadFrom", [[kd, kr], [d2, r2], [d3, r3]]);
        // A rewind forgets the rows at positions ≥ p: the device holds what it held minus them (as ts does),
        // nextPos is p, and it decodes on bit for bit like a cache loaded with exactly that.
        const held = await snapshot(kd);
        const p = kd.nextPos - 3;
        const expect = held.toHost();
        expect.rewind(p);
        assert.deepEqual(kd.rewind(p), kr.rewind(p));
        assert.equal(kd.nextPos, p);
        for (let l = 0; l < config.nLayers; l++) {
          assert.deepEqual(kd.positions(l), held.positions(l).filter((q) => q < p));
        }
        assertExactKV(expect, await snapshot(kd), "rewind (device)");
        assertExactKV(expect, kd.toHost(), "rewind (host copy)");
        check.cache(expect, kr.toHost(), "ts after rewind");
        assert.throws(() => kd.rewind(p + 1), /outside \[0, \d+\]/);
        const d4 = dut.createKV();
        d4.loadFrom(expect);
        for (const t of [tok, argmax(or.logits)]) {
          const [x] = await dut.forward([{ kv: kd, tokens: [t], logits: "last", scores: sc }]);
          const [y] = await dut.forward([{ kv: d4, tokens: [t], logits: "last", scores: sc }]);
          assert.deepEqual(x.logits, y.logits, "rewound vs loaded: logits");
          assert.deepEqual(x.scores, y.scores, "rewound vs loaded: scores");
        }
        assertExactKV(await snapshot(d4), await snapshot(kd), "rewound vs loaded, after decoding");
        d4.free();
        assert.throws(
          () => d2.loadFrom(new HostKVCache({ nLayers: 2, nKVHeads: 4, headDim: 8 })),
          /shape mismatch/,
        );
        d2.free();
        assert.throws(() => prune(d2, [Int32Array.of(0)]), /free/);
        await assert.rejects(dut.forward([{ kv: d2, tokens: [1], logits: "last" }]), /free/);
        for (const kv of [kd, d3]) kv.free();
      } finally {
        dut.dispose();
      }
    });
  }

  test("random per-layer compactions interleaved with appends, two sequences batched (f32, f16)", async () => {
    // After many rounds rows sit wherever the backend's compaction left them (the CPU library reuses freed
    // slots): logits, scores and the caches in logical order must still equal the ts backend doing the same.
    const steps = target.steps.random;
    for (const precision of ["f32", "f16"] as const) {
      const { config, weights } = synthModel({ rope: "half", bias: true, seed: 31, tied: false });
      const { dut, ref } = await open(config, weights, precision);
      try {
        const rng = new Rng(precision === "f16" ? 33 : 32);
        const sc = { decay: 0.95, window: 4 };
        const kd = [dut.createKV(), dut.createKV()], kr = [ref.createKV(), ref.createKV()];
        let next = [randomTokens(rng, 6, config.vocabSize), randomTokens(rng, 3, config.vocabSize)];
        for (let step = 0; step < steps; step++) {
          const od = await dut.forward(
            kd.map((kv, s) => ({ kv, tokens: next[s], logits: "last", scores: sc })),
          );
          const or = await ref.forward(
            kr.map((kv, s) => ({ kv, tokens: next[s], logits: "last", scores: sc })),
          );
          for (let s = 0; s < 2; s++) {
            check.step(od[s], or[s], config.nHeads, precision, `step ${step} seq ${s}`);
          }
          if (step % 25 === 24 || step === steps - 1) {
            for (let s = 0; s < 2; s++) {
              check.cache(await snapshot(kd[s]), kr[s].toHost(), `step ${step} seq ${s}`);
            }
          }
          // Random keep sets per sequence and layer: often one row (streaming-like), sometimes many or none
          // dropped, now and then everything (the next step then attends only to its own new tokens).
          for (let s = 0; s < 2; s++) {
            const plan = Array.from({ length: config.nLayers }, (_, l) => {
              const n = kd[s].length(l);
              assert.equal(n, kr[s].length(l));
              const r = rng.next();
              let keep: number[];
              if (r < 0.02) keep = [];
              else if (r < 0.15) keep = Array.from({ length: n }, (_, j) => j);
              else if (r < 0.55 || n < 24) {
                const drop = Math.floor(rng.next() * n);
                keep = Array.from({ length: n }, (_, j) => j).filter((j) => j !== drop);
              } else keep = Array.from({ length: n }, (_, j) => j).filter(() => rng.next() < 0.7);
              return Int32Array.from(keep);
            });
            prune(kd[s], plan);
            prune(kr[s], plan);
            for (let l = 0; l < config.nLayers; l++) assert.deepEqual(kd[s].positions(l), kr[s].positions(l));
            assert.equal(
              kd[s].bytes(),
              (kr[s].bytes() * elemBytes(kd[s], precision)) / (precision === "f16" ? 2 : 4),
            );
          }
          // Mostly one token per sequence, sometimes a few (several rows appended in one step).
          next = [0, 1].map((s) =>
            step % 17 === 5 + s
              ? [argmax(od[s].logits), ...randomTokens(rng, 2, config.vocabSize)]
              : [argmax(od[s].logits)]
          );
          if (step === Math.min(120, steps >> 1)) { // a scrambled cache exported and re-imported continues alike
            const copy = dut.createKV();
            copy.loadFrom(kd[1].toHost());
            const [a] = await dut.forward([{ kv: copy, tokens: [5], logits: "last" }]);
            const [b] = await ref.forward([{ kv: kr[1].toHost(), tokens: [5], logits: "last" }]);
            check.step(a, b, config.nHeads, precision, "reloaded copy");
            copy.free();
          }
        }
        for (const kv of kd) kv.free();
      } finally {
        dut.dispose();
      }
    }
  });

  /** Policies that prune within a few steps of stories260K prompts (budgets below the prompts). */
  const PRUNING = [
    { name: "lethe", mode: "fixed", budget: 10, slack: 1 },
    { name: "h2o", budget: 9 },
    { name: "streaming", budget: 8, sink: 2 },
    { name: "snapkv", budget: 10, window: 4 },
  ];

  for (const precision of ["f32", "f16"] as const) {
    test(`${precision} KV: prune plans ride in the next step (StepInput.compact): batched, step by step like ts`, async () => {
      // The reference's sequences decide (policies, sampling); the backend runs the very same inputs, plans
      // included, in one batched forward per step: outputs and caches must agree with the reference's.
      const m = await sharedModel(SHARED_MODELS.stories260K);
      const { config } = m;
      const { dut, ref } = await open(config, m.weights, precision);
      try {
        const shape = { nLayers: config.nLayers, contextLength: 512 };
        const texts = [
          "Once upon a time there was a little",
          "The cat sat",
          "Tom and Lily went to the big park to",
        ];
        const seqs = PRUNING.slice(0, 3).map((spec, i) => {
          const seq = new Sequence(ref, m.tokenizer, {
            maxTokens: 3 * target.steps.short,
            stop: [],
            sampling: GREEDY,
            policy: createPolicy(spec, shape),
            stopAtEos: false,
            prefillChunk: 5, // prompts arrive in chunks, with plans between them
          });
          seq.feed(m.tokenizer.encode(texts[i], { addBos: true }));
          seq.start();
          return seq;
        });
        const kvs = seqs.map(() => dut.createKV());
        let plans = 0;
        for (let step = 0; !seqs.every((q) => q.finished); step++) {
          const live = seqs.map((q, i) => ({ q, i })).filter(({ q }) => !q.finished);
          const inputs = live.map(({ q }) => q.nextInput());
          plans += inputs.filter((x) => x.compact).length;
          const od = await dut.forward(inputs.map((x, j) => ({ ...x, kv: kvs[live[j].i] })));
          const or = await ref.forward(inputs);
          live.forEach(({ q, i }, j) => {
            check.step(od[j], or[j], config.nHeads, precision, `step ${step} seq ${i}`);
            assert.equal(kvs[i].nextPos, q.kv.nextPos);
          });
          // A pruned cache holds mostly recent rows, and after one upstream f16 flip every later token's
          // deeper rows differ a little: the share of differing values says nothing here (each value is still
          // held to its bound).
          for (const { q, i } of live) {
            check.cache(await snapshot(kvs[i]), q.kv.toHost(), `step ${step} seq ${i}`, false);
          }
          live.forEach(({ q }, j) => q.accept(or[j]));
        }
        assert.ok(plans >= 6, `the policies pruned (${plans} plans rode in steps)`);
        for (const kv of kvs) kv.free();
      } finally {
        dut.dispose();
      }
    });
  }

  test("a finished sequence settles its last plan: cache, stats and policy state describe the same rows", async () => {
    const m = await sharedModel(SHARED_MODELS.stories260K);
    const dut = await target.open(m.config, m.weights, {});
    try {
      for (const spec of PRUNING.slice(0, target.steps.short >= 10 ? 4 : 2)) {
        const seq = new Sequence(dut, m.tokenizer, {
          maxTokens: target.steps.short,
          stop: [],
          sampling: GREEDY,
          policy: createPolicy(spec, { nLayers: m.config.nLayers, contextLength: 512 }),
          stopAtEos: false,
        });
        seq.feed(
          m.tokenizer.encode("Once upon a time, a little dog named Max lived in a big house", {
            addBos: true,
          }),
        );
        seq.start();
        for await (const _ of runSequence(dut, seq)) { /* run to the end */ }
        const st = seq.stats(), scores = seq.policy.exportState().scores, snap = seq.kv.toHost();
        assert.ok(st.pruneRounds > 0, `${spec.name} pruned`);
        for (let l = 0; l < m.config.nLayers; l++) {
          assert.equal(st.keptPerLayer[l], seq.kv.length(l), `${spec.name} layer ${l}`);
          assert.equal(scores[l].length, seq.kv.length(l), `${spec.name} layer ${l} scores`);
          assert.equal(snap.len[l], seq.kv.length(l));
        }
        assert.equal(st.kvBytes, seq.kv.bytes());
        assert.equal(snap.bytes(), (seq.kv.bytes() * 4) / elemBytes(seq.kv, "f32"));
        seq.kv.free();
      }
    } finally {
      dut.dispose();
    }
  });

  test("bad input is a clear error and changes nothing; a long prefill agrees with ts", async () => {
    const m = await sharedModel(SHARED_MODELS.stories260K);
    const { config } = m;
    const { dut, ref } = await open(config, m.weights);
    const other = await target.open(config, m.weights, {});
    try {
      const kv = dut.createKV();
      const V = config.vocabSize;
      await assert.rejects(
        dut.forward([{ kv, tokens: [V], logits: "last" }]),
        new RegExp(`token id ${V} out of range`),
      );
      await assert.rejects(dut.forward([{ kv, tokens: [1.5], logits: "last" }]), /token id 1.5 out of range/);
      await assert.rejects(dut.forward([{ kv, tokens: [], logits: "last" }]), /no tokens/);
      if (dut.name !== "ts") { // the reference takes any host cache of its precision
        await assert.rejects(
          dut.forward([{ kv: other.createKV(), tokens: [1], logits: "last" }]),
          /does not belong/,
        );
        await assert.rejects(
          dut.forward([{ kv: new HostKVCache(kv.shape), tokens: [1], logits: "last" }]),
          /does not belong/,
        );
      }
      await assert.rejects(
        dut.forward([{ kv, tokens: [1], logits: "last" }, { kv, tokens: [2], logits: "last" }]),
        /share a cache/,
      );
      await assert.rejects(
        dut.forward([{ kv, tokens: [1], logits: "last", scores: { decay: NaN, window: 1 } }]),
        /decay/,
      );
      assert.equal(kv.length(0), 0, "a failed step appends nothing");
      assert.equal(kv.nextPos, 0);
      // A prefill long enough for the native libraries' worker thread agrees with ts; a bad token in a long
      // prompt is refused (from the worker thread too) and leaves the cache usable.
      const text = "Lily and Ben went to the park. They saw a big dog. The dog was happy and ran to them.";
      const ids = m.tokenizer.encode(text, { addBos: true });
      assert.ok(ids.length >= 20, `prompt of ${ids.length} tokens`);
      const sc = { decay: 0.95, window: 7 };
      const kr = ref.createKV();
      const [od] = await dut.forward([{ kv, tokens: ids, logits: "all", scores: sc }]);
      const [or] = await ref.forward([{ kv: kr, tokens: ids, logits: "all", scores: sc }]);
      check.step(od, or, config.nHeads, "f32", "long prefill");
      await assert.rejects(
        dut.forward([{ kv: dut.createKV(), tokens: [...ids.slice(0, 24), V], logits: "last" }]),
        new RegExp(`token id ${V} out of range`),
      );
      assert.throws(() => prune(kv, [Int32Array.of(2, 1)]), /strictly ascending/);
      assert.throws(() => prune(kv, [null, Int32Array.of(0, ids.length)]), /strictly ascending/);
      assert.throws(() => prune(kv, [Int32Array.of(1, 1)]), /strictly ascending/);
      assert.equal(kv.length(0), ids.length);
      assert.equal(kv.length(1), ids.length);
      const [od2] = await dut.forward([{ kv, tokens: [5], logits: "last", scores: sc }]);
      const [or2] = await ref.forward([{ kv: kr, tokens: [5], logits: "last", scores: sc }]);
      check.step(od2, or2, config.nHeads, "f32", "after rejected input");
      kv.free();
      await assert.rejects(dut.forward([{ kv, tokens: [1], logits: "last" }]), /free/);
    } finally {
      dut.dispose();
      other.dispose();
    }
  });

  test("f16 KV: decoding matches ts with an f16 cache step by step (synthetic, stories260K)", async () => {
    const synth = synthModel({ rope: "half", bias: true, seed: 21, tied: false });
    const m = await sharedModel(SHARED_MODELS.stories260K);
    const runs = [
      { ...synth, prompt: randomTokens(new Rng(22), 9, synth.config.vocabSize), what: "synthetic" },
      {
        config: m.config,
        weights: m.weights,
        prompt: m.tokenizer.encode("Once upon a time, a little dog", { addBos: true }),
        what: "stories260K",
      },
    ];
    for (const { config, weights, prompt, what } of runs) {
      const { dut, ref } = await open(config, weights, "f16");
      const d32 = await target.open(config, weights, {});
      try {
        await agree(
          check,
          dut,
          ref,
          prompt,
          target.steps.decode,
          { decay: 0.95, window: 4 },
          `${what} f16`,
          snapshot,
        );
        // The f16 cache really changes the numbers (the comparison above is not an f32 one in disguise).
        const [a] = await dut.forward([{ kv: dut.createKV(), tokens: prompt, logits: "all" }]);
        const [b] = await d32.forward([{ kv: d32.createKV(), tokens: prompt, logits: "all" }]);
        assert.ok(maxDiff(a.logits, b.logits) > 0, `${what}: f16 KV rows change the logits`);
      } finally {
        dut.dispose();
        d32.dispose();
      }
    }
  });

  test("f16 KV: rows are the f32 rows rounded; snapshots (and the session codec) resume bit-exactly", async () => {
    const m = await sharedModel(SHARED_MODELS.stories260K);
    const synth = synthModel({ rope: "interleaved", bias: false, seed: 23, tied: true });
    const runs = [
      // Synthetic values are O(1): every layer's f16 rows within 1e-2 of the f32 rows rounded.
      {
        ...synth,
        fingerprint: "synthetic",
        prompt: randomTokens(new Rng(24), 20, 96),
        keep: [0, 3, 4, 9, 19],
        near: 1e-2,
      },
      {
        config: m.config,
        weights: m.weights,
        fingerprint: m.fingerprint,
        prompt: m.tokenizer.encode("Once upon a time, there was a girl", { addBos: true }),
        keep: [0, 3, 4, 7, -1],
        near: 0,
      },
    ];
    for (const { config, weights, fingerprint, prompt, keep: keepAt, near } of runs) {
      const d16 = await target.open(config, weights, { kvPrecision: "f16" });
      const d32 = await target.open(config, weights, {});
      const ts16 = createTsBackend(config, weights, { kvPrecision: "f16" });
      try {
        await f16Snapshots(d16, d32, ts16, config, fingerprint, prompt, keepAt, near);
      } finally {
        d16.dispose();
        d32.dispose();
      }
    }
  });

  async function f16Snapshots(
    d16: Backend,
    d32: Backend,
    ts16: Backend,
    config: ModelConfig,
    fingerprint: string,
    prompt: number[],
    keepAt: number[],
    near: number,
  ): Promise<void> {
    {
      const k16 = d16.createKV(), k32 = d32.createKV();
      await d16.forward([{ kv: k16, tokens: prompt, logits: "all" }]);
      await d32.forward([{ kv: k32, tokens: prompt, logits: "all" }]);
      const keep = Int32Array.from(keepAt, (i) => i < 0 ? prompt.length + i : i);
      prune(k16, [null, keep]);
      prune(k32, [null, keep]);
      // f16 rows take half the bytes of f32 rows (where the device stores them as f16)
      assert.equal(k16.bytes(), (k32.bytes() / 2) * (elemBytes(k16, "f16") / 2));
      const host = k16.toHost(), h32 = k32.toHost();
      assert.equal(host.precision, "f16");
      assert.equal((host.bytes() * elemBytes(k16, "f16")) / 2, k16.bytes());
      assertF16Values(host, "toHost");
      assertExactKV(host, await snapshot(k16), "host copy vs device");
      for (let l = 0; l < config.nLayers; l++) {
        assert.deepEqual(host.positions(l), h32.positions(l));
        const n = host.kvDim * host.len[l];
        for (const [a, b] of [[host.k[l], h32.k[l]], [host.v[l], h32.v[l]]]) {
          for (let i = 0; i < n; i++) {
            // Layer 0's K/V come from the same inputs through the same kernels in both caches: the f16 rows
            // are exactly the f32 rows rounded by Math.f16round; deeper layers' inputs differ slightly.
            if (l === 0 && !Object.is(a[i], Math.f16round(b[i]))) {
              assert.fail(
                `layer 0 element ${i}: f16 row holds ${a[i]}, Math.f16round(${b[i]}) = ${
                  Math.f16round(b[i])
                }`,
              );
            }
            if (near > 0) {
              assert.ok(Math.abs(a[i] - Math.f16round(b[i])) <= near, `layer ${l}: ${a[i]} vs f32 ${b[i]}`);
            }
          }
        }
      }
      // Round trip: write back, read again, bit-exact; decoding continues identically.
      const back = d16.createKV();
      back.loadFrom(host);
      assertExactKV(host, back.toHost(), "round trip");
      assertExactKV(host, await snapshot(back), "round trip (device)");
      assert.equal(back.bytes(), k16.bytes());
      const sc = { decay: 0.9, window: 3 };
      const [a] = await d16.forward([{ kv: k16, tokens: [7], logits: "last", scores: sc }]);
      const [b] = await d16.forward([{ kv: back, tokens: [7], logits: "last", scores: sc }]);
      assert.deepEqual(b.logits, a.logits);
      assert.deepEqual(b.scores, a.scores);
      // An f32 snapshot loaded into an f16 cache is rounded exactly like HostKVCache("f16").loadFrom.
      const fromF32 = d16.createKV();
      fromF32.loadFrom(h32);
      const want = new HostKVCache(h32.shape, 1, "f16");
      want.loadFrom(h32);
      assertExactKV(want, fromF32.toHost(), "f32 snapshot rounded on load");
      assertExactKV(want, await snapshot(fromF32), "f32 snapshot rounded on load (device)");
      // Rounding edge cases through the backend: ties to even, overflow to inf, subnormals, -0.
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
      const ekv = d16.createKV();
      ekv.loadFrom(e);
      for (const eh of [ekv.toHost(), await snapshot(ekv)]) {
        for (let i = 0; i < kvd; i++) {
          assert.ok(Object.is(eh.k[0][i], Math.f16round(row[i])), `f16(${row[i]}) = ${eh.k[0][i]}`);
          assert.ok(Object.is(eh.v[config.nLayers - 1][i], Math.f16round(row[i])));
        }
      }
      // A snapshot through the session codec at f16 → a fresh cache: bit-exact, and it decodes exactly like
      // the live cache; a ts f16 cache restored from it continues within tolerance.
      const snap = k16.toHost();
      const blob = encodeSnapshot({
        fingerprint,
        tokens: [...prompt, 7],
        kv: snap,
        policy: {
          name: "full",
          params: {},
          state: {
            scores: snap.len.reduce((a: Float32Array[], n) => [...a, new Float32Array(n)], []),
            meta: {},
          },
        },
      }, { kvPrecision: "f16" });
      const restored = d16.createKV();
      restored.loadFrom(decodeSnapshot(blob, { fingerprint }).kv);
      assertExactKV(snap, await snapshot(restored), "codec round trip (device)");
      assertExactKV(snap, restored.toHost(), "codec round trip (host)");
      const t2 = ts16.createKV();
      t2.loadFrom(snap);
      let live = a;
      for (let s = 0; s < target.steps.short; s++) {
        const tok = argmax(live.logits);
        const [res] = await d16.forward([{ kv: restored, tokens: [tok], logits: "last", scores: sc }]);
        [live] = await d16.forward([{ kv: k16, tokens: [tok], logits: "last", scores: sc }]);
        const [r] = await ts16.forward([{ kv: t2, tokens: [tok], logits: "last", scores: sc }]);
        assert.deepEqual(res.logits, live.logits, `resumed step ${s} logits`);
        assert.deepEqual(res.scores, live.scores, `resumed step ${s} scores`);
        check.step(live, r, config.nHeads, "f16", `ts f16 from the snapshot, step ${s}`);
      }
      assertExactKV(k16.toHost(), restored.toHost(), "caches after the resumed decode");
      for (const kv of [k16, k32, back, fromF32, ekv, restored]) kv.free();
    }
  }

  if (target.quantError) {
    test("tinystories-656K as F16/Q8_0/Q4_0 stays within quantization error of f32", async () => {
      const m = await sharedModel(SHARED_MODELS.tinystories656K);
      const prompt = m.tokenizer.encode("Once upon a time, there was a little girl", { addBos: true });
      const ts = createTsBackend(m.config, m.weights);
      const [want] = await ts.forward([{ kv: ts.createKV(), tokens: prompt, logits: "all" }]);
      // Relative L2 error of all prompt logits (quantization noise only: the same quantized weights match the
      // reference in the weight-type check).
      const tols: [GGMLType, number][] = [[GGMLType.F16, 2e-3], [GGMLType.Q8_0, 2e-2], [
        GGMLType.Q4_0,
        2.5e-1,
      ]];
      for (const [type, tol] of tols) {
        const dut = await target.open(m.config, requantize(m.weights, type), {});
        try {
          const [got] = await dut.forward([{ kv: dut.createKV(), tokens: prompt, logits: "all" }]);
          let num = 0, den = 0;
          for (let i = 0; i < got.logits.length; i++) {
            num += (got.logits[i] - want.logits[i]) ** 2;
            den += want.logits[i] ** 2;
          }
          const rel = Math.sqrt(num / den);
          note(`${GGMLType[type]} relative L2 error`, rel, tol);
          assert.ok(rel <= tol, `${GGMLType[type]}: relative logit error vs f32 ${rel} > ${tol}`);
        } finally {
          dut.dispose();
        }
      }
    });
  }

  if (Deno.env.get("LETHE_CONFORMANCE_REPORT")) {
    Deno.test({
      name: `${name}: worst deviations (fractions of the tolerance)`,
      ignore,
      fn() {
        for (const [k, v] of [...worst].filter(([k]) => k.startsWith(name)).sort()) {
          console.log(`${v.toFixed(3).padStart(8)}  ${k}`);
        }
      },
    });
  }
}
