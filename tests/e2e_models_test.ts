// deno-lint-ignore-file no-explicit-any
/**
 * End to end with the commands a user runs: `deno task make-model` writes a model in a real family (its
 * vocabulary, special tokens and chat template), `deno task start --model FILE` serves it as its own process,
 * the official `openai` client chats and streams, the reasoning model (R1 distill: its template opens
 * `<think>`) returns `reasoning_content` in both formats, and a session resumes after a restart of the server
 * with its cached tokens.
 *
 * CI runs the families' tiny shapes (`qwen2.5-tiny`, `r1-distill-qwen-tiny`). The real-size run is
 * `deno task e2e:real` (`qwen2.5-0.5b` and `r1-distill-qwen-1.5b`): LETHE_E2E_SHAPES (comma-separated
 * shapes: the first plain, the second a reasoning one), LETHE_E2E_TYPE (the weight type make-model writes,
 * default f32), LETHE_E2E_QUANT (a `quantize --type` applied after, e.g. q4_k_m), LETHE_E2E_DIR (keep and
 * reuse the model files there). It prints the figures the README quotes: file size, load time, resident
 * memory, first-token latency and decode speed.
 */
import assert from "node:assert/strict";
import { resolve } from "node:path";
import OpenAI from "openai";
import { REPO_ROOT } from "../src/model/loader.ts";
import { startServerProcess } from "../src/client/server_process.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };
const [PLAIN, REASONING] = (Deno.env.get("LETHE_E2E_SHAPES") ?? "qwen2.5-tiny,r1-distill-qwen-tiny").split(
  ",",
);
const TYPE = Deno.env.get("LETHE_E2E_TYPE") ?? "f32";
const QUANT = Deno.env.get("LETHE_E2E_QUANT");
const KEEP_DIR = Deno.env.get("LETHE_E2E_DIR");
const READY_MS = 15 * 60_000;

async function task(args: string[]): Promise<void> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", "-q", ...args],
    cwd: REPO_ROOT,
    stdin: "null",
  })
    .output();
  const err = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `deno task ${args.join(" ")}: ${err}`);
}

/** The model file of `shape` (made with make-model, quantized when asked), reused from LETHE_E2E_DIR. */
async function modelFile(dir: string, shape: string): Promise<{ path: string; makeSeconds: number | null }> {
  const path = resolve(dir, `${shape}-${QUANT ?? TYPE}.gguf`);
  try {
    await Deno.stat(path);
    return { path, makeSeconds: null };
  } catch { /* make it */ }
  const t0 = performance.now();
  const made = QUANT ? resolve(dir, `${shape}-${TYPE}.gguf`) : path;
  await task(["make-model", "--shape", shape, "--type", TYPE, "--out", made]);
  if (QUANT) await task(["quantize", "--in", made, "--out", path, "--type", QUANT]);
  return { path, makeSeconds: (performance.now() - t0) / 1000 };
}

function rssMB(pid: number): number {
  const m = Deno.readTextFileSync(`/proc/${pid}/status`).match(/VmRSS:\s+(\d+) kB/);
  return m ? Number(m[1]) / 1024 : NaN;
}

const dir = KEEP_DIR ?? await Deno.makeTempDir({ prefix: "lethe-e2e-" });
await Deno.mkdir(dir, { recursive: true });
const figures: Record<string, unknown>[] = [];

async function serve(path: string, store: string, extra: string[] = []) {
  const t0 = performance.now();
  const srv = await startServerProcess({
    args: ["--model", path, "--store", store, "--log-level", "warn", ...extra],
    readyTimeoutMs: READY_MS,
  });
  return { srv, loadSeconds: (performance.now() - t0) / 1000 };
}

