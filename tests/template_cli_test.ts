/** `deno task template`: prints the rendered prompt exactly; bad input is one line on stderr and a non-zero exit. */
import assert from "node:assert/strict";
import { resolve } from "node:path";
import { REPO_ROOT } from "../src/model/loader.ts";
import { runCli } from "./support/cli.ts";

const SHARED = resolve(REPO_ROOT, "..", "shared", "fixtures");
const TEMPLATES = resolve(SHARED, "chat_templates");

const run = (args: string[], stdin?: string) => runCli("src/cli/template.ts", args, { stdin });

async function tempJSON(value: unknown): Promise<string> {
  const path = await Deno.makeTempFile({ suffix: ".json" });
  await Deno.writeTextFile(path, JSON.stringify(value));
  return path;
}

const expected = JSON.parse(Deno.readTextFileSync(resolve(TEMPLATES, "expected.json")));
const conversation = (id: string) =>
  JSON.parse(Deno.readTextFileSync(resolve(TEMPLATES, "conversations.json"))).find((c: { id: string }) =>
    c.id === id
  ).messages;

Deno.test("template CLI: --template with --vars prints the fixture render byte for byte", async () => {
  const name = "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B";
  const [bos, eos] = expected.bos_eos[name];
  const messages = await tempJSON(conversation("reasoning_history"));
  const r = await run([
    "--template",
    resolve(TEMPLATES, `${name}.jinja`),
    "--messages",
    messages,
    "--vars",
    JSON.stringify({ bos_token: bos, eos_token: eos }),
    "--add-generation-prompt",
  ]);
  assert.equal(r.stderr, "");
  assert.equal(r.code, 0);
  assert.equal(r.stdout, expected.expected[name].reasoning_history.render);
});

Deno.test("template CLI: --model takes the GGUF's template and BOS text; --continue-final-message", async () => {
  const messages = await tempJSON([{ role: "user", content: "Hi" }, { role: "assistant", content: "Hello" }]);
  // ggml-vocab-phi-3.gguf carries tokenizer.chat_template ("{{ bos_token }}{% for message in messages %}…").
  const r = await run(["--model", resolve(SHARED, "vocab", "ggml-vocab-phi-3.gguf"), "--messages", messages]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, "<s><|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n");

  const name = "meta-llama-Llama-3.1-8B-Instruct";
  const [bos, eos] = expected.bos_eos[name];
  const c = await run([
    "--template",
    resolve(TEMPLATES, `${name}.jinja`),
    "--messages",
    await tempJSON(conversation(expected.continue_final_message.conversation)),
    "--vars",
    JSON.stringify({ bos_token: bos, eos_token: eos }),
    "--continue-final-message",
  ]);
  assert.equal(c.code, 0, c.stderr);
  // The fixture's date is fixed; the CLI's strftime_now is today's.
  const want: string = expected.continue_final_message.expected[name].render;
  assert.equal(c.stdout.replace(/Today Date: [^\n]*/, "Today Date: 26 Jul 2024"), want);
});

Deno.test("template CLI: a request body on stdin with tools and chat_template_kwargs", async () => {
  const tpl = await Deno.makeTempFile({ suffix: ".jinja" });
  await Deno.writeTextFile(
    tpl,
    "{{ bos_token }}{{ tools|tojson }}|{{ enable_thinking }}|{{ messages|length }}{% if add_generation_prompt %}>{% endif %}",
  );
  const body = {
    model: "x",
    messages: [{ role: "user", content: "Q" }],
    tools: [{ type: "function", function: { name: "f" } }],
    chat_template_kwargs: { enable_thinking: false },
  };
  const r = await run(
    ["--template", tpl, "--messages", "-", "--vars", '{"bos_token":"B"}'],
    JSON.stringify(body),
  );
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, 'B[{"type": "function", "function": {"name": "f"}}]|False|1');
});

Deno.test("template CLI: bad input is one line and a non-zero exit", async () => {
  const messages = await tempJSON([{ role: "system", content: "x" }]);
  const gemma = resolve(TEMPLATES, "google-gemma-2-2b-it.jinja");
  const bad = await Deno.makeTempFile({ suffix: ".jinja" });
  await Deno.writeTextFile(bad, "{% if %}");
  const cases: [string[], number, RegExp][] = [
    [["--messages", messages], 2, /^error: --model or --template is required$/m],
    [["--template", gemma], 2, /^error: --messages is required$/m],
    [
      ["--template", gemma, "--messages", messages],
      1,
      /^error: the template raised: System role not supported\n$/,
    ],
    [["--template", bad, "--messages", messages], 1, /^error: chat template does not parse: .*\n$/],
    [["--template", gemma, "--messages", gemma], 2, /^error: --messages .* is not valid JSON/],
    [
      ["--template", gemma, "--messages", messages, "--vars", "[1]"],
      2,
      /^error: --vars must be a JSON object\n$/,
    ],
    [["--template", "/nonexistent.jinja", "--messages", messages], 2, /^error: cannot read template/],
    [
      ["--model", resolve(REPO_ROOT, "..", "shared", "models", "stories260K.gguf"), "--messages", messages],
      2,
      /has no chat template/,
    ],
    [
      ["--template", gemma, "--messages", await tempJSON({ prompt: "x" })],
      2,
      /must hold an array of messages/,
    ],
  ];
  for (const [args, code, message] of cases) {
    const r = await run(args);
    assert.equal(r.code, code, `${args.join(" ")}: ${r.stderr}`);
    assert.equal(r.stdout, "");
    assert.match(r.stderr, message, args.join(" "));
  }
});
