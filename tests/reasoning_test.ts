import assert from "node:assert/strict";
import { resolve } from "node:path";
import { REPO_ROOT } from "../src/model/loader.ts";
import { ChatTemplate } from "../src/model/chat_template.ts";
import {
  parseReasoningFormat,
  promptEndsInReasoning,
  type ReasoningDelta,
  type ReasoningOptions,
  ReasoningSplitter,
  splitReasoning,
  templateDropsReasoning,
} from "../src/model/reasoning.ts";

const SHARED = resolve(REPO_ROOT, "..", "shared", "fixtures", "chat_templates");
const sharedTemplate = (name: string) =>
  new ChatTemplate(Deno.readTextFileSync(resolve(SHARED, `${name}.jinja`)));

/** Stream `chunks` ([text, tokens]) through a splitter; the deltas of each push and of finish(). */
function stream(chunks: (string | [string, number])[], opts: ReasoningOptions = {}) {
  const s = new ReasoningSplitter(opts);
  const deltas: ReasoningDelta[] = chunks.map((
    c,
  ) => (typeof c === "string" ? s.push(c) : s.push(c[0], c[1])));
  deltas.push(s.finish());
  const join = (k: keyof ReasoningDelta) => deltas.map((d) => d[k]).join("");
  return { s, deltas, reasoning: join("reasoning"), content: join("content") };
}

Deno.test("splitReasoning: reasoning then content, trimmed as llama.cpp and the DeepSeek API return them", () => {
  assert.deepEqual(splitReasoning("<think>\n91 = 7 * 13.\n</think>\n\nNo: 91 = 7 × 13."), {
    reasoning: "91 = 7 * 13.",
    content: "No: 91 = 7 × 13.",
  });
  assert.deepEqual(splitReasoning("  <think>a\n\nb  </think>c  "), { reasoning: "a\n\nb", content: "c  " });
  assert.deepEqual(splitReasoning("<think></think>\n\nHi"), { reasoning: "", content: "Hi" });
  // Unclosed: everything is reasoning.
  assert.deepEqual(splitReasoning("<think>\nstill thinking "), { reasoning: "still thinking", content: "" });
  // No opening tag at the start: plain content, never split (later tags are text).
  assert.deepEqual(splitReasoning("\nHello <think>x</think> y"), {
    reasoning: null,
    content: "\nHello <think>x</think> y",
  });
  assert.deepEqual(splitReasoning("a</think>b"), { reasoning: null, content: "a</think>b" });
  // Only the first closing tag ends the reasoning.
  assert.deepEqual(splitReasoning("<think>r</think>c <think>x</think>"), {
    reasoning: "r",
    content: "c <think>x</think>",
  });
  assert.deepEqual(splitReasoning(""), { reasoning: null, content: "" });
});

Deno.test("startsInReasoning: output starts mid-thought; a repeated opening tag is dropped", () => {
  const forced = { startsInReasoning: true };
  assert.deepEqual(splitReasoning("Let me see.\n</think>\n\nFour.", forced), {
    reasoning: "Let me see.",
    content: "Four.",
  });
  assert.deepEqual(splitReasoning("<think>\nhm</think>Four.", forced), { reasoning: "hm", content: "Four." });
  assert.deepEqual(splitReasoning("no end", forced), { reasoning: "no end", content: "" });
  assert.deepEqual(splitReasoning("</think>Four.", forced), { reasoning: "", content: "Four." });
  assert.deepEqual(splitReasoning("  ", forced), { reasoning: "", content: "" });
  assert.deepEqual(splitReasoning("", forced), { reasoning: null, content: "" });
});

Deno.test("format none: text passes through untouched, tags kept; tokens still counted", () => {
  const text = "<think>\nr\n</think>\n\nc";
  assert.deepEqual(splitReasoning(text, { format: "none" }), { reasoning: null, content: text });
  const r = stream([["<th", 1], ["ink>\nr\n</thi", 3], ["nk>", 1], ["\n\nc", 2]], { format: "none" });
  assert.deepEqual(r.deltas, [
    { reasoning: "", content: "<th" },
    { reasoning: "", content: "ink>\nr\n</thi" },
    { reasoning: "", content: "nk>" },
    { reasoning: "", content: "\n\nc" },
    { reasoning: "", content: "" },
  ]);
  assert.deepEqual([r.s.reasoningTokens, r.s.contentTokens], [5, 2]);
});

Deno.test("streaming: tags split across chunks are held back, then told apart", () => {
  const r = stream(["<th", "ink>\nLet", " me</", "th", "ink>", "\n\n", "The ", "answer</"]);
  assert.deepEqual(r.deltas, [
    { reasoning: "", content: "" },
    { reasoning: "Let", content: "" }, // the newline after <think> is dropped
    { reasoning: " me", content: "" },
    { reasoning: "", content: "" },
    { reasoning: "", content: "" },
    { reasoning: "", content: "" },
    { reasoning: "", content: "The " },
    { reasoning: "", content: "answer</" },
    { reasoning: "", content: "" },
  ]);
  // A tag prefix that turns out to be text is released as text.
  assert.deepEqual(stream(["<th", "ought"]).deltas.map((d) => d.content), ["", "<thought", ""]);
  assert.deepEqual(stream(["<think>a </th", "x> b"]).deltas, [
    { reasoning: "a", content: "" },
    { reasoning: " </thx> b", content: "" },
    { reasoning: "", content: "" },
  ]);
  // An unfinished closing tag at the end of generation is reasoning text.
  assert.deepEqual(stream(["<think>a</thi"]).reasoning, "a</thi");
  assert.deepEqual(stream(["<thi"]).content, "<thi");
});

