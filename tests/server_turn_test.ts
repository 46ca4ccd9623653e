/**
 * A turn's life against real servers on loopback (src/server/turn.ts, lease.ts): the lease is renewed while
 * a turn outlives it and given up when it ends; a turn whose lease is lost (renewal refused, or the store
 * unreachable for the lease time) is cancelled and commits nothing; shutdown gives leases up; the state
 * machine refuses steps out of order. (Rebuilds for every reason: server_errors_test.ts.)
 */
import assert from "node:assert/strict";
import { MemorySessionStore } from "../src/session/stores/memory.ts";
import { DenoKvSessionStore } from "../src/session/stores/deno_kv.ts";
import { Turn } from "../src/server/turn.ts";
import { GREEDY } from "../src/engine/sampler.ts";
import { Metrics } from "../src/server/metrics.ts";
import { ChatRenderer } from "../src/server/chat_prompt.ts";
import { get, post, sharedModel, start } from "./support/server_harness.ts";
import { readSSE } from "../src/client/http.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };
const M = "stories260K";
const LEASE_MS = 250;

/** A memory store whose lease renewals can be refused or fail, as a store that expired or went away. */
class FlakyStore extends MemorySessionStore {
  mode: "ok" | "refuse" | "throw" = "ok";
  renewals = 0;
  override renewLease(id: string, token: string, ttlMs: number): Promise<boolean> {
    this.renewals++;
    if (this.mode === "refuse") return Promise.resolve(false);
    if (this.mode === "throw") return Promise.reject(new Error("store unreachable"));
    return super.renewLease(id, token, ttlMs);
  }
}

const turnBody = (id: string, prompt: string, max: number, stream = false) => ({
  model: M,
  prompt,
  max_tokens: max,
  temperature: 0,
  session_id: id,
  ...(stream ? { stream: true, stream_options: { include_usage: true } } : {}),
});

