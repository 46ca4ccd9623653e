// deno-lint-ignore-file no-explicit-any
/**
 * Chat templates, special tokens, end of generation and the inspection endpoints over HTTP, with scripted
 * models (tests/support/scripted_model.ts) carrying the real Qwen3 and Llama 3 special tokens and templates:
 * `chat_template_kwargs` (Qwen3's `enable_thinking`), `tools`, `continue_final_message`, `parse_special` on
 * raw completions, every end-of-generation token stopping the server, `/tokenize`, `/detokenize` and
 * `/apply-template` (status and body, auth, OpenAPI).
 */
import assert from "node:assert/strict";
import { loadModel } from "../src/model/loader.ts";
import { ChatRenderer } from "../src/server/chat_prompt.ts";
import { decodeBundle } from "../src/session/bundle.ts";
import { get, post, start, startWith } from "./support/server_harness.ts";
import { scriptedModel } from "./support/scripted_model.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };
const scripted = await scriptedModel({
  family: "qwen3",
  scripts: [
    ["\n", "<think>", "Hmm", "</think>", "\n\n", "Hi", "<|im_end|>"],
    ["Sure", ",", " yes", "<|im_end|>"],
    [" one", " two", "<|endoftext|>"],
    [" three", " four", "<|fim_pad|>"],
    [" five", " six", "<|im_start|>", " seven", "<|im_end|>"],
  ],
});
const model = await loadModel(scripted.path);
const MODEL = model.name.replace(/\.gguf$/, "");
const tok = model.tokenizer;
const renderer = ChatRenderer.forModel(model);
const HELLO = [{ role: "user", content: "Hello" }];
const chat = (base: string, body: Record<string, unknown>, headers: Record<string, string> = {}) =>
  post(base, "/v1/chat/completions", { model: MODEL, messages: HELLO, temperature: 0, ...body }, headers);

Deno.test(
  "chat templates: Qwen3 thinks unless chat_template_kwargs.enable_thinking is false (request over server)",
  opts,
  async () => {
    const srv = await startWith(model);
    const quiet = await startWith(model, { chatTemplateKwargs: { enable_thinking: false } });
    try {
      const think = await chat(srv.url, {});
      assert.equal(think.status, 200, think.text);
      assert.deepEqual(think.json.choices[0].message, {
        role: "assistant",
        content: "Hi",
        reasoning_content: "Hmm",
      });
      assert.equal(think.json.usage.completion_tokens, 6);
      assert.deepEqual(think.json.usage.completion_tokens_details, { reasoning_tokens: 3 });

      const off = await chat(srv.url, { chat_template_kwargs: { enable_thinking: false } });
      assert.deepEqual(off.json.choices[0].message, { role: "assistant", content: "Hi" });
      assert.equal(off.json.usage.completion_tokens, 2);
      assert.deepEqual(off.json.usage.completion_tokens_details, { reasoning_tokens: 0 });
      assert.equal(
        off.json.usage.prompt_tokens,
        think.json.usage.prompt_tokens + 4,
        "<think>\\n\\n</think>\\n\\n",
      );

      assert.deepEqual((await chat(quiet.url, {})).json.choices[0].message, off.json.choices[0].message);
      const on = await chat(quiet.url, { chat_template_kwargs: { enable_thinking: true } });
      assert.deepEqual(on.json.choices[0].message, think.json.choices[0].message);

      const shown = await post(quiet.url, "/apply-template", { messages: HELLO });
      assert.equal(shown.status, 200, shown.text);
      assert.equal(
        shown.json.prompt,
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
      );

      const reserved = await chat(srv.url, { chat_template_kwargs: { messages: [] } });
      assert.equal(reserved.status, 400);
      assert.equal(reserved.json.error.code, "chat_template_error");
      assert.equal(reserved.json.error.param, "messages");
      assert.match(reserved.json.error.message, /"messages" cannot be overridden/);
    } finally {
      await srv.shutdown();
      await quiet.shutdown();
    }
  },
);

