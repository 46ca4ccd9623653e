/**
 * Continuous batching on the real model (ts backend): batched results equal solo decodes, prompt prefill is
 * chunked under the per-step cap while other sequences keep decoding, the queue is bounded, and an abort
 * cancels its sequence between steps.
 */
import assert from "node:assert/strict";
import { runSequence, Sequence } from "../src/engine/sequence.ts";
import { GREEDY } from "../src/engine/sampler.ts";
import { createPolicy } from "../src/kv/registry.ts";
import { QueueFullError, Scheduler } from "../src/engine/scheduler.ts";
import { sharedModel } from "./support/server_harness.ts";

const { model, backend } = await sharedModel();
const tok = model.tokenizer;
const shape = { nLayers: model.config.nLayers, contextLength: model.config.contextLength };
const LONG = "Once upon a time there was a little dog who liked to run in the park with his friends. ".repeat(
  6,
);

function seqFor(prompt: string, maxTokens: number, chunk = 32): Sequence {
  const s = new Sequence(backend, tok, {
    maxTokens,
    stop: [],
    sampling: GREEDY,
    policy: createPolicy({ name: "full" }, shape),
    prefillChunk: chunk,
  });
  s.feed(tok.encode(prompt, { addBos: true }));
  s.start();
  return s;
}

async function solo(prompt: string, maxTokens: number, chunk = 32): Promise<string> {
  let t = "";
  for await (const ev of runSequence(backend, seqFor(prompt, maxTokens, chunk))) t += ev.text;
  return t;
}

Deno.test("batched decoding equals solo decoding; prefill is chunked under the per-step cap", async () => {
  const steps: { batch: number; prefill: number }[] = [];
  const sch = new Scheduler(backend, { maxBatch: 4, maxQueue: 4, maxPrefillPerStep: 32 }, {
    onStep: (_s, batch, prefill) => steps.push({ batch, prefill }),
  });
  const prompts = ["Once upon a time", LONG, "The cat", "Tom and Sue"];
  const texts = prompts.map(() => "");
  const seqs = prompts.map((p) => seqFor(p, 24));
  const jobs = seqs.map((s, i) => sch.submit(s, { onToken: (ev) => (texts[i] += ev.text) }));
  const results = await Promise.all(jobs);
  assert.ok(results.every((r) => r.finishReason === "length"));
  for (let i = 0; i < prompts.length; i++) {
    assert.equal(texts[i], await solo(prompts[i], 24), `sequence ${i}`);
  }
  assert.ok(steps.every((s) => s.prefill <= 32), "prefill tokens per step stay under the cap");
  // the long prompt needs several chunks; meanwhile the other sequences were decoding in the same steps
  assert.ok(tok.encode(LONG).length > 3 * 32);
  assert.ok(steps.filter((s) => s.prefill > 0 && s.batch > 1).length >= 3);
});

Deno.test("bounded queue and cancellation by signal", async () => {
  const sch = new Scheduler(backend, { maxBatch: 1, maxQueue: 1, maxPrefillPerStep: 64 });
  const ac = new AbortController();
  const a = sch.submit(seqFor("Once upon a time", 1000), { signal: ac.signal });
  const b = sch.submit(seqFor("The cat", 5));
  assert.throws(() => sch.submit(seqFor("Tom", 5)), QueueFullError);
  setTimeout(() => ac.abort(), 20);
  const ra = await a;
  assert.equal(ra.finishReason, "cancelled");
  assert.equal((await b).finishReason, "length");
  await sch.idle();
  assert.equal(sch.active + sch.queued, 0);
});
