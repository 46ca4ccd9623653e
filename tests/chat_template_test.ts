/**
 * Chat templates render byte-identically to transformers' apply_chat_template (Python jinja2):
 * - every template × conversation of ../shared/fixtures/chat_templates (and its continue_final_message renders);
 * - tests/fixtures/jinja_reference.json: jinja2 features one by one and the shared templates with tools, tool
 *   calls, extra variables and continue_final_message (rendered by tests/fixtures/make_jinja_reference.py).
 * Where the reference raised, the renderer raises: the template's raise_exception message exactly.
 */
import assert from "node:assert/strict";
import { resolve } from "node:path";
import { REPO_ROOT } from "../src/model/loader.ts";
import {
  ChatTemplate,
  ChatTemplateError,
  ggufChatTemplate,
  type TemplateMessage,
} from "../src/model/chat_template.ts";
import { pyFloat, pyJsonDumps, pyStrftime, V } from "../src/model/jinja_python.ts";

const SHARED = resolve(REPO_ROOT, "..", "shared", "fixtures", "chat_templates");
const readJSON = (path: string) => JSON.parse(Deno.readTextFileSync(path));
const templateText = (name: string) => Deno.readTextFileSync(resolve(SHARED, name));
/** The fixed clock of both references: 26 July 2024 (the shared fixtures only print the date). */
const NOW = () => new Date(2024, 6, 26, 9, 5, 3);

type Expected = { render: string } | { error: string };

/** The render, or the error as the reference writes it ("TemplateError: <message>" for raise_exception). */
function outcome(render: () => string): Expected {
  try {
    return { render: render() };
  } catch (e) {
    if (!(e instanceof ChatTemplateError)) throw e;
    return { error: e.kind === "raise" ? `TemplateError: ${e.message}` : `${e.kind}: ${e.message}` };
  }
}

/** Equal renders; for a reference error, an error too, and the same message for a template's own raise. */
function assertSameOutcome(got: Expected, want: Expected, what: string) {
  if ("render" in want) return assert.deepEqual(got, want, what);
  assert.ok("error" in got, `${what}: expected an error, got a render`);
  if (want.error.startsWith("TemplateError:")) assert.equal(got.error, want.error, what);
  else assert.ok(!got.error.startsWith("TemplateError:"), `${what}: ${got.error}`);
}

Deno.test("shared fixtures: every template × conversation renders as transformers does", () => {
  const { bos_eos, expected } = readJSON(resolve(SHARED, "expected.json"));
  const conversations: { id: string; messages: TemplateMessage[]; add_generation_prompt?: boolean }[] =
    readJSON(
      resolve(SHARED, "conversations.json"),
    );
  let renders = 0, raises = 0;
  for (const [name, byConversation] of Object.entries<Record<string, Expected>>(expected)) {
    const [bosToken, eosToken] = bos_eos[name];
    const template = new ChatTemplate(templateText(`${name}.jinja`), { bosToken, eosToken, now: NOW });
    for (const c of conversations) {
      const want = byConversation[c.id];
      const got = outcome(() =>
        template.render(c.messages, { addGenerationPrompt: c.add_generation_prompt ?? true })
      );
      assertSameOutcome(got, want, `${name} × ${c.id}`);
      if ("render" in want) renders++;
      else raises++;
    }
  }
  assert.deepEqual([renders, raises], [52, 4]);
});

Deno.test("shared fixtures: continue_final_message renders stop right after the final message's text", () => {
  const { bos_eos, continue_final_message: cfm } = readJSON(resolve(SHARED, "expected.json"));
  const conversation = readJSON(resolve(SHARED, "conversations.json")).find((c: { id: string }) =>
    c.id === cfm.conversation
  );
  const names = Object.keys(cfm.expected);
  assert.equal(names.length, 7);
  for (const name of names) {
    const [bosToken, eosToken] = bos_eos[name];
    const template = new ChatTemplate(templateText(`${name}.jinja`), { bosToken, eosToken, now: NOW });
    const got = template.render(conversation.messages, { continueFinalMessage: true });
    assert.equal(got, cfm.expected[name].render, name);
  }
});

