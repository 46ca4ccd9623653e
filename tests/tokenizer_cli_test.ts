/** `deno task tokenize`: llama.cpp's test pairs through the CLI, the special-token flags, one-line errors. */
import assert from "node:assert/strict";
import { resolve } from "node:path";
import { REPO_ROOT, SHARED_MODELS } from "../src/model/loader.ts";
import { vocabPairs, vocabPath } from "./support/tokenizer.ts";
import { runCli } from "./support/cli.ts";

const run = (args: string[], stdin: string) => runCli("src/cli/tokenize.ts", args, { stdin });

Deno.test("tokenize CLI: a vocabulary-only GGUF reproduces llama.cpp's pairs (--json)", async () => {
  for (const name of ["gpt-2", "llama-spm"]) {
    const pairs = await vocabPairs(name);
    const r = await run(["--model", vocabPath(name), "--json"], JSON.stringify(pairs.map((p) => p.text)));
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), pairs.map((p) => p.ids));
  }
});

Deno.test("tokenize CLI: --add-special and --parse-special", async () => {
  const gpt2 = vocabPath("gpt-2");
  const texts = JSON.stringify(["<|endoftext|>Hi"]);
  assert.deepEqual(JSON.parse((await run(["--model", gpt2, "--json"], texts)).stdout), [[
    27,
    91,
    437,
    1659,
    5239,
    91,
    29,
    17250,
  ]]);
  const on = await run(["--model", gpt2, "--json", "--parse-special"], texts);
  assert.deepEqual(JSON.parse(on.stdout), [[50256, 17250]]);
  const spm = await run(["--model", vocabPath("llama-spm"), "--json", "--add-special"], '["Hi", ""]');
  assert.deepEqual(JSON.parse(spm.stdout), [[1, 6324], [1]]);
  // Without --json: one text in, its ids on one line; a Hugging Face directory works too.
  const hf = await run(["--model", SHARED_MODELS.tinystories656K, "--add-special"], "Once upon a time");
  assert.equal(hf.code, 0, hf.stderr);
  assert.equal(hf.stdout, "1 80 147 201 282 57\n");
  const stats = await run(["--model", gpt2, "--stats"], "Hello world");
  assert.equal(stats.stdout, "15496 995\n");
  assert.match(stats.stderr, /1 text\(s\), 11 bytes, 2 tokens in .* MB\/s/);
});

Deno.test("tokenize CLI: bad input is one line on stderr and a non-zero exit", async () => {
  const gpt2 = vocabPath("gpt-2");
  const cases: [string[], string, number, RegExp][] = [
    [["--model", gpt2, "--json"], "not json", 1, /^error: stdin is not valid JSON/],
    [["--model", gpt2, "--json"], '{"a":1}', 1, /^error: stdin must be a JSON array of strings$/],
    [["--model", gpt2, "--json"], '["a", 2]', 1, /^error: stdin\[1\] is not a string$/],
    [["--model", "/no/such/model.gguf"], "x", 1, /^error: model not found/],
    [["--model", resolve(REPO_ROOT, "deno.json")], "x", 1, /^error: /],
    [[], "x", 2, /^error: --model is required/],
    [["--model", gpt2, "--bogus"], "x", 2, /^error: /],
  ];
  for (const [args, stdin, code, message] of cases) {
    const r = await run(args, stdin);
    assert.equal(r.code, code, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr.split("\n")[0], message);
    assert.equal(r.stdout, "");
  }
  const neox = await run(["--model", vocabPath("gpt-neox"), "--json"], '["a"]');
  assert.equal(neox.code, 0);
  assert.match(neox.stderr, /^warning: GGUF has no tokenizer\.ggml\.pre/);
});
