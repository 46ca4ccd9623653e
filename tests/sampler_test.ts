import assert from "node:assert/strict";
import { argmax, GREEDY, Sampler, type SamplingParams } from "../src/engine/sampler.ts";

const logits = new Float32Array([1.0, 3.0, 2.5, -1.0, 0.0, 2.9]);
const params = (p: Partial<SamplingParams>): SamplingParams => ({ ...GREEDY, ...p });

function draws(p: SamplingParams, n: number, history: number[] = []): number[] {
  const s = new Sampler(p);
  return Array.from({ length: n }, () => s.sample(logits, history));
}

Deno.test("sampler: greedy is argmax and ignores the seed", () => {
  assert.equal(argmax(logits), 1);
  assert.deepEqual(draws(params({ seed: 1 }), 5), [1, 1, 1, 1, 1]);
  assert.deepEqual(draws(params({ seed: 2 }), 5), [1, 1, 1, 1, 1]);
});

Deno.test("sampler: the same seed reproduces the same sequence; another seed differs", () => {
  const p = params({ temperature: 1.5, seed: 42 });
  const a = draws(p, 200), b = draws(p, 200), c = draws({ ...p, seed: 43 }, 200);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  assert.ok(new Set(a).size >= 4, "temperature 1.5 explores several tokens");
});

Deno.test("sampler: state save/restore continues the exact stream", () => {
  const p = params({ temperature: 1, seed: 7 });
  const s = new Sampler(p);
  for (let i = 0; i < 10; i++) s.sample(logits);
  const st = s.getState();
  const rest = Array.from({ length: 20 }, () => s.sample(logits));
  const t = new Sampler(p);
  t.setState(JSON.parse(JSON.stringify(st)));
  assert.deepEqual(Array.from({ length: 20 }, () => t.sample(logits)), rest);
  assert.throws(() => t.setState({ rng: [1, 2] }), /four uint32/);
});

Deno.test("sampler: top-k, top-p and min-p restrict the candidates", () => {
  assert.deepEqual(new Set(draws(params({ temperature: 5, topK: 2, seed: 3 }), 300)), new Set([1, 5]));
  // probabilities at T=1: token 1 ≈ .36, 5 ≈ .33, 2 ≈ .22 → top-p 0.6 keeps {1, 5}
  assert.deepEqual(new Set(draws(params({ temperature: 1, topP: 0.6, seed: 3 }), 300)), new Set([1, 5]));
  // min-p 0.5 keeps tokens with p ≥ 0.5·p(top): 1, 5, 2 (2.5 → e^-0.5 ≈ .61)
  assert.deepEqual(new Set(draws(params({ temperature: 1, minP: 0.5, seed: 3 }), 400)), new Set([1, 2, 5]));
});

Deno.test("sampler: repetition penalty demotes recent tokens (llama.cpp rule)", () => {
  // token 1 (3.0) penalised by 2 → 1.5; token 5 (2.9) wins greedily
  assert.deepEqual(draws(params({ repetitionPenalty: 2, seed: 0 }), 1, [1]), [5]);
  // outside the window the penalty does not apply
  assert.deepEqual(draws(params({ repetitionPenalty: 2, repetitionWindow: 1, seed: 0 }), 1, [1, 4]), [1]);
  // negative logits are multiplied: token 3 (-1) becomes less likely, never more
  const neg = new Float32Array([-1, -2]);
  assert.equal(new Sampler(params({ repetitionPenalty: 3 })).sample(neg, [1]), 0);
});

Deno.test("sampler: invalid parameters are rejected with the parameter's name", () => {
  assert.throws(() => new Sampler(params({ temperature: -1 })), /temperature/);
  assert.throws(() => new Sampler(params({ topP: 0 })), /top_p/);
  assert.throws(() => new Sampler(params({ topK: 1.5 })), /top_k/);
  assert.throws(() => new Sampler(params({ minP: 2 })), /min_p/);
  assert.throws(() => new Sampler(params({ repetitionPenalty: 0 })), /repetition_penalty/);
  assert.throws(() => new Sampler(params({ seed: -3 })), /seed/);
});
