/**
 * End to end on the real stories260K model with the TypeScript reference backend: a policy whose budget
 * covers the whole sequence decodes exactly like the full cache (tokens and logits) while it computes and
 * tracks scores, and a pruning policy really prunes and still decodes.
 */
import assert from "node:assert/strict";
import { loadModel, SHARED_MODELS } from "../src/model/loader.ts";
import { createTsBackend } from "../src/engine/ts/backend.ts";
import type { Backend } from "../src/engine/backend.ts";
import type { PrunePlan } from "../src/kv/kv_index.ts";
import type { KVPolicy, PolicySpec } from "../src/kv/contract.ts";
import { createPolicy, POLICY_NAMES } from "../src/kv/registry.ts";
import { Sequence } from "../src/engine/sequence.ts";
import { GREEDY } from "../src/engine/sampler.ts";

const MODEL = Deno.env.get("LETHE_MODEL") ?? SHARED_MODELS.stories260K;
const STEPS = 48;

function argmax(a: Float32Array): number {
  let b = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[b]) b = i;
  return b;
}

/** Greedy decode: prefill the prompt, then STEPS decode steps; returns tokens and every step's logits. */
async function decode(backend: Backend, prompt: number[], policy: KVPolicy) {
  const kv = backend.createKV();
  const tokens: number[] = [];
  const logits: Float32Array[] = [];
  let input = prompt;
  let phase: "prefill" | "decode" = "prefill";
  let plan: PrunePlan | null = null;
  for (let s = 0; s < STEPS; s++) {
    const [out] = await backend.forward([{
      kv,
      tokens: input,
      logits: "last",
      scores: policy.scoreRequest(phase, input.length),
      compact: plan ?? undefined,
    }]);
    plan = policy.afterStep(kv, out.scores, input.length, phase).plan;
    logits.push(out.logits.slice());
    const t = argmax(out.logits);
    tokens.push(t);
    input = [t];
    phase = "decode";
  }
  if (plan) kv.compact(plan); // the last plan, as Sequence.settle applies it
  const lengths = Array.from({ length: backend.config.nLayers }, (_, l) => kv.length(l));
  kv.free();
  return { tokens, logits, lengths };
}

const model = await loadModel(MODEL);
const backend = createTsBackend(model.config, model.weights);
const prompt = [model.tokenizer.bosId, ...model.tokenizer.encode(" Once upon a time, there was a")];
const total = prompt.length + STEPS;
const shape = { nLayers: model.config.nLayers, contextLength: model.config.contextLength };
const ref = await decode(backend, prompt, createPolicy({ name: "full" }, shape));

/** Specs whose budget (or trigger) covers the whole sequence. */
function generous(name: string): PolicySpec[] {
  if (name === "full") return [{ name }];
  if (name === "lethe") {
    return [{ name, initialTrigger: total }, { name, mode: "fixed", budget: total, slack: 0 }];
  }
  if (name === "pyramidkv") return [{ name, budget: total * 20, beta: 1 }]; // every layer gets ≥ total
  return [{ name, budget: total }];
}

for (const name of POLICY_NAMES) {
  for (const spec of generous(name)) {
    Deno.test(`e2e ${JSON.stringify(spec)}: budget ≥ sequence → identical to the full cache`, async () => {
      const policy = createPolicy(spec, shape);
      const got = await decode(backend, prompt, policy);
      assert.deepEqual(got.tokens, ref.tokens);
      for (let s = 0; s < STEPS; s++) assert.deepEqual(got.logits[s], ref.logits[s], `step ${s}`);
      assert.deepEqual(got.lengths, ref.lengths);
      assert.equal(policy.stats.evicted, 0);
      assert.equal(policy.exportState().scores[0].length, total - 1);
    });
  }
}