Deno.test("jinja2 reference cases: features, tools, tool calls, variables and continue_final_message", () => {
  const { cases } = readJSON(resolve(REPO_ROOT, "tests", "fixtures", "jinja_reference.json"));
  assert.ok(cases.length >= 60);
  for (const c of cases) {
    const got = outcome(() => {
      const source = c.template ?? templateText(c.template_file);
      return new ChatTemplate(source).render(c.messages ?? [], {
        addGenerationPrompt: c.add_generation_prompt,
        continueFinalMessage: c.continue_final_message,
        tools: c.tools,
        vars: c.vars,
        now: NOW,
      });
    });
    assertSameOutcome(got, c.expected, c.id);
  }
});

Deno.test("options: bos/eos defaults, vars override them, chat_template_kwargs reach the template", () => {
  const t = new ChatTemplate(
    "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}" +
      "{% if add_generation_prompt %}>{% if enable_thinking is defined and not enable_thinking %}[no think]" +
      "{% endif %}{% endif %}",
    { bosToken: "<s>", eosToken: "</s>" },
  );
  const msgs = [{ role: "user", content: "hi" }];
  assert.equal(t.render(msgs), "<s>hi</s>");
  assert.equal(t.render(msgs, { addGenerationPrompt: true }), "<s>hi</s>>");
  assert.equal(
    t.render(msgs, { addGenerationPrompt: true, vars: { enable_thinking: false, bos_token: "B" } }),
    "Bhi</s>>[no think]",
  );
  assert.equal(new ChatTemplate("[{{ bos_token }}]").render([]), "[]");
});

Deno.test("options: tools and documents are None unless given; strftime_now uses the clock", () => {
  const t = new ChatTemplate("{{ tools is none }} {{ documents is none }} {{ tools|tojson if tools }}");
  assert.equal(t.render([]), "True True ");
  assert.equal(t.render([], { tools: [{ a: 1 }] }), 'False True [{"a": 1}]');
  const d = new ChatTemplate("{{ strftime_now('%d %b %Y, %A %H:%M') }}");
  assert.equal(d.render([], { now: () => new Date(2025, 0, 5, 14, 7) }), "05 Jan 2025, Sunday 14:07");
});

function assertTemplateError(f: () => unknown, kind: string, message?: RegExp | string) {
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof ChatTemplateError, String(e));
    assert.equal(e.kind, kind, e.message);
    if (typeof message === "string") assert.equal(e.message, message);
    else if (message) assert.match(e.message, message);
    return true;
  });
}

Deno.test("errors: raise_exception carries its message; syntax, render and input errors are typed", () => {
  const msgs = [{ role: "system", content: "x" }];
  const gemma = new ChatTemplate(templateText("google-gemma-2-2b-it.jinja"));
  assertTemplateError(() => gemma.render(msgs), "raise", "System role not supported");
  assertTemplateError(() => new ChatTemplate("{% if %}"), "syntax", /does not parse/);
  assertTemplateError(() => new ChatTemplate("{% for m in messages %}"), "syntax");
  assertTemplateError(
    () => new ChatTemplate("{{ missing.attr }}").render([]),
    "render",
    /'missing' is undefined/,
  );
  assertTemplateError(() => new ChatTemplate("{{ 'a' + 1 }}").render([]), "render", /concatenate/);
  assertTemplateError(() => new ChatTemplate("{{ x }}").render([], { vars: { messages: [] } }), "input");
  assertTemplateError(() => new ChatTemplate("{{ x }}").render([], { vars: { x: 1n } }), "input");
  assertTemplateError(() => new ChatTemplate("x").render("hi" as never), "input");
  const asst = [{ role: "user", content: "q" }, { role: "assistant", content: "partial" }];
  assertTemplateError(
    () => new ChatTemplate("{{ messages[0].content }}").render(asst, { continueFinalMessage: true }),
    "input",
    /does not appear/,
  );
  assertTemplateError(
    () => new ChatTemplate("x").render(asst, { continueFinalMessage: true, addGenerationPrompt: true }),
    "input",
    /not compatible/,
  );
});