Deno.test(
  "sessions: Qwen3's template drops earlier thinking; the store keeps the prompt, the next turn is a stateless one",
  opts,
  async () => {
    const srv = await startWith(model, { kvPolicy: { name: "full" } });
    try {
      const sid = (await post(srv.url, "/v1/sessions", {})).json.id;
      const t1 = await chat(srv.url, { session_id: sid });
      assert.equal(t1.json.choices[0].message.reasoning_content, "Hmm");
      const stored = decodeBundle((await srv.deps.sessions.store.get(sid))!.blob);
      assert.deepEqual(
        stored.history!.tokens,
        renderer.prompt(HELLO).tokens,
        "up to <|im_start|>assistant\n",
      );
      const next = [{ role: "user", content: "More?" }];
      const t2 = await chat(srv.url, { session_id: sid, messages: next });
      const stateless = await chat(srv.url, {
        messages: [...HELLO, { role: "assistant", content: "Hi", reasoning_content: "Hmm" }, ...next],
      });
      assert.equal(t2.json.usage.prompt_tokens, stateless.json.usage.prompt_tokens);
      assert.equal(t2.json.kv.cached_tokens, renderer.prompt(HELLO).tokens.length);
      assert.deepEqual(t2.json.choices[0].message, stateless.json.choices[0].message);
    } finally {
      await srv.shutdown();
    }
  },
);

