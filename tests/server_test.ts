// deno-lint-ignore-file no-explicit-any
/**
 * HTTP tests against real servers (Deno.serve on loopback port 0, in-process), the real model (stories260K),
 * the ts backend and real stores (memory, Deno KV file, redis-server started here).
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import { get, post, referenceTurns, start, startRedis } from "./support/server_harness.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };
const GREEDY_BODY = { temperature: 0 };
/** Prunes within a few dozen tokens, so sessions carry a pruned cache between turns. */
const PRUNING = { name: "lethe", mode: "fixed", budget: 40, slack: 8 };
const TURNS = ["Once upon a time", "Then the dog said", "The end of the day came and"];
const MAX = 40;

async function runTurns(
  bases: string[],
  sessionId: string,
  turns: string[],
  headers: Record<string, string> = {},
) {
  const out = [];
  for (let i = 0; i < turns.length; i++) {
    const r = await post(bases[i % bases.length], "/v1/completions", {
      model: "stories260K",
      prompt: turns[i],
      max_tokens: MAX,
      session_id: sessionId,
      ...GREEDY_BODY,
    }, headers);
    assert.equal(r.status, 200, r.text);
    out.push(r.json);
  }
  return out;
}

/** Turn k > 0 reuses the whole stored cache and prefills only its new tokens (+ the last sampled token). */
function assertIncremental(results: Record<string, any>[]) {
  for (let i = 1; i < results.length; i++) {
    const prev = results[i - 1], cur = results[i];
    const inCache = prev.usage.prompt_tokens + prev.usage.completion_tokens - 1;
    assert.equal(cur.usage.prompt_tokens_details.cached_tokens, inCache, `turn ${i} cached tokens`);
    assert.equal(cur.kv.cached_tokens, inCache);
    assert.equal(cur.kv.prefilled_tokens, cur.usage.prompt_tokens - inCache);
    assert.ok(
      cur.kv.prefilled_tokens < 12,
      `turn ${i} prefilled only new tokens (${cur.kv.prefilled_tokens})`,
    );
    assert.equal(cur.kv.rebuilt, null);
  }
}

