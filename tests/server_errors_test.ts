// deno-lint-ignore-file no-explicit-any
/**
 * Error handling of the HTTP layer against real servers: every error has the OpenAI shape and the right
 * status, and no stored session is damaged by a failed or rejected request.
 */
import assert from "node:assert/strict";
import { get, post, referenceTurns, start } from "./support/server_harness.ts";
import { decodeBundle, encodeBundle } from "../src/session/bundle.ts";
import { decodeSnapshot, encodeSnapshot } from "../src/session/codec.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };
const M = "stories260K";

function assertError(
  r: { status: number; json: any; text: string },
  status: number,
  type: string,
  param?: string | null,
  code?: string,
) {
  assert.equal(r.status, status, r.text);
  assert.deepEqual(Object.keys(r.json ?? {}), ["error"], r.text);
  assert.deepEqual(Object.keys(r.json.error).sort(), ["code", "message", "param", "type"]);
  assert.equal(r.json.error.type, type, r.text);
  if (param !== undefined) assert.equal(r.json.error.param, param, r.text);
  if (code !== undefined) assert.equal(r.json.error.code, code, r.text);
  assert.ok(!/\n\s+at /.test(r.text), "no stack trace");
}

Deno.test(
  "validation errors: malformed JSON, wrong types, n, unknown model, sizes, policy, session id",
  opts,
  async () => {
    const srv = await start({ maxBodyBytes: 4096, maxPromptTokens: 32 });
    const u = srv.url;
    try {
      assertError(
        await post(u, "/v1/chat/completions", '{"model": "x", "messages": ['),
        400,
        "invalid_request_error",
        null,
        "invalid_json",
      );
      assertError(
        await post(u, "/v1/chat/completions", {
          model: M,
          messages: [{ role: "user", content: "hi" }],
          max_tokens: "ten",
        }),
        400,
        "invalid_request_error",
        "max_tokens",
      );
      assertError(
        await post(u, "/v1/chat/completions", { model: M }),
        400,
        "invalid_request_error",
        "messages",
      );
      assertError(
        await post(u, "/v1/chat/completions", { model: M, messages: [{ role: "robot", content: "hi" }] }),
        400,
        "invalid_request_error",
        "messages.0.role",
      );
      assertError(
        await post(u, "/v1/completions", { model: M, prompt: "hi", temperature: 9 }),
        400,
        "invalid_request_error",
        "temperature",
      );
      assertError(
        await post(u, "/v1/completions", { model: M, prompt: "hi", n: 2 }),
        400,
        "invalid_request_error",
        "n",
      );
      assertError(
        await post(u, "/v1/completions", { model: "gpt-4", prompt: "hi" }),
        404,
        "not_found_error",
        "model",
        "model_not_found",
      );
      assertError(
        await post(u, "/v1/completions", { model: M, prompt: "x".repeat(10_000) }),
        413,
        "invalid_request_error",
        null,
        "body_too_large",
      );
      assertError(
        await post(u, "/v1/completions", {
          model: M,
          prompt: "Once upon a time there was a dog. ".repeat(8),
        }),
        400,
        "invalid_request_error",
        "prompt",
        "context_length_exceeded",
      );
      assertError(
        await post(u, "/v1/completions", { model: M, prompt: "Once", max_tokens: 5000 }),
        400,
        "invalid_request_error",
        "max_tokens",
        "context_length_exceeded",
      );
      assertError(
        await post(u, "/v1/completions", {
          model: M,
          prompt: "Once",
          kv_policy: { name: "lethe", tau: "big" },
        }),
        400,
        "invalid_request_error",
        "kv_policy",
        "invalid_kv_policy",
      );
      assertError(
        await post(u, "/v1/sessions", { kv_policy: { name: "nope" } }),
        400,
        "invalid_request_error",
        "kv_policy",
      );
      assertError(
        await post(u, "/v1/completions", { model: M, prompt: "Once", session_id: "../../etc" }),
        400,
        "invalid_request_error",
        "session_id",
        "invalid_session_id",
      );
      assertError(await get(u, "/v1/sessions/not-an-id"), 400, "invalid_request_error", "session_id");
      assertError(
        await get(u, "/v1/sessions/sess_AAAAAAAAAAAAAAAAAAAAAAAA"),
        404,
        "not_found_error",
        "session_id",
        "session_not_found",
      );
      assertError(await get(u, "/v1/nothing"), 404, "not_found_error");
      // the request id is echoed
      const r = await fetch(u + "/health", { headers: { "x-request-id": "req-123" } });
      await r.body?.cancel();
      assert.equal(r.headers.get("x-request-id"), "req-123");
    } finally {
      await srv.shutdown();
    }
  },
);

