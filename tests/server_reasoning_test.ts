// deno-lint-ignore-file no-explicit-any
/**
 * Reasoning output over HTTP, with a scripted model (tests/support/scripted_model.ts) in the DeepSeek-R1
 * distill family: its real special tokens and chat template, whose generation prompt opens `<think>`, so the
 * reply starts mid-thought. The model answers every prompt that ends in "<think>\n" with
 * "Let me think</think>\n\nHi!" and its EOS. Also: sessions store what the template renders of a finished
 * turn (R1's drops earlier reasoning), and their next turn is exactly a fresh request's.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import { loadModel } from "../src/model/loader.ts";
import { ChatRenderer } from "../src/server/chat_prompt.ts";
import { decodeBundle } from "../src/session/bundle.ts";
import { decodeSnapshot } from "../src/session/codec.ts";
import type { HostKVCache } from "../src/kv/cache.ts";
import { get, post, startWith } from "./support/server_harness.ts";
import { scriptedModel } from "./support/scripted_model.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };
const EOS = "<｜end▁of▁sentence｜>";
const scripted = await scriptedModel({
  family: "r1-distill-qwen",
  scripts: [["\n", "Let", " me", " think", "</think>", "\n\n", "Hi", "!", EOS]],
});
const model = await loadModel(scripted.path);
const MODEL = model.name.replace(/\.gguf$/, "");
const renderer = ChatRenderer.forModel(model);
const HELLO = [{ role: "user", content: "Hello" }];

Deno.test(
  "reasoning: R1's template opens <think>; deepseek splits it out, none leaves it; per server and per request",
  opts,
  async () => {
    const srv = await startWith(model);
    const other = await startWith(model, { reasoningFormat: "none" });
    try {
      const chat = (base: string, extra: Record<string, unknown> = {}) =>
        post(base, "/v1/chat/completions", { model: MODEL, messages: HELLO, temperature: 0, ...extra });
      const split = await chat(srv.url);
      assert.equal(split.status, 200, split.text);
      assert.deepEqual(split.json.choices[0].message, {
        role: "assistant",
        content: "Hi!",
        reasoning_content: "Let me think",
      });
      assert.equal(split.json.choices[0].finish_reason, "stop", "EOS ends the reply");
      assert.equal(split.json.usage.completion_tokens, 8);
      assert.deepEqual(split.json.usage.completion_tokens_details, { reasoning_tokens: 4 });
      assert.equal(split.json.usage.prompt_tokens, renderer.prompt(HELLO).tokens.length);

      const whole = await chat(srv.url, { reasoning_format: "none" });
      assert.deepEqual(whole.json.choices[0].message, {
        role: "assistant",
        content: "Let me think</think>\n\nHi!",
      });
      assert.deepEqual(whole.json.usage.completion_tokens_details, { reasoning_tokens: 4 });

      assert.deepEqual((await chat(other.url)).json.choices[0].message, whole.json.choices[0].message);
      assert.deepEqual(
        (await chat(other.url, { reasoning_format: "deepseek" })).json.choices[0].message,
        split.json.choices[0].message,
      );

      const bad = await chat(srv.url, { reasoning_format: "auto-ish" });
      assert.equal(bad.status, 400);
      assert.equal(bad.json.error.param, "reasoning_format");
      assert.equal(bad.json.error.type, "invalid_request_error");

      // Raw completions never split: the text is the model's.
      const raw = await post(srv.url, "/v1/completions", {
        model: MODEL,
        prompt: renderer.render(HELLO),
        parse_special: true,
        temperature: 0,
      });
      assert.equal(raw.json.choices[0].text, "Let me think</think>\n\nHi!");
      assert.equal(raw.json.usage.completion_tokens_details, undefined);
    } finally {
      await srv.shutdown();
      await other.shutdown();
    }
  },
);

Deno.test(
  "reasoning: streamed as delta.reasoning_content, then delta.content (openai client)",
  opts,
  async () => {
    const srv = await startWith(model);
    try {
      const client = new OpenAI({ baseURL: srv.url + "/v1", apiKey: "unused" });
      for (const format of ["deepseek", "none"]) {
        const stream = await client.chat.completions.create({
          model: MODEL,
          messages: [{ role: "user", content: "Hello" }],
          temperature: 0,
          stream: true,
          stream_options: { include_usage: true },
          reasoning_format: format,
        } as any);
        let reasoning = "", content = "", usage: any = null, finish = null;
        const order: string[] = [];
        for await (const chunk of stream as any) {
          if (chunk.usage) usage = chunk.usage;
          const ch = chunk.choices[0];
          if (!ch) continue;
          finish = ch.finish_reason ?? finish;
          const d = ch.delta ?? {};
          assert.ok(!(d.reasoning_content && d.content), "a delta carries one part");
          if (d.reasoning_content) order.push("r");
          if (d.content) order.push("c");
          reasoning += d.reasoning_content ?? "";
          content += d.content ?? "";
        }
        assert.equal(finish, "stop");
        assert.deepEqual(usage.completion_tokens_details, { reasoning_tokens: 4 });
        if (format === "deepseek") {
          assert.equal(reasoning, "Let me think");
          assert.equal(content, "Hi!");
          assert.equal(
            order.join(""),
            "rrrcc",
            "the reasoning streams first, token by token, then the answer",
          );
        } else {
          assert.equal(reasoning, "");
          assert.equal(content, "Let me think</think>\n\nHi!");
        }
      }
    } finally {
      await srv.shutdown();
    }
  },
);

/** Every layer's rows (positions, K and V) of two caches are identical. */
function assertSameRows(a: HostKVCache, b: HostKVCache) {
  assert.equal(a.nextPos, b.nextPos);
  for (let l = 0; l < a.shape.nLayers; l++) {
    assert.deepEqual(Array.from(a.positions(l)), Array.from(b.positions(l)), `layer ${l} positions`);
    const n = a.length(l) * a.kvDim;
    assert.deepEqual(a.k[l].subarray(0, n), b.k[l].subarray(0, n), `layer ${l} K`);
    assert.deepEqual(a.v[l].subarray(0, n), b.v[l].subarray(0, n), `layer ${l} V`);
  }
}