Deno.test("openai npm client: models, chat, streaming chat, completions", opts, async () => {
  const srv = await start();
  try {
    const [ref] = await referenceTurns({ name: "lethe" }, ["Once upon a time"], 24);
    const client = new OpenAI({ baseURL: srv.url + "/v1", apiKey: "unused" });
    const models = await client.models.list();
    assert.deepEqual(models.data.map((m) => m.id), ["stories260K"]);

    const chat = await client.chat.completions.create({
      model: "stories260K",
      messages: [{ role: "user", content: "Once upon a time" }],
      max_tokens: 24,
      temperature: 0,
    });
    assert.equal(chat.choices[0].message.content, ref);
    assert.equal(chat.choices[0].finish_reason, "length");
    assert.equal(chat.usage?.completion_tokens, 24);
    assert.equal(chat.usage?.prompt_tokens_details?.cached_tokens, 0);

    const stream = await client.chat.completions.create({
      model: "stories260K",
      messages: [{ role: "user", content: "Once upon a time" }],
      max_completion_tokens: 24,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "", role = "", finish = "", usage: Record<string, unknown> | undefined;
    let first = true;
    for await (const ch of stream) {
      if (first) {
        role = ch.choices[0]?.delta.role ?? "";
        first = false;
      }
      if (ch.choices[0]?.delta.content) text += ch.choices[0].delta.content;
      if (ch.choices[0]?.finish_reason) finish = ch.choices[0].finish_reason;
      if (ch.usage) usage = ch.usage as unknown as Record<string, unknown>;
    }
    assert.equal(role, "assistant");
    assert.equal(text, ref);
    assert.equal(finish, "length");
    assert.equal(usage?.completion_tokens, 24);

    const cmpl = await client.completions.create({
      model: "stories260K",
      prompt: "Once upon a time",
      max_tokens: 24,
      temperature: 0,
    });
    assert.equal(cmpl.choices[0].text, ref);

    const cstream = await client.completions.create({
      model: "stories260K",
      prompt: "Once upon a time",
      max_tokens: 24,
      temperature: 0,
      stream: true,
    });
    let ctext = "";
    for await (const ch of cstream) ctext += ch.choices[0]?.text ?? "";
    assert.equal(ctext, ref);

    // stop strings are honoured and not included
    const stopped = await client.completions.create({
      model: "stories260K",
      prompt: "Once upon a time",
      max_tokens: 24,
      temperature: 0,
      stop: ["Lily"],
    });
    assert.equal(stopped.choices[0].finish_reason, "stop");
    assert.equal(stopped.choices[0].text, ref.slice(0, ref.indexOf("Lily")));

    // seeded sampling is reproducible
    const s1 = await client.completions.create({
      model: "stories260K",
      prompt: "Once",
      max_tokens: 16,
      seed: 7,
    });
    const s2 = await client.completions.create({
      model: "stories260K",
      prompt: "Once",
      max_tokens: 16,
      seed: 7,
    });
    assert.equal(s1.choices[0].text, s2.choices[0].text);

    const metrics = await get(srv.url, "/metrics");
    assert.match(metrics.text, /lethe_generated_tokens_total \d+/);
    assert.match(
      metrics.text,
      /lethe_http_requests_total\{route="\/v1\/chat\/completions",method="POST",status="200"\}/,
    );
    const doc = await get(srv.url, "/openapi.json");
    assert.ok(doc.json.paths["/v1/chat/completions"] && doc.json.paths["/v1/sessions/{id}"]);
    assert.equal((await get(srv.url, "/docs")).status, 200);
  } finally {
    await srv.shutdown();
  }
});

Deno.test(
  "sessions: 3 turns through session_id == one uninterrupted decode; later turns prefill only new tokens",
  opts,
  async () => {
    for (const precision of ["f32", "f16"] as const) {
      // The uninterrupted decode runs with the live cache precision of the server under test.
      const ref = await referenceTurns(PRUNING, TURNS, MAX, precision);
      const srv = await start({ kvPrecision: precision });
      try {
        const created = await post(srv.url, "/v1/sessions", { kv_policy: PRUNING });
        assert.equal(created.status, 201, created.text);
        const id = created.json.id;
        const results = await runTurns([srv.url], id, TURNS);
        assert.deepEqual(results.map((r) => r.choices[0].text), ref, `precision ${precision}`);
        assertIncremental(results);
        assert.ok(results.some((r) => r.kv.pruning_rounds > 0), "the policy pruned during the conversation");
        assert.ok(results[2].kv.kept_per_layer.every((n: number) => n < results[2].usage.total_tokens));
        const info = await get(srv.url, `/v1/sessions/${id}`);
        assert.equal(info.status, 200);
        assert.equal(info.json.turns, 3);
        assert.equal(info.json.tokens, results[2].usage.total_tokens);
        assert.equal(info.json.kv_policy.name, "lethe");
        assert.deepEqual(info.json.kv.kept_per_layer, results[2].kv.kept_per_layer);
        assert.equal(info.json.kv.stored_bytes, results[2].kv.stored_bytes);
        assert.ok(info.json.kv.stored_bytes > 0);
      } finally {
        await srv.shutdown();
      }
    }
  },
);

Deno.test(
  "sessions: chat with only new messages == chat resending the full history (prefix reuse)",
  opts,
  async () => {
    const srv = await start();
    try {
      const a = (await post(srv.url, "/v1/sessions", {})).json.id;
      const b = (await post(srv.url, "/v1/sessions", {})).json.id;
      const users = ["Once upon a time", "The cat was happy.", "One day"];
      const history: { role: string; content: string }[] = [];
      for (let i = 0; i < users.length; i++) {
        const onlyNew = await post(srv.url, "/v1/chat/completions", {
          model: "stories260K",
          messages: [{ role: "user", content: users[i] }],
          max_tokens: 20,
          temperature: 0,
          session_id: a,
        });
        history.push({ role: "user", content: users[i] });
        const full = await post(srv.url, "/v1/chat/completions", {
          model: "stories260K",
          messages: history,
          max_tokens: 20,
          temperature: 0,
          session_id: b,
        });
        assert.equal(onlyNew.status, 200, onlyNew.text);
        assert.equal(full.status, 200, full.text);
        assert.equal(full.json.choices[0].message.content, onlyNew.json.choices[0].message.content);
        assert.deepEqual(full.json.usage, onlyNew.json.usage);
        if (i > 0) assert.ok(full.json.usage.prompt_tokens_details.cached_tokens > 0);
        history.push({ role: "assistant", content: full.json.choices[0].message.content });
      }
      // An edited earlier message diverges from the stored history: the cache is rebuilt, and the result is what a
      // fresh conversation with those messages gives.
      const edited = [{ role: "user", content: "Once upon a time" }, { role: "user", content: "A big dog" }];
      const diverged = await post(srv.url, "/v1/chat/completions", {
        model: "stories260K",
        messages: edited,
        max_tokens: 20,
        temperature: 0,
        session_id: b,
      });
      const fresh = await post(srv.url, "/v1/chat/completions", {
        model: "stories260K",
        messages: edited,
        max_tokens: 20,
        temperature: 0,
      });
      assert.equal(diverged.json.kv.rebuilt, "history_diverged");
      assert.equal(diverged.json.usage.prompt_tokens_details.cached_tokens, 0);
      assert.equal(diverged.json.choices[0].message.content, fresh.json.choices[0].message.content);
    } finally {
      await srv.shutdown();
    }
  },
);

Deno.test("sessions survive a server restart (same Deno KV file)", opts, async () => {
  const dir = await Deno.makeTempDir();
  const store = `denokv:${dir}/sessions.sqlite`;
  try {
    const ref = await referenceTurns(PRUNING, TURNS, MAX);
    let srv = await start({ store });
    const id = (await post(srv.url, "/v1/sessions", { kv_policy: PRUNING })).json.id;
    const r1 = await runTurns([srv.url], id, TURNS.slice(0, 1));
    await srv.shutdown();
    srv = await start({ store });
    try {
      const r23 = await runTurns([srv.url], id, TURNS.slice(1));
      const all = [...r1, ...r23];
      assert.deepEqual(all.map((r) => r.choices[0].text), ref);
      assertIncremental(all);
    } finally {
      await srv.shutdown();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sessions move between two server instances sharing one redis-server", opts, async () => {
  const redis = await startRedis();
  const a = await start({ store: redis.url });
  const b = await start({ store: redis.url });
  try {
    const ref = await referenceTurns(PRUNING, TURNS, MAX);
    const id = (await post(a.url, "/v1/sessions", { kv_policy: PRUNING })).json.id;
    const results = await runTurns([a.url, b.url, a.url], id, TURNS);
    assert.deepEqual(results.map((r) => r.choices[0].text), ref);
    assertIncremental(results);
    const info = await get(b.url, `/v1/sessions/${id}`);
    assert.equal(info.json.turns, 3);
  } finally {
    await a.shutdown();
    await b.shutdown();
    await redis.stop();
  }
});