Deno.test(
  "API keys: missing/wrong key 401; another key's session is 404 and stays intact",
  opts,
  async () => {
    const k1 = "key-one-123456", k2 = "key-two-654321";
    const srv = await start({ apiKeys: [k1, k2] });
    const u = srv.url;
    const h1 = { authorization: `Bearer ${k1}` }, h2 = { authorization: `Bearer ${k2}` };
    try {
      assertError(await get(u, "/v1/models"), 401, "authentication_error", null, "invalid_api_key");
      assertError(
        await get(u, "/v1/models", { authorization: "Bearer wrong-key-000" }),
        401,
        "authentication_error",
      );
      assert.equal((await get(u, "/health")).status, 200);
      const id = (await post(u, "/v1/sessions", {}, h1)).json.id;
      const t1 = await post(u, "/v1/completions", {
        model: M,
        prompt: "Once",
        max_tokens: 8,
        temperature: 0,
        session_id: id,
      }, h1);
      assert.equal(t1.status, 200, t1.text);
      assertError(await get(u, `/v1/sessions/${id}`, h2), 404, "not_found_error", "session_id");
      assertError(
        await post(u, "/v1/completions", { model: M, prompt: "Then", max_tokens: 8, session_id: id }, h2),
        404,
        "not_found_error",
        "session_id",
      );
      assertError(await get(u, `/v1/sessions/${id}`, h2, "DELETE"), 404, "not_found_error");
      const info = await get(u, `/v1/sessions/${id}`, h1);
      assert.equal(info.json.turns, 1);
      assert.equal(info.json.tokens, t1.json.usage.total_tokens);
      const del = await get(u, `/v1/sessions/${id}`, h1, "DELETE");
      assert.equal(del.status, 200);
      assertError(await get(u, `/v1/sessions/${id}`, h1), 404, "not_found_error");
    } finally {
      await srv.shutdown();
    }
  },
);

/** Ways a stored blob goes bad, each with the reason the turn reports for rebuilding its cache. */
const DAMAGES: { reason: string; damage: (blob: Uint8Array) => Uint8Array }[] = [
  {
    // a flipped payload byte (a bad disk, a partial copy…)
    reason: "checksum",
    damage: (b) => {
      const blob = b.slice();
      blob[blob.length - 10] ^= 0xff;
      return blob;
    },
  },
  {
    // a snapshot made by another model (a store shared across models…)
    reason: "fingerprint_mismatch",
    damage: (b) => {
      const bundle = decodeBundle(b);
      const snap = decodeSnapshot(bundle.snapshot);
      return encodeBundle(
        bundle.history!,
        encodeSnapshot({ ...snap, fingerprint: "0".repeat(64) }, { kvPrecision: "f32" }),
      );
    },
  },
];

Deno.test(
  "corrupted stored blob: the cache is rebuilt from the token history, same tokens",
  opts,
  async () => {
    const policy = { name: "full" };
    const turns = ["Once upon a time", "Then the dog said", "The end"];
    const ref = await referenceTurns(policy, turns, 30, "f32");
    for (const { reason, damage } of DAMAGES) {
      const srv = await start({ kvPrecision: "f32" });
      try {
        const id = (await post(srv.url, "/v1/sessions", { kv_policy: policy })).json.id;
        const texts: string[] = [];
        for (let i = 0; i < turns.length; i++) {
          if (i === 2) {
            const store = srv.deps.sessions.store;
            const rec = (await store.get(id))!;
            const blob = damage(rec.blob);
            assert.ok(await store.put({ ...rec, blob, version: rec.version + 1 }, rec.version));
          }
          const r = await post(srv.url, "/v1/completions", {
            model: M,
            prompt: turns[i],
            max_tokens: 30,
            temperature: 0,
            session_id: id,
          });
          assert.equal(r.status, 200, r.text);
          texts.push(r.json.choices[0].text);
          if (i === 2) {
            assert.equal(r.json.kv.rebuilt, reason);
            assert.equal(r.json.usage.prompt_tokens_details.cached_tokens, 0);
          }
        }
        assert.deepEqual(texts, ref, reason);
        // the next turn resumes from the rewritten (healthy) blob again
        const after = await post(srv.url, "/v1/completions", {
          model: M,
          prompt: "And",
          max_tokens: 4,
          temperature: 0,
          session_id: id,
        });
        assert.equal(after.json.kv.rebuilt, null);
        assert.ok(after.json.usage.prompt_tokens_details.cached_tokens > 0);
        const metrics = await get(srv.url, "/metrics");
        assert.match(
          metrics.text,
          new RegExp(`lethe_session_cache_rebuilds_total\\{reason="${reason}"\\} 1`),
        );
      } finally {
        await srv.shutdown();
      }
    }
  },
);