Deno.test(
  `e2e: make-model ${PLAIN} → deno task start → the openai client chats and streams; a session resumes after a restart`,
  opts,
  async () => {
    const { path, makeSeconds } = await modelFile(dir, PLAIN);
    const store = `denokv:${resolve(dir, `${PLAIN}-sessions.sqlite`)}`;
    let { srv, loadSeconds } = await serve(path, store);
    try {
      let client = new OpenAI({ baseURL: srv.url + "/v1", apiKey: "unused" });
      const [m] = (await client.models.list()).data;
      const messages = [{ role: "user" as const, content: "Write one line about the sea." }];
      const t0 = performance.now();
      const chat = await client.chat.completions.create({
        model: m.id,
        messages,
        max_tokens: 16,
        temperature: 0,
      });
      const chatSeconds = (performance.now() - t0) / 1000;
      assert.equal(chat.object, "chat.completion");
      assert.equal(typeof chat.choices[0].message.content, "string");
      assert.ok(chat.usage!.completion_tokens >= 1);
      let streamed = "", ttft = 0;
      const s0 = performance.now();
      const stream = await client.chat.completions.create({
        model: m.id,
        messages,
        max_tokens: 16,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
      });
      let usage: any = null;
      for await (const chunk of stream) {
        if (!ttft && chunk.choices[0]?.delta?.content) ttft = (performance.now() - s0) / 1000;
        streamed += chunk.choices[0]?.delta?.content ?? "";
        usage = chunk.usage ?? usage;
      }
      assert.equal(streamed, chat.choices[0].message.content, "greedy: the stream is the same reply");
      assert.equal(usage.completion_tokens, chat.usage!.completion_tokens);

      // A session: turn 1, restart the server on the same store, turn 2 reuses the stored cache.
      const sid = (await (await fetch(`${srv.url}/v1/sessions`, { method: "POST" })).json()).id;
      const turn = (content: string) =>
        client.chat.completions.create({
          model: m.id,
          messages: [{ role: "user", content }],
          max_tokens: 8,
          temperature: 0,
          session_id: sid,
        } as any) as Promise<any>;
      await turn("Hello there.");
      const stored = await (await fetch(`${srv.url}/v1/sessions/${sid}`)).json();
      assert.equal(stored.turns, 1);
      const rss = rssMB(srv.pid);
      await srv.stop();
      ({ srv } = await serve(path, store));
      client = new OpenAI({ baseURL: srv.url + "/v1", apiKey: "unused" });
      const t2 = await turn("And then?");
      assert.equal(t2.kv.rebuilt, null);
      // The stored history is reused: all of it, but its last (sampled, never fed) token when that one is also
      // in the next prompt.
      const cached = t2.usage.prompt_tokens_details.cached_tokens;
      assert.ok(
        cached === stored.tokens || cached === stored.tokens - 1,
        `cached ${cached} of ${stored.tokens}`,
      );
      assert.ok(cached > 10);
      assert.equal(t2.kv.cached_tokens, cached);
      assert.equal(t2.kv.prefilled_tokens, t2.usage.prompt_tokens - cached);
      figures.push({
        model: PLAIN,
        type: QUANT ?? TYPE,
        file_mb: +((await Deno.stat(path)).size / 2 ** 20).toFixed(1),
        make_s: makeSeconds === null ? null : +makeSeconds.toFixed(1),
        load_s: +loadSeconds.toFixed(2),
        rss_mb: +rss.toFixed(0),
        backend: srv.backend,
        chat_16_tokens_s: +chatSeconds.toFixed(2),
        ttft_s: +ttft.toFixed(3),
        resumed_cached_tokens: cached,
        resumed_prefilled_tokens: t2.kv.prefilled_tokens,
      });
    } finally {
      await srv.stop();
    }
  },
);

Deno.test(
  `e2e: ${REASONING} (its template opens <think>) returns reasoning_content in both formats, streamed too`,
  opts,
  async () => {
    const { path } = await modelFile(dir, REASONING);
    const { srv, loadSeconds } = await serve(path, "memory:");
    try {
      const client = new OpenAI({ baseURL: srv.url + "/v1", apiKey: "unused" });
      const [m] = (await client.models.list()).data;
      const ask = (format: string, stream = false) =>
        client.chat.completions.create({
          model: m.id,
          messages: [{ role: "user", content: "What is 2 + 2?" }],
          max_tokens: 12,
          temperature: 0,
          reasoning_format: format,
          stream,
        } as any) as Promise<any>;
      // Random weights never close the thought, so the whole reply is reasoning.
      const split = await ask("deepseek");
      const msg = split.choices[0].message;
      assert.ok(msg.reasoning_content.length > 0);
      assert.equal(msg.content, "");
      assert.equal(split.usage.completion_tokens_details.reasoning_tokens, split.usage.completion_tokens);
      const whole = (await ask("none")).choices[0].message;
      assert.equal(whole.reasoning_content, undefined);
      assert.equal(whole.content.trim(), msg.reasoning_content);
      let reasoning = "", content = "";
      for await (const chunk of await ask("deepseek", true)) {
        reasoning += chunk.choices[0]?.delta?.reasoning_content ?? "";
        content += chunk.choices[0]?.delta?.content ?? "";
      }
      assert.equal(reasoning, msg.reasoning_content);
      assert.equal(content, "");
      figures.push({
        model: REASONING,
        type: QUANT ?? TYPE,
        file_mb: +((await Deno.stat(path)).size / 2 ** 20).toFixed(1),
        load_s: +loadSeconds.toFixed(2),
        rss_mb: +rssMB(srv.pid).toFixed(0),
        backend: srv.backend,
      });
    } finally {
      await srv.stop();
    }
  },
);

Deno.test("e2e: figures", opts, async () => {
  console.log(JSON.stringify(figures, null, 1));
  if (!KEEP_DIR) await Deno.remove(dir, { recursive: true });
});