Deno.test(
  "chat templates: tools reach the template; continue_final_message continues the final assistant message",
  opts,
  async () => {
    const srv = await startWith(model);
    try {
      const tools = [{
        type: "function",
        function: {
          name: "get_weather",
          description: "Weather in a city",
          parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
        },
      }];
      const shown = await post(srv.url, "/apply-template", { messages: HELLO, tools });
      assert.equal(shown.status, 200, shown.text);
      assert.equal(
        shown.json.prompt,
        renderer.render(HELLO, { tools }),
        "the same render as transformers' (tests/chat_template_test.ts)",
      );
      assert.match(shown.json.prompt, /^<\|im_start\|>system\n# Tools\n/);
      assert.ok(
        shown.json.prompt.includes(`{"type": "function", "function": {"name": "get_weather"`),
        "tojson",
      );
      const withTools = await chat(srv.url, { tools });
      assert.equal(withTools.status, 200, withTools.text);
      const ids = await post(srv.url, "/tokenize", { content: shown.json.prompt });
      assert.equal(withTools.json.usage.prompt_tokens, ids.json.tokens.length, "the prompt is that render");

      // continue_final_message: the render stops right after "Sure"; the reply continues it.
      const partial = [...HELLO, { role: "assistant", content: "Sure" }];
      const cont = await post(srv.url, "/apply-template", {
        messages: partial,
        continue_final_message: true,
      });
      assert.equal(
        cont.json.prompt,
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nSure",
      );
      const sid = (await post(srv.url, "/v1/sessions", {})).json.id;
      const r = await chat(srv.url, { messages: partial, continue_final_message: true, session_id: sid });
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(r.json.choices[0].message, { role: "assistant", content: ", yes" });
      const stored = decodeBundle((await srv.deps.sessions.store.get(sid))!.blob);
      assert.deepEqual(stored.history!.messages.at(-1), { role: "assistant", content: "Sure, yes" });

      const both = await chat(srv.url, {
        messages: partial,
        continue_final_message: true,
        add_generation_prompt: true,
      });
      assert.equal(both.status, 400);
      assert.equal(both.json.error.param, "continue_final_message");
      const noFinal = await chat(srv.url, { continue_final_message: true });
      assert.equal(noFinal.status, 400);
      assert.match(noFinal.json.error.message, /final assistant message/);
      const badTool = await chat(srv.url, { tools: [{ type: "function" }] });
      assert.equal(badTool.status, 400);
      assert.match(badTool.json.error.param, /^tools/);
    } finally {
      await srv.shutdown();
    }
  },
);

Deno.test(
  "special tokens: chat templates parse them; raw completions only with parse_special",
  opts,
  async () => {
    const srv = await startWith(model);
    try {
      const text = "<|im_start|>user\nHi<|im_end|>";
      const asText = tok.encode(text);
      const parsed = tok.encode(text, { parseSpecial: true });
      assert.deepEqual(parsed.slice(0, 1), [tok.tokenId("<|im_start|>")]);
      assert.ok(asText.length > parsed.length + 4);
      const complete = (extra: Record<string, unknown>) =>
        post(srv.url, "/v1/completions", { model: MODEL, prompt: text, max_tokens: 1, ...extra });
      assert.equal((await complete({})).json.usage.prompt_tokens, asText.length);
      assert.equal((await complete({ parse_special: false })).json.usage.prompt_tokens, asText.length);
      assert.equal((await complete({ parse_special: true })).json.usage.prompt_tokens, parsed.length);
      // A chat prompt's control tokens are tokens: the template's render, tokenized with parse_special.
      const c = await chat(srv.url, {});
      assert.equal(
        c.json.usage.prompt_tokens,
        tok.encode(renderer.render(HELLO), { parseSpecial: true }).length,
      );
      assert.ok(c.json.usage.prompt_tokens < tok.encode(renderer.render(HELLO)).length - 10);
    } finally {
      await srv.shutdown();
    }
  },
);

Deno.test(
  "end of generation: every EOG token of a real vocabulary stops the server (Qwen, Llama 3)",
  opts,
  async () => {
    const llama3 = await scriptedModel({
      family: "llama3",
      scripts: [[" one", " two", "<|eot_id|>"], [" three", " four", "<|end_of_text|>"], [
        " five",
        " six",
        "<|eom_id|>",
      ]],
    });
    const servers = [await startWith(model), await startWith(await loadModel(llama3.path))];
    try {
      const cases: [number, string, string, string, number][] = [
        [0, " one", " two", "<|endoftext|>", 2],
        [0, " three", " four", "<|fim_pad|>", 2],
        [0, " five", " six seven", "<|im_end|>", 4], // <|im_start|> is a control token, not an EOG one
        [1, " one", " two", "<|eot_id|>", 2],
        [1, " three", " four", "<|end_of_text|>", 2],
        [1, " five", " six", "<|eom_id|>", 2],
      ];
      for (const [s, prompt, text, eog, n] of cases) {
        const srv = servers[s];
        const t = srv.deps.model.tokenizer;
        assert.ok(t.isEog(t.tokenId(eog)), `${eog} is in the EOG set`);
        const r = await post(srv.url, "/v1/completions", {
          model: srv.deps.model.name.replace(/\.gguf$/, ""),
          prompt,
          max_tokens: 16,
          temperature: 0,
        });
        assert.equal(r.status, 200, r.text);
        assert.equal(r.json.choices[0].text, text, `${prompt} → ${eog}`);
        assert.equal(r.json.choices[0].finish_reason, "stop", eog);
        assert.equal(r.json.usage.completion_tokens, n, `${eog}: the EOG token is the last one generated`);
      }
      assert.ok(!tok.isEog(tok.tokenId("<|im_start|>")));
    } finally {
      for (const s of servers) await s.shutdown();
      await llama3.dispose();
    }
  },
);

Deno.test(
  "inspect: /tokenize, /detokenize, /apply-template (llama.cpp's shapes), errors, auth, OpenAPI",
  opts,
  async () => {
    const srv = await startWith(model);
    const keyed = await start({ apiKeys: ["sk-test-12345678"] });
    try {
      const imStart = tok.tokenId("<|im_start|>");
      const t = await post(srv.url, "/tokenize", { content: "<|im_start|>user" });
      assert.equal(t.status, 200, t.text);
      assert.deepEqual(
        t.json,
        { tokens: [imStart, ...tok.encode("user")] },
        "parse_special defaults to true",
      );
      const plain = await post(srv.url, "/tokenize", { content: "<|im_start|>user", parse_special: false });
      assert.deepEqual(plain.json.tokens, tok.encode("<|im_start|>user"));
      const pieces = await post(srv.url, "/tokenize", { content: "<|im_start|> hi🦙", with_pieces: true });
      const ids = tok.encode("<|im_start|> hi🦙", { parseSpecial: true });
      assert.equal(pieces.json.tokens.length, ids.length);
      assert.deepEqual(pieces.json.tokens.slice(0, 2), [{ id: imStart, piece: "<|im_start|>" }, {
        id: ids[1],
        piece: " hi",
      }]);
      // 🦙 is split into byte tokens: each piece is its bytes, which together are the character's UTF-8.
      const bytes = pieces.json.tokens.slice(2).flatMap((p: any) => p.piece);
      assert.ok(pieces.json.tokens.slice(2).every((p: any) => Array.isArray(p.piece)));
      assert.deepEqual(bytes, Array.from(new TextEncoder().encode("🦙")));

      const d = await post(srv.url, "/detokenize", { tokens: ids });
      assert.deepEqual(d.json, { content: "<|im_start|> hi🦙" }, "special tokens as their text");
      const bad = await post(srv.url, "/detokenize", { tokens: [1, tok.vocabSize] });
      assert.equal(bad.status, 400);
      assert.deepEqual(bad.json.error, {
        message: `tokens[1] = ${tok.vocabSize} is not a token id of this model (0 … ${tok.vocabSize - 1}).`,
        type: "invalid_request_error",
        param: "tokens",
        code: "invalid_token",
      });
      const wrongType = await post(srv.url, "/detokenize", { tokens: "hi" });
      assert.equal(wrongType.status, 400);
      assert.equal(wrongType.json.error.param, "tokens");
      const noContent = await post(srv.url, "/tokenize", {});
      assert.equal(noContent.status, 400);
      assert.equal(noContent.json.error.param, "content");

      const a = await post(srv.url, "/apply-template", { messages: HELLO, model: MODEL });
      assert.deepEqual(a.json, { prompt: "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n" });
      const noGen = await post(srv.url, "/apply-template", { messages: HELLO, add_generation_prompt: false });
      assert.deepEqual(noGen.json, { prompt: "<|im_start|>user\nHello<|im_end|>\n" });
      const otherModel = await post(srv.url, "/apply-template", { messages: HELLO, model: "gpt-4" });
      assert.equal(otherModel.status, 404);
      assert.equal(otherModel.json.error.code, "model_not_found");
      const noMessages = await post(srv.url, "/apply-template", { messages: [] });
      assert.equal(noMessages.status, 400);

      // The story model: BOS with add_special, its default template (no model template).
      const bos = keyed.deps.model.tokenizer.bosId;
      const auth = { authorization: "Bearer sk-test-12345678" };
      for (const path of ["/tokenize", "/detokenize", "/apply-template"]) {
        const r = await post(keyed.url, path, { content: "x", tokens: [bos], messages: HELLO });
        assert.equal(r.status, 401, path);
        assert.equal(r.json.error.type, "authentication_error");
      }
      const sp = await post(keyed.url, "/tokenize", { content: "Once upon", add_special: true }, auth);
      assert.deepEqual(sp.json.tokens, keyed.deps.model.tokenizer.encode("Once upon", { addSpecial: true }));
      assert.equal(sp.json.tokens[0], bos);
      const story = await post(keyed.url, "/apply-template", {
        messages: [{ role: "user", content: "Once" }, { role: "assistant", content: " upon" }],
      }, auth);
      assert.deepEqual(story.json, { prompt: "Once\n upon" });

      const doc = await get(srv.url, "/openapi.json");
      for (const p of ["/tokenize", "/detokenize", "/apply-template"]) assert.ok(doc.json.paths[p]?.post, p);
      const body = doc.json.paths["/v1/chat/completions"].post.requestBody.content["application/json"].schema;
      const schema = body.$ref ? doc.json.components.schemas[body.$ref.split("/").pop()] : body;
      for (const f of ["reasoning_format", "chat_template_kwargs", "tools", "continue_final_message"]) {
        assert.ok(schema.properties[f], f);
      }
    } finally {
      await srv.shutdown();
      await keyed.shutdown();
    }
  },
);

Deno.test("scripted model cleanup", opts, async () => {
  await scripted.dispose();
});
