/**
 * The model runtime end to end: exact golden greedy output, both RoPE conventions, the HF model, the
 * generate and eval:ppl CLIs (output and one-line errors).
 */
import assert from "node:assert/strict";
import { resolve } from "node:path";
import { loadModel, REPO_ROOT, SHARED_MODELS } from "../src/model/loader.ts";
import { createTsBackend } from "../src/engine/ts/backend.ts";
import { runSequence, Sequence } from "../src/engine/sequence.ts";
import { GREEDY } from "../src/engine/sampler.ts";
import { createPolicy } from "../src/kv/registry.ts";
import { applyRope, ropeFrequencies } from "../src/engine/ts/rope.ts";
import { runCli } from "./support/cli.ts";

const golden = JSON.parse(
  await Deno.readTextFile(resolve(REPO_ROOT, "..", "shared", "golden", "stories260K_greedy.json")),
) as { cases: { prompt: string; steps: number; text: string }[] };

/** `args`: the tool's path from the repository root, then its arguments. */
const cli = (args: string[]) => runCli(args[0], args.slice(1));

Deno.test("golden: greedy decode of stories260K through the engine equals the reference text", async () => {
  const model = await loadModel(SHARED_MODELS.stories260K);
  const backend = createTsBackend(model.config, model.weights);
  for (const c of golden.cases) {
    const prompt = model.tokenizer.encode(c.prompt, { addBos: true });
    const seq = new Sequence(backend, model.tokenizer, {
      maxTokens: c.steps + 1 - prompt.length,
      stop: [],
      sampling: GREEDY,
      policy: createPolicy({ name: "full" }, { nLayers: 5, contextLength: 512 }),
    });
    seq.feed(prompt);
    seq.start();
    let text = model.tokenizer.decode(prompt);
    for await (const ev of runSequence(backend, seq)) text += ev.text;
    assert.equal(text, c.text);
    assert.equal(model.tokenizer.decode(seq.tokens), c.text, "whole-sequence decode agrees with streaming");
  }
});