Deno.test(
  "concurrent turns on one session: 409 session_busy; a disconnected stream commits nothing",
  opts,
  async () => {
    const srv = await start();
    const u = srv.url;
    try {
      const id = (await post(u, "/v1/sessions", {})).json.id;
      const first = await post(u, "/v1/completions", {
        model: M,
        prompt: "Once upon a time",
        max_tokens: 10,
        temperature: 0,
        session_id: id,
      });
      assert.equal(first.status, 200);
      // a long streaming turn holds the session's lease
      const ac = new AbortController();
      const res = await fetch(u + "/v1/completions", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: M,
          prompt: "Then",
          max_tokens: 1500,
          temperature: 0,
          stream: true,
          session_id: id,
        }),
        signal: ac.signal,
      });
      assert.equal(res.status, 200);
      const reader = res.body!.getReader();
      await reader.read(); // generation has started
      const second = await post(u, "/v1/completions", {
        model: M,
        prompt: "Again",
        max_tokens: 4,
        session_id: id,
      });
      assertError(second, 409, "conflict_error", "session_id", "session_busy");
      assert.match(second.json.error.message, /another turn is in progress/);
      assertError(
        await get(u, `/v1/sessions/${id}`, {}, "DELETE"),
        409,
        "conflict_error",
        "session_id",
        "session_busy",
      );
      // the client goes away mid-stream: the turn is cancelled and not committed, the lease is released
      ac.abort();
      await reader.cancel().catch(() => {});
      let info;
      for (let i = 0; i < 100; i++) {
        info = await get(u, `/v1/sessions/${id}`);
        const again = await post(u, "/v1/completions", {
          model: M,
          prompt: " And",
          max_tokens: 4,
          temperature: 0,
          session_id: id,
        });
        if (again.status === 200) {
          assert.equal(info.json.turns, 1, "the cancelled turn left the last committed state");
          assert.equal(
            again.json.usage.prompt_tokens_details.cached_tokens,
            first.json.usage.total_tokens - 1,
          );
          break;
        }
        assert.equal(again.status, 409);
        await new Promise((r) => setTimeout(r, 20));
        if (i === 99) assert.fail("the lease was never released");
      }
    } finally {
      await srv.shutdown();
    }
  },
);

Deno.test("limits: queue full and rate limit give 429 with Retry-After", opts, async () => {
  const srv = await start({ maxBatch: 1, queueSize: 1 });
  try {
    const body = { model: M, prompt: "Once upon a time", max_tokens: 400, temperature: 0 };
    const rs = await Promise.all([0, 1, 2, 3].map(() => post(srv.url, "/v1/completions", body)));
    const statuses = rs.map((r) => r.status).sort();
    assert.deepEqual(statuses, [200, 200, 429, 429], rs.map((r) => r.text.slice(0, 100)).join("\n"));
    const full = rs.find((r) => r.status === 429)!;
    assertError(full, 429, "rate_limit_error", null, "queue_full");
    assert.ok(Number(full.headers.get("retry-after")) >= 1);
  } finally {
    await srv.shutdown();
  }
  const rl = await start({ rateLimitRps: 0.5, rateLimitBurst: 2 });
  try {
    assert.equal((await get(rl.url, "/v1/models")).status, 200);
    assert.equal((await get(rl.url, "/v1/models")).status, 200);
    const r = await get(rl.url, "/v1/models");
    assertError(r, 429, "rate_limit_error", null, "rate_limit_exceeded");
    assert.ok(Number(r.headers.get("retry-after")) >= 1);
  } finally {
    await rl.shutdown();
  }
});

Deno.test(
  "graceful shutdown: ready goes 503, new work is refused, the running turn finishes and commits",
  opts,
  async () => {
    const srv = await start({ shutdownDeadlineMs: 10_000 });
    const u = srv.url;
    const id = (await post(u, "/v1/sessions", {})).json.id;
    const running = post(u, "/v1/completions", {
      model: M,
      prompt: "Once upon a time",
      max_tokens: 600,
      temperature: 0,
      session_id: id,
    });
    await new Promise((r) => setTimeout(r, 30));
    const stopping = srv.shutdown("test");
    assertError(await get(u, "/ready"), 503, "service_unavailable", null, "shutting_down");
    assertError(await post(u, "/v1/completions", { model: M, prompt: "x" }), 503, "service_unavailable");
    const r = await running;
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.usage.completion_tokens, 600);
    await stopping;
  },
);