async function streamTurn(url: string, body: unknown) {
  const res = await fetch(url + "/v1/completions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(res.status, 200);
  return res;
}

Deno.test(
  "a turn longer than its lease keeps it by heartbeat, and its end gives it up at once",
  opts,
  async () => {
    const store = new FlakyStore();
    const srv = await start({ leaseMs: LEASE_MS }, { store });
    try {
      const id = (await post(srv.url, "/v1/sessions", {})).json.id;
      const first = await post(srv.url, "/v1/completions", turnBody(id, "Once upon a time", 8));
      assert.equal(first.status, 200, first.text);
      const t0 = performance.now();
      const res = await streamTurn(srv.url, turnBody(id, " Then", 1000, true));
      const reading = readSSE(res);
      // Well past the lease time the turn still holds the session.
      await new Promise((r) => setTimeout(r, 3 * LEASE_MS));
      const busy = await post(srv.url, "/v1/completions", turnBody(id, " Again", 4));
      const sse = await reading;
      assert.ok(performance.now() - t0 > 3 * LEASE_MS, "the long turn outlived three lease times");
      assert.equal(busy.status, 409, busy.text);
      assert.equal(busy.json.error.code, "session_busy");
      assert.equal(sse.error, null);
      assert.ok(sse.done);
      assert.ok(store.renewals >= 3, `renewed ${store.renewals} times`);
      // Committed, and the lease was given up, not left to expire: the next turn is taken at once.
      assert.equal((await get(srv.url, `/v1/sessions/${id}`)).json.turns, 2);
      const next = await post(srv.url, "/v1/completions", turnBody(id, " And", 4));
      assert.equal(next.status, 200, next.text);
      assert.equal(next.json.usage.prompt_tokens_details.cached_tokens, sse.usage!.total_tokens - 1);
    } finally {
      await srv.shutdown();
    }
  },
);

Deno.test(
  "a turn whose lease is lost is cancelled and commits nothing (renewal refused, or store unreachable for the lease time)",
  opts,
  async () => {
    const store = new FlakyStore();
    const srv = await start({ leaseMs: LEASE_MS, kvPrecision: "f32" }, { store });
    try {
      const id = (await post(srv.url, "/v1/sessions", {})).json.id;
      const first = await post(srv.url, "/v1/completions", turnBody(id, "Once upon a time", 8));
      assert.equal(first.status, 200, first.text);
      for (const mode of ["refuse", "throw"] as const) {
        store.mode = mode;
        const t0 = performance.now();
        const sse = await readSSE(await streamTurn(srv.url, turnBody(id, " Then", 1900, true)));
        const ms = performance.now() - t0;
        assert.ok(sse.done, "the stream still ends with [DONE]");
        assert.equal(sse.errorBody?.error.code, "session_lease_lost", JSON.stringify(sse.errorBody));
        assert.equal(sse.errorBody?.error.type, "conflict_error");
        assert.equal(sse.errorBody?.error.param, "session_id");
        assert.ok(sse.text.length > 0, "it had started");
        if (mode === "throw") assert.ok(ms >= LEASE_MS, `lost after the lease time, not before (${ms} ms)`);
        store.mode = "ok";
        const info = await get(srv.url, `/v1/sessions/${id}`);
        assert.equal(info.json.turns, 1, `${mode}: nothing committed`);
        assert.equal(info.json.tokens, first.json.usage.total_tokens);
      }
      // Not streamed: the same outcome as a 409.
      store.mode = "refuse";
      const r = await post(srv.url, "/v1/completions", turnBody(id, " Then", 1900));
      assert.equal(r.status, 409, r.text);
      assert.deepEqual(Object.keys(r.json.error).sort(), ["code", "message", "param", "type"]);
      assert.equal(r.json.error.code, "session_lease_lost");
      store.mode = "ok";
      // The session carries on from its last committed turn.
      const next = await post(srv.url, "/v1/completions", turnBody(id, " And", 4));
      assert.equal(next.status, 200, next.text);
      assert.equal(next.json.usage.prompt_tokens_details.cached_tokens, first.json.usage.total_tokens - 1);
      assert.equal(next.json.kv.rebuilt, null);
    } finally {
      await srv.shutdown();
    }
  },
);

Deno.test("shutdown gives up the leases this instance still holds", opts, async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/sessions.sqlite`;
  try {
    const srv = await start({ store: `denokv:${path}`, leaseMs: 60_000 });
    const id = (await post(srv.url, "/v1/sessions", {})).json.id;
    // A turn opened but never submitted (as one caught by the shutdown between its open and the scheduler).
    const turn = await srv.deps.sessions.openTurn("anonymous", id, {
      input: { kind: "text", text: "Once" },
      log: srv.deps.logger,
    });
    assert.equal(srv.deps.sessions.leasesHeld, 1);
    await srv.shutdown();
    const other = await DenoKvSessionStore.open(path);
    try {
      const token = await other.acquireLease(id, 1000);
      assert.ok(token, "free at once, not after the 60 s lease");
    } finally {
      await other.close();
    }
    await turn.abort(); // the turn itself is still closed cleanly
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const NO_REPLY = { text: "", content: "", reasoning: null };

Deno.test("Turn: steps out of order are refused; commit and abort end it once", async () => {
  const { model, backend } = await sharedModel();
  const turn = Turn.fresh({ model, backend, metrics: new Metrics() }, { name: "full", params: {} });
  const renderer = ChatRenderer.forModel(model);
  const seqOpts = { maxTokens: 4, stop: [], sampling: GREEDY, prefillChunk: 256 };
  assert.equal(turn.state, "open");
  assert.throws(
    () => turn.sequence({ newTokens: [], promptTokens: 0, cached: 0, startsInReasoning: false }, seqOpts),
    /sequence in state open/,
  );
  const plan = turn.plan({ kind: "text", text: "Once" }, model.tokenizer, renderer);
  assert.equal(turn.state, "planned");
  assert.deepEqual(plan, {
    newTokens: model.tokenizer.encode("Once", { addBos: true }),
    promptTokens: plan.newTokens.length,
    cached: 0,
    startsInReasoning: false,
  });
  assert.throws(
    () => turn.plan({ kind: "text", text: "x" }, model.tokenizer, renderer),
    /plan in state planned/,
  );
  const seq = turn.sequence(plan, seqOpts);
  assert.equal(turn.state, "running");
  assert.deepEqual(seq.tokens, plan.newTokens);
  assert.equal(await turn.commit(NO_REPLY), null, "nothing stored without a session");
  assert.equal(turn.state, "committed");
  await turn.abort();
  assert.equal(turn.state, "committed", "abort after commit is a no-op");
  await assert.rejects(() => turn.commit(NO_REPLY), /commit in state committed/);
});