Deno.test(
  "sessions: a finished turn's reasoning leaves the stored cache; the next turn prefills exactly a fresh render",
  opts,
  async () => {
    const srv = await startWith(model, { kvPolicy: { name: "full" } });
    try {
      const session = async () => (await post(srv.url, "/v1/sessions", {})).json.id as string;
      const chat = (messages: unknown[], sid?: string) =>
        post(srv.url, "/v1/chat/completions", {
          model: MODEL,
          messages,
          temperature: 0,
          ...(sid ? { session_id: sid } : {}),
        });
      const sid = await session();
      const t1 = await chat(HELLO, sid);
      assert.equal(t1.status, 200, t1.text);
      assert.equal(t1.json.choices[0].message.content, "Hi!");

      // What the store keeps: the prompt up to "<｜Assistant｜>", as R1's template renders this turn in any next
      // prompt ("<｜Assistant｜>Hi!<｜end▁of▁sentence｜>"): "<think>\n", the reasoning and the answer are gone.
      const prompt1 = renderer.prompt(HELLO).tokens;
      const kept = prompt1.slice(0, -2);
      assert.deepEqual(prompt1.slice(-2), [
        model.tokenizer.tokenId("<think>"),
        model.tokenizer.encode("\n")[0],
      ]);
      const rec = await srv.deps.sessions.store.get(sid);
      const bundle = decodeBundle(rec!.blob);
      assert.deepEqual(bundle.history!.tokens, kept);
      assert.deepEqual(bundle.history!.messages.at(-1), {
        role: "assistant",
        content: "Hi!",
        reasoning_content: "Let me think",
      });
      const snap = decodeSnapshot(bundle.snapshot);
      assert.deepEqual(snap.tokens, kept);
      // …and its rows are exactly those a fresh prefill of these tokens computes.
      const fresh = srv.deps.backend.createKV();
      await srv.deps.backend.forward([{ kv: fresh, tokens: kept, logits: "none" }]);
      assertSameRows(snap.kv, fresh.toHost());
      fresh.free();
      assert.equal((await get(srv.url, `/v1/sessions/${sid}`)).json.tokens, kept.length);
      // The session's KV view shows the stored rows; its timeline record, the generation's end and what the
      // commit dropped.
      const view = (await get(srv.url, `/v1/sessions/${sid}/kv`)).json;
      assert.deepEqual(view.tokens, kept);
      assert.deepEqual(
        view.layers.map((l: { positions: number[] }) => l.positions),
        view.layers.map(() => kept.map((_, i) => i)),
      );
      const [rec1] = view.timeline;
      assert.equal(rec1.end, t1.json.usage.prompt_tokens + t1.json.usage.completion_tokens);
      assert.deepEqual(rec1.kept_per_layer, t1.json.kv.kept_per_layer);
      assert.equal(rec1.dropped_at_commit, rec1.end - kept.length);

      // The next turn (only the new message) prefills the answer as the template renders it and the new turn:
      // the same prompt and the same reply as a request resending the whole conversation without a session.
      const AND = { role: "user", content: "And?" };
      const t2 = await chat([AND], sid);
      const conversation = [...HELLO, { role: "assistant", content: "Hi!" }, AND];
      const stateless = await chat(conversation);
      assert.equal(t2.status, 200, t2.text);
      assert.equal(t2.json.usage.prompt_tokens, stateless.json.usage.prompt_tokens);
      assert.equal(t2.json.usage.prompt_tokens, renderer.prompt(conversation).tokens.length);
      assert.equal(t2.json.kv.cached_tokens, kept.length);
      assert.equal(t2.json.kv.prefilled_tokens, t2.json.usage.prompt_tokens - kept.length);
      assert.equal(t2.json.kv.rebuilt, null);
      assert.deepEqual(t2.json.choices[0].message, stateless.json.choices[0].message);

      // A client resending the whole history (content as returned, with or without reasoning_content) resumes
      // the same way.
      const sid2 = await session();
      await chat(HELLO, sid2);
      const resent = await chat([
        ...HELLO,
        { role: "assistant", content: "Hi!", reasoning_content: "Let me think" },
        AND,
      ], sid2);
      assert.equal(resent.json.kv.rebuilt, null);
      assert.equal(resent.json.kv.cached_tokens, kept.length);
      assert.deepEqual(resent.json.usage, t2.json.usage);

      // Turn 2 committed the same way: the stored history is the conversation's render up to its last
      // "<｜Assistant｜>".
      const after = decodeBundle((await srv.deps.sessions.store.get(sid))!.blob);
      const prompt2 = renderer.prompt(conversation).tokens;
      assert.deepEqual(after.history!.tokens, prompt2.slice(0, -2));
    } finally {
      await srv.shutdown();
    }
  },
);

Deno.test("scripted model cleanup", opts, async () => {
  await scripted.dispose();
});