Deno.test("streaming mid-thought (the prompt opened <think>): deltas are reasoning from the first token", () => {
  const r = stream(["\n", "Okay", ", 2+2", "\n", "</", "think", ">\n\n", "4", "."], {
    startsInReasoning: true,
  });
  assert.deepEqual(r.deltas.map((d) => [d.reasoning, d.content]), [
    ["", ""],
    ["Okay", ""],
    [", 2+2", ""],
    ["", ""],
    ["", ""],
    ["", ""],
    ["", ""],
    ["", "4"],
    ["", "."],
    ["", ""],
  ]);
  assert.equal(r.reasoning, "Okay, 2+2");
  assert.equal(r.content, "4.");
  assert.equal(r.s.sawReasoning, true);
});

Deno.test("streaming: any chunking gives the one-shot split (every 2-way cut, 3-way cuts, char by char)", () => {
  const texts = [
    "<think>\n91 = 7 * 13.\n</think>\n\nNo.",
    "  <think> a </think>  b </think> c",
    "plain <think> text",
    "<thin",
    "<think>x</thi",
    "\n\n<think>\n\n</think>\n\n",
    "猫 <think>🐱</think>🐱",
  ];
  for (const opts of [{}, { startsInReasoning: true }, { format: "none" as const }]) {
    for (const t of texts) {
      const whole = splitReasoning(t, opts);
      const want = [whole.reasoning ?? "", whole.content];
      const check = (chunks: string[]) => {
        const r = stream(chunks, opts);
        assert.deepEqual([r.reasoning, r.content], want, `${JSON.stringify(chunks)} ${JSON.stringify(opts)}`);
      };
      check([...t]);
      for (let i = 0; i <= t.length; i++) {
        check([t.slice(0, i), t.slice(i)]);
        for (let j = i; j <= t.length; j += 3) check([t.slice(0, i), t.slice(i, j), t.slice(j)]);
      }
    }
  }
});

Deno.test("reasoning tokens: chunks inside the reasoning section (tags included) count as reasoning", () => {
  let r = stream([["<think>", 1], ["\n", 1], ["ab", 2], ["</think>", 1], ["\n\n", 1], ["Hi", 1], ["", 1]]);
  assert.deepEqual([r.s.reasoningTokens, r.s.contentTokens], [5, 3]);
  // A held opening tag: its tokens wait until it is told apart.
  r = stream([["<th", 1], ["ink>", 1], ["x", 1]]);
  assert.deepEqual([r.s.reasoningTokens, r.s.contentTokens], [3, 0]);
  r = stream([["<th", 1], ["at", 1]]);
  assert.deepEqual([r.s.reasoningTokens, r.s.contentTokens], [0, 2]);
  r = stream([["<th", 1]]);
  assert.deepEqual([r.s.reasoningTokens, r.s.contentTokens], [0, 1]);
  // Mid-thought start: leading whitespace and an empty chunk (a partial UTF-8 byte) are reasoning.
  r = stream([["\n", 1], ["", 1], ["ok", 1], ["</think>A", 2], ["B", 1]], { startsInReasoning: true });
  assert.deepEqual([r.s.reasoningTokens, r.s.contentTokens], [5, 1]);
  r = stream([["Hello", 1], [" there", 1]]);
  assert.deepEqual([r.s.reasoningTokens, r.s.contentTokens], [0, 2]);
});

Deno.test("promptEndsInReasoning: R1's generation prompt opens <think>; Qwen's and a closed block do not", () => {
  const msgs = [{ role: "user", content: "Hi" }];
  const r1 = sharedTemplate("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B");
  assert.equal(promptEndsInReasoning(r1.render(msgs, { addGenerationPrompt: true })), true);
  assert.equal(promptEndsInReasoning(r1.render(msgs, { addGenerationPrompt: false })), false);
  const qwen = sharedTemplate("Qwen-Qwen2.5-7B-Instruct");
  assert.equal(promptEndsInReasoning(qwen.render(msgs, { addGenerationPrompt: true })), false);
  // Qwen3 with enable_thinking=false ends its generation prompt with an empty, closed block.
  assert.equal(promptEndsInReasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n"), false);
  assert.equal(promptEndsInReasoning("<|im_start|>assistant\n<think>\n"), true);
});

Deno.test("templateDropsReasoning: R1 strips earlier turns' <think> blocks, the others keep them", () => {
  assert.equal(templateDropsReasoning(sharedTemplate("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B")), true);
  for (
    const name of [
      "Qwen-Qwen2.5-7B-Instruct",
      "meta-llama-Llama-3.1-8B-Instruct",
      "microsoft-Phi-3.5-mini-instruct",
      "mistralai-Mistral-Nemo-Instruct-2407",
      "google-gemma-2-2b-it",
    ]
  ) {
    assert.equal(templateDropsReasoning(sharedTemplate(name)), false, name);
  }
  // Like Qwen3: reasoning kept only after the last user message.
  const qwen3Like = new ChatTemplate(
    "{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}" +
      "{{ m.content.split('</think>')[-1].lstrip('\\n') }}{% else %}{{ m.content }}{% endif %}|{% endfor %}",
  );
  assert.equal(templateDropsReasoning(qwen3Like), true);
  assert.equal(templateDropsReasoning(new ChatTemplate("{{ raise_exception('no') }}")), false);
  assert.equal(templateDropsReasoning(new ChatTemplate("{{ messages[0].content }}")), false);
});

Deno.test("parseReasoningFormat", () => {
  assert.equal(parseReasoningFormat("deepseek"), "deepseek");
  assert.equal(parseReasoningFormat("none"), "none");
  assert.throws(() => parseReasoningFormat("auto"), /must be one of deepseek, none, got "auto"/);
});