Deno.test("e2e: a prefill's decayed scores equal the same tokens decoded one by one (ts backend)", async () => {
  const spec = { name: "lethe", gamma: 0.9, initialTrigger: 10_000 };
  const a = createPolicy(spec, shape), b = createPolicy(spec, shape);
  const kvA = backend.createKV(), kvB = backend.createKV();
  const [outA] = await backend.forward([{
    kv: kvA,
    tokens: prompt,
    logits: "last",
    scores: a.scoreRequest("prefill", prompt.length),
  }]);
  assert.equal(a.afterStep(kvA, outA.scores, prompt.length, "prefill").plan, null);
  for (const t of prompt) {
    const [o] = await backend.forward([{
      kv: kvB,
      tokens: [t],
      logits: "last",
      scores: b.scoreRequest("decode", 1),
    }]);
    assert.equal(b.afterStep(kvB, o.scores, 1, "decode").plan, null);
  }
  const sa = a.exportState().scores, sb = b.exportState().scores;
  for (let l = 0; l < shape.nLayers; l++) {
    for (let j = 0; j < prompt.length; j++) {
      assert.ok(Math.abs(sa[l][j] - sb[l][j]) < 1e-4, `layer ${l} row ${j}`);
    }
  }
});

Deno.test("e2e: pruning policies stay within budget on the real model", async () => {
  for (const name of POLICY_NAMES.filter((n) => n !== "full")) {
    const spec = name === "lethe" ? { name, mode: "fixed", budget: 24, slack: 4 } : { name, budget: 24 };
    const policy = createPolicy(spec, shape);
    const got = await decode(backend, prompt, policy);
    assert.ok(policy.stats.evicted > 0, name);
    const cap = name === "lethe" ? 24 * shape.nLayers + 4 * shape.nLayers : 24 * shape.nLayers;
    assert.ok(got.lengths.reduce((x, y) => x + y) <= cap, `${name}: ${got.lengths}`);
    assert.equal(got.tokens.length, STEPS);
  }
});

Deno.test("e2e: Sequence.kept counts a pending plan without applying it; Sequence.rewind settles it first", async () => {
  const seq = new Sequence(backend, model.tokenizer, {
    maxTokens: 64,
    stop: [],
    sampling: GREEDY,
    stopAtEos: false,
    policy: createPolicy({ name: "h2o", budget: 12 }, shape),
  });
  seq.feed(prompt);
  seq.start();
  const aligned = () => seq.policy.exportState().scores.every((s, l) => s.length === seq.kv.length(l));
  // decode until a step leaves a plan pending (the policy's table already follows it, the cache not yet)
  while (aligned()) seq.accept((await backend.forward([seq.nextInput()]))[0]);
  assert.throws(() => seq.rewind(5), /still generating/);
  const plan = seq.nextInput().compact; // the pending plan, as the next step would carry it
  assert.ok(plan);
  // kept(): what the policy decided, the plan counted but left on its path
  const settled = seq.kv.toHost();
  settled.compact(plan);
  const lengths = () => Array.from({ length: shape.nLayers }, (_, l) => seq.kv.length(l));
  const before = lengths();
  assert.deepEqual(seq.kept(), {
    keptPerLayer: Array.from({ length: shape.nLayers }, (_, l) => settled.length(l)),
    kvBytes: settled.bytes(),
  });
  assert.deepEqual(lengths(), before, "kept() applies nothing");
  assert.ok(!aligned());
  seq.cancel();
  const p = seq.kv.nextPos - 4;
  const expect = settled.toHost();
  expect.rewind(p);
  seq.rewind(p);
  assert.ok(aligned(), "cache and policy state agree");
  for (let l = 0; l < shape.nLayers; l++) {
    assert.deepEqual(seq.kv.positions(l), expect.positions(l), `layer ${l}: what the plan kept, before ${p}`);
  }
  assert.ok(expect.positions(0).length < plan[0]!.length, "the rewind dropped kept rows");
  assert.deepEqual([seq.kv.nextPos, seq.tokens.length], [p, p]);
  assert.throws(() => seq.rewind(p + 1), /outside \[0, \d+\]/);
  seq.kv.free();
});