Deno.test("golden: `deno task generate` CLI prints exactly the golden text", async () => {
  const c = golden.cases[0];
  const r = await cli([
    "src/cli/generate.ts",
    "--prompt",
    c.prompt,
    "--steps",
    String(c.steps),
    "--backend",
    "ts",
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, c.text + "\n");
  assert.match(r.stderr, /generated \d+ tok/);
});
Deno.test("golden: `deno task generate --json` prints the prompt ids, the generated ids and their text", async () => {
  const c = golden.cases[0];
  const model = await loadModel(SHARED_MODELS.stories260K);
  const tok = model.tokenizer;
  const r = await cli([
    "src/cli/generate.ts",
    "--prompt",
    c.prompt,
    "--steps",
    "40",
    "--backend",
    "ts",
    "--json",
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(r.stdout.endsWith("}\n") && !r.stdout.slice(0, -1).includes("\n"), "one line of JSON");
  const out = JSON.parse(r.stdout);
  assert.deepEqual(Object.keys(out), ["prompt_tokens", "tokens", "text"]);
  assert.deepEqual(out.prompt_tokens, tok.encode(c.prompt, { addBos: true }));
  assert.equal(out.prompt_tokens.length + out.tokens.length, 41, "--steps counts every position");
  assert.equal(out.text, tok.decode(out.tokens));
  assert.ok(c.text.startsWith(c.prompt + out.text), "the golden continuation");
  // --parse-special: special-token text in the prompt becomes the token (here BOS, "<s>").
  const sp = await cli([
    "src/cli/generate.ts",
    "--prompt",
    "<s>Once",
    "--max-tokens",
    "1",
    "--backend",
    "ts",
    "--json",
    "--parse-special",
  ]);
  assert.equal(sp.code, 0, sp.stderr);
  assert.deepEqual(
    JSON.parse(sp.stdout).prompt_tokens,
    tok.encode("<s>Once", { addBos: true, parseSpecial: true }),
  );
  assert.equal(JSON.parse(sp.stdout).prompt_tokens[1], tok.bosId);
});

Deno.test("rope: interleaved and half-split conventions rotate the documented pairs", () => {
  const freqs = ropeFrequencies(4, 10000); // [1, 0.01]
  const a = new Float32Array([1, 0, 1, 0]);
  applyRope(a, 1, 4, 1, freqs, "interleaved"); // pairs (0,1) angle 1 and (2,3) angle 0.01
  assert.ok(Math.abs(a[0] - Math.cos(1)) < 1e-6 && Math.abs(a[1] - Math.sin(1)) < 1e-6);
  assert.ok(Math.abs(a[2] - Math.cos(0.01)) < 1e-6 && Math.abs(a[3] - Math.sin(0.01)) < 1e-6);
  const b = new Float32Array([1, 1, 0, 0]);
  applyRope(b, 1, 4, 1, freqs, "half"); // pairs (0,2) angle 1 and (1,3) angle 0.01
  assert.ok(Math.abs(b[0] - Math.cos(1)) < 1e-6 && Math.abs(b[2] - Math.sin(1)) < 1e-6);
  assert.ok(Math.abs(b[1] - Math.cos(0.01)) < 1e-6 && Math.abs(b[3] - Math.sin(0.01)) < 1e-6);
});

Deno.test("reference: prefill in one call equals token-by-token decode, and batched equals alone", async () => {
  const model = await loadModel(SHARED_MODELS.tinystories656K);
  const b = createTsBackend(model.config, model.weights);
  const ids = model.tokenizer.encode("The cat sat on the mat and looked at the bird.", { addBos: true });
  const kvA = b.createKV();
  const [all] = await b.forward([{ kv: kvA, tokens: ids, logits: "all" }]);
  const kvB = b.createKV();
  const V = model.config.vocabSize;
  for (let t = 0; t < ids.length; t++) {
    const [one] = await b.forward([{ kv: kvB, tokens: [ids[t]], logits: "last" }]);
    const row = all.logits.subarray(t * V, (t + 1) * V);
    for (let i = 0; i < V; i++) assert.ok(Math.abs(row[i] - one.logits[i]) < 1e-4, `step ${t} logit ${i}`);
  }
  const other = model.tokenizer.encode("A dog ran.", { addBos: true });
  const [x, y] = await b.forward([
    { kv: b.createKV(), tokens: ids, logits: "last" },
    { kv: b.createKV(), tokens: other, logits: "last" },
  ]);
  const [yAlone] = await b.forward([{ kv: b.createKV(), tokens: other, logits: "last" }]);
  assert.deepEqual(x.logits, all.logits.subarray((ids.length - 1) * V));
  assert.deepEqual(y.logits, yAlone.logits);
});

Deno.test("reference: scores with decay over a prefill equal the same decode steps accumulated", async () => {
  const model = await loadModel(SHARED_MODELS.stories260K);
  const b = createTsBackend(model.config, model.weights);
  const ids = model.tokenizer.encode("Tom had a red ball.", { addBos: true });
  const gamma = 0.9;
  const [pre] = await b.forward([{
    kv: b.createKV(),
    tokens: ids,
    logits: "none",
    scores: { decay: gamma, window: 1e9 },
  }]);
  const kv = b.createKV();
  const acc: number[][] = Array.from({ length: 5 }, () => []);
  for (const t of ids) {
    const [o] = await b.forward([{ kv, tokens: [t], logits: "none", scores: { decay: gamma, window: 1 } }]);
    for (let l = 0; l < 5; l++) {
      acc[l] = acc[l].map((s) => s * gamma);
      acc[l].push(0);
      o.scores![l].forEach((s, j) => acc[l][j] += s);
    }
  }
  for (let l = 0; l < 5; l++) {
    assert.equal(pre.scores![l].length, ids.length);
    pre.scores![l].forEach((s, j) => assert.ok(Math.abs(s - acc[l][j]) < 1e-5, `layer ${l} token ${j}`));
    // every query's probabilities sum to 1 per head: the last decode step's scores sum to nHeads
  }
  const [last] = await b.forward([{ kv, tokens: [2], logits: "none", scores: { decay: 1, window: 1 } }]);
  for (const s of last.scores!) {
    assert.ok(Math.abs(s.reduce((a, v) => a + v, 0) - model.config.nHeads) < 1e-4);
  }
});

Deno.test("HF model: tinystories-656K greedy continuation is coherent English", async () => {
  const r = await cli([
    "src/cli/generate.ts",
    "--model",
    SHARED_MODELS.tinystories656K,
    "--prompt",
    "Once upon a time",
    "--max-tokens",
    "60",
    "--backend",
    "ts",
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^Once upon a time,? [a-z]/);
  const words = r.stdout.split(/\s+/).filter(Boolean);
  assert.ok(words.length >= 35, r.stdout);
  const common = ["the", "a", "and", "to", "was", "she", "he", "her", "his", "of", "in", "it"];
  const hits = words.filter((w) => common.includes(w.toLowerCase().replace(/[^a-z]/g, ""))).length;
  assert.ok(hits / words.length > 0.15, `few function words: ${r.stdout}`);
});

Deno.test("eval:ppl prints finite perplexities near the expected range for both shared models", async () => {
  const a = await cli([
    "src/cli/eval_ppl.ts",
    "--window",
    "512",
    "--max-windows",
    "6",
    "--backend",
    "ts",
    "--json",
  ]);
  assert.equal(a.code, 0, a.stderr);
  const ra = JSON.parse(a.stdout);
  assert.ok(ra.ppl > 3 && ra.ppl < 6, `stories260K ppl ${ra.ppl}`);
  assert.ok(ra.loss_nats > 1.1 && ra.loss_nats < 1.8);
  const b = await cli([
    "src/cli/eval_ppl.ts",
    "--model",
    SHARED_MODELS.tinystories656K,
    "--max-windows",
    "3",
    "--backend",
    "ts",
    "--json",
  ]);
  assert.equal(b.code, 0, b.stderr);
  const rb = JSON.parse(b.stdout);
  // Its tokens average ~4.3 characters (stories260K's ~2.1): ~60 per token is ~0.95 nats per character.
  assert.ok(Number.isFinite(rb.ppl) && rb.ppl > 30 && rb.ppl < 100, `tinystories-656K ppl ${rb.ppl}`);
});

Deno.test("CLI errors are one line and a non-zero exit", async () => {
  const cases: [string[], RegExp, number][] = [
    [["src/cli/generate.ts"], /^error: --prompt is required/, 2],
    [
      ["src/cli/generate.ts", "--prompt", "x", "--temperature", "hot"],
      /^error: --temperature must be a number/,
      2,
    ],
    [["src/cli/generate.ts", "--prompt", "x", "--bogus"], /^error: Unknown option '--bogus'/, 2],
    [["src/cli/generate.ts", "--prompt", "x", "--backend", "tpu"], /^error: --backend must be one of/, 2],
    [["src/cli/generate.ts", "--prompt", "x", "--model", "/nonexistent.gguf"], /^error: model not found/, 1],
    [["src/cli/generate.ts", "--prompt", "x", "--model", "deno.json"], /^error: .*(GGUF|magic)/i, 1],
    [
      ["src/cli/generate.ts", "--prompt", "x", "--max-tokens", "5000", "--backend", "ts"],
      /exceed the context/,
      2,
    ],
    [["src/cli/eval_ppl.ts", "--text", "/nonexistent.txt"], /^error: cannot read --text/, 2],
  ];
  for (const [args, re, code] of cases) {
    const r = await cli(args);
    assert.equal(r.code, code, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr.split("\n").find((l) => l.startsWith("error:")) ?? "", re, args.join(" "));
    assert.ok(!/\n\s+at /.test(r.stderr), `no stack trace: ${r.stderr}`);
  }
});