Deno.test("limits: runaway loops, repetition and recursion end in a render error", () => {
  const cases: [string, RegExp][] = [
    [
      "{% for i in range(1000000) %}{% for j in range(1000000) %}{% endfor %}{% endfor %}",
      /exceeded .* steps/,
    ],
    ["{{ 'x' * 100000000 }}", /repetition result longer/],
    ["{{ [1, 2] * 10000000 }}", /repetition result longer/],
    ["{{ range(10000000)|length }}", /range\(\) longer/],
    ["{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", /./],
  ];
  for (const [src, message] of cases) {
    assertTemplateError(() => new ChatTemplate(src).render([]), "render", message);
  }
  // The step budget grows with the conversation: a long one still renders.
  const msgs = Array.from(
    { length: 5000 },
    (_, i) => ({ role: i % 2 ? "assistant" : "user", content: `m${i}` }),
  );
  const qwen = new ChatTemplate(templateText("Qwen-Qwen2.5-7B-Instruct.jinja"));
  assert.ok(qwen.render(msgs).endsWith("<|im_start|>assistant\nm4999<|im_end|>\n"));
});

Deno.test("continue_final_message: content parts continue their last text part", () => {
  const t = new ChatTemplate(
    "{% for m in messages %}<{{ m.role }}>{% for p in m.content %}{{ p.text }}{% endfor %}</{{ m.role }}>" +
      "{% endfor %}",
  );
  const msgs = [{
    role: "assistant",
    content: [{ type: "text", text: "one " }, { type: "text", text: "two " }],
  }];
  assert.equal(t.render(msgs, { continueFinalMessage: true }), "<assistant>one two ");
  assertTemplateError(
    () => t.render([{ role: "assistant", content: [{ type: "image" }] }], { continueFinalMessage: true }),
    "input",
    /no text/,
  );
});

Deno.test("known gaps of the parser are syntax errors, not wrong renders", () => {
  // @huggingface/jinja parses neither tests with an argument, exponent literals nor one-element tuples.
  for (const src of ["{{ 6 is divisibleby 3 }}", "{{ 1e3 }}", "{{ (1,) }}"]) {
    assertTemplateError(() => new ChatTemplate(src), "syntax");
  }
});

Deno.test("python printing: float repr, json.dumps, strftime", () => {
  assert.deepEqual(
    [0.1, 1e-5, 1e16, 1.5e16, 123.0, -0, 1 / 3, 1e22, 5e-324].map(pyFloat),
    ["0.1", "1e-05", "1e+16", "1.5e+16", "123.0", "-0.0", "0.3333333333333333", "1e+22", "5e-324"],
  );
  const v = new V.Obj(new Map([["b", new V.Arr([])], ["a", new V.Str("é\u2028\x7f")]]));
  assert.equal(pyJsonDumps(v), '{"b": [], "a": "é\u2028\x7f"}');
  assert.equal(
    pyJsonDumps(v, { ensureAscii: true, sortKeys: true }),
    '{"a": "\\u00e9\\u2028\\u007f", "b": []}',
  );
  assert.equal(pyJsonDumps(v, { indent: 0 }), '{\n"b": [],\n"a": "é\u2028\x7f"\n}');
  assert.equal(pyJsonDumps(v, { indent: "\t" }), '{\n\t"b": [],\n\t"a": "é\u2028\x7f"\n}');
  assert.throws(() => pyJsonDumps(new V.Undef()), /not JSON serializable/);
  const d = new Date(2024, 0, 1, 0, 30, 9);
  assert.equal(
    pyStrftime(d, "%-d/%-m %I%p %j %U %W %u %w %y %C %F %T %q"),
    "1/1 12AM 001 00 01 1 1 24 20 2024-01-01 00:30:09 %q",
  );
});

Deno.test("ggufChatTemplate: the template and the text of the BOS/EOS tokens; absent parts are empty", () => {
  const meta = {
    "tokenizer.chat_template": "{{ bos_token }}",
    "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>"],
    "tokenizer.ggml.bos_token_id": 1,
    "tokenizer.ggml.eos_token_id": 2,
  };
  assert.deepEqual(ggufChatTemplate(meta), { source: "{{ bos_token }}", bosToken: "<s>", eosToken: "</s>" });
  assert.deepEqual(ggufChatTemplate({ "tokenizer.ggml.bos_token_id": 7 }), {
    source: undefined,
    bosToken: "",
    eosToken: "",
  });
});
