// deno-lint-ignore-file no-explicit-any
/**
 * A session store that fails, against a real server on loopback (Deno KV file behind a fault-injecting
 * wrapper, tests/support/faulty_store.ts): every request that needs the store gets a clear 503 with
 * Retry-After (`store_unavailable`, or `store_full` for a full disk) — before a stream starts as a status,
 * after it as the stream's error event — no turn is half-written (a commit that dies between its chunks and
 * its head switch leaves the previous turn readable), and once the store is back the session resumes from
 * its last committed turn with exactly the tokens an uninterrupted conversation has.
 * (A real full disk with a server process: fault_disk_full_test.ts.)
 */
import assert from "node:assert/strict";
import { get, post, referenceTurns, start } from "./support/server_harness.ts";
import { FaultyStore } from "./support/faulty_store.ts";
import { DenoKvSessionStore } from "../src/session/stores/deno_kv.ts";
import { SessionCorruptError } from "../src/session/store.ts";
import { storeFailure } from "../src/server/errors.ts";
import { readSSE } from "../src/client/http.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };
const POLICY = { name: "lethe", mode: "fixed", budget: 40, slack: 8 };
const TURNS = ["Once upon a time", "Then the dog said", "The end of the day came and"];
const MAX = 24;

function assert503(r: { status: number; headers: Headers; json: any; text: string }, code: string) {
  assert.equal(r.status, 503, r.text);
  assert.equal(r.json.error.type, "service_unavailable");
  assert.equal(r.json.error.code, code);
  assert.ok(Number(r.headers.get("retry-after")) >= 1, "Retry-After");
  assert.doesNotMatch(
    r.text,
    /ECONNREFUSED|6379|sqlite|injected/,
    "the store's own message stays in the log",
  );
}

Deno.test(
  "store failures: clear 503s with Retry-After, no half-written turn, resumes when healed",
  opts,
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "lethe-faulty-" });
    const kv = await DenoKvSessionStore.open(`${dir}/s.sqlite`);
    const store = new FaultyStore(kv);
    const srv = await start({}, { store });
    const u = srv.url;
    const ref = await referenceTurns(POLICY, TURNS, MAX);
    const body = (i: number, id: string, extra = {}) => ({
      model: "stories260K",
      prompt: TURNS[i],
      max_tokens: MAX,
      temperature: 0,
      session_id: id,
      ...extra,
    });
    try {
      const id = (await post(u, "/v1/sessions", { kv_policy: POLICY })).json.id;
      let last: any;
      for (let i = 0; i < 2; i++) {
        last = await post(u, "/v1/completions", body(i, id));
        assert.equal(last.status, 200, last.text);
        assert.equal(last.json.choices[0].text, ref[i]);
      }
      const atTurn2 = async () => {
        const info = await get(u, `/v1/sessions/${id}`);
        assert.equal(info.status, 200, info.text);
        assert.equal(info.json.turns, 2);
        assert.equal(info.json.tokens, last.json.usage.total_tokens);
      };

      // Unreachable: reads, new sessions, deletes, turns (streamed or not) all answer 503 before any work.
      store.fail(["get", "put", "delete", "acquireLease"], "unreachable");
      assert503(await get(u, `/v1/sessions/${id}`), "store_unavailable");
      assert503(await post(u, "/v1/sessions", {}), "store_unavailable");
      assert503(await get(u, `/v1/sessions/${id}`, {}, "DELETE"), "store_unavailable");
      assert503(await post(u, "/v1/completions", body(2, id)), "store_unavailable");
      assert503(await post(u, "/v1/completions", body(2, id, { stream: true })), "store_unavailable");
      // Only the lease fails: the same.
      store.heal();
      store.fail(["acquireLease"], "unreachable");
      assert503(await post(u, "/v1/completions", body(2, id)), "store_unavailable");
      store.heal();
      await atTurn2();

      // Full at the commit: the turn ran, its commit is refused — 503 store_full, or the stream's error event.
      store.fail(["put"], "full");
      assert503(await post(u, "/v1/completions", body(2, id)), "store_full");
      const res = await fetch(u + "/v1/completions", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body(2, id, { stream: true })),
      });
      assert.equal(res.status, 200);
      const sse = await readSSE(res);
      assert.equal(sse.text, ref[2], "it streamed the whole turn");
      assert.equal(sse.errorBody?.error.type, "service_unavailable", sse.raw);
      assert.equal(sse.errorBody?.error.code, "store_full");
      assert.ok(sse.done);
      store.heal();
      await atTurn2();

      // A commit that dies after writing its chunks, before its head switch: nothing of it is visible.
      kv.hooks.beforeHeadSwitch = () => {
        kv.hooks.beforeHeadSwitch = undefined;
        throw new Error("the process died here (injected)");
      };
      assert503(await post(u, "/v1/completions", body(2, id)), "store_unavailable");
      await atTurn2();
      assert.equal((await kv.stats()).markers, 1, "its chunks wait for the sweep");
      assert.ok((await kv.sweep(0)) > 0, "and the sweep collects them");
      assert.equal((await kv.stats()).markers, 0);

      // No lease was left behind by any failed turn: healed, the next turn runs at once, from turn 2's cache.
      assert.equal(srv.deps.sessions.leasesHeld, 0);
      const next = await post(u, "/v1/completions", body(2, id));
      assert.equal(next.status, 200, next.text);
      assert.equal(next.json.kv.rebuilt, null);
      assert.equal(next.json.usage.prompt_tokens_details.cached_tokens, last.json.usage.total_tokens - 1);
      assert.equal(next.json.choices[0].text, ref[2], "the same text as an uninterrupted conversation");
      assert.equal((await get(u, `/v1/sessions/${id}`)).json.turns, 3);

      const m = (await get(u, "/metrics")).text;
      for (const op of ["get", "put", "lease"]) {
        assert.match(m, new RegExp(`lethe_store_errors_total\\{op="${op}"\\} [1-9]`), op);
      }
      assert.ok(store.injected.put >= 3 && store.injected.get >= 2, JSON.stringify(store.injected));
    } finally {
      await srv.shutdown();
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test("storeFailure: a damaged record is a 500 session_corrupted, anything else a 503", () => {
  const corrupt = storeFailure(new SessionCorruptError("session x: stored blob is corrupt"));
  assert.deepEqual([corrupt.kind, corrupt.code], ["internal", "session_corrupted"]);
  for (
    const [e, code, retry] of [
      [new TypeError("database or disk is full"), "store_full", 30],
      [new Error("ENOSPC: no space left on device"), "store_full", 30],
      [new Error("OOM command not allowed when used memory > 'maxmemory'."), "store_full", 30],
      [new Error("Stream isn't writeable and enableOfflineQueue options is false"), "store_unavailable", 1],
      [new Error("Command timed out"), "store_unavailable", 1],
    ] as const
  ) {
    const s = storeFailure(e);
    assert.deepEqual([s.kind, s.code, s.retryAfterSec], ["unavailable", code, retry], e.message);
    assert.doesNotMatch(s.message, /ENOSPC|maxmemory|enableOfflineQueue/);
  }
});
