/**
 * A crash mid-turn, for real: the server as a child process on loopback (ts backend, Deno KV file), a session
 * with three committed turns, `kill -9` during the fourth, a restart on the same store. The dead process's
 * lease is not renewed, so the session takes a new turn within the lease time (default `--lease-ms` 5000)
 * of the crash — not after the old request timeout + 30 s — and that turn resumes from exactly the tokens
 * of the last committed turn.
 */
import assert from "node:assert/strict";
import { Client } from "../src/client/http.ts";
import { startServerProcess } from "../src/client/server_process.ts";
import { DenoKvSessionStore } from "../src/session/stores/deno_kv.ts";
import { SERVER_OPTIONS } from "../src/server/options.ts";
import { referenceTurns, startRedis } from "./support/server_harness.ts";

const LEASE_MS = SERVER_OPTIONS.leaseMs.default();
const PRUNING = { name: "lethe", mode: "fixed", budget: 40, slack: 8 };
const TURNS = ["Once upon a time", "Then the dog said", "The end of the day came and", "The next morning"];
const MAX = 40;
const POLL_MS = 100;

Deno.test({
  name:
    "kill -9 mid-turn: after a restart the session takes a turn within the lease time, from its last commit",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "lethe-crash-" });
    const path = `${dir}/sessions.sqlite`;
    const args = ["--store", `denokv:${path}`, "--backend", "ts", "--log-level", "warn"];
    const ref = await referenceTurns(PRUNING, TURNS, MAX);
    const first = await startServerProcess({ args, logPath: `${dir}/first.log` });
    let second: Awaited<ReturnType<typeof startServerProcess>> | null = null;
    try {
      const a = new Client(first.url);
      const model = await a.modelId();
      const turn = (i: number) => ({ model, prompt: TURNS[i], max_tokens: MAX, temperature: 0 });
      const id = (await a.post("/v1/sessions", { kv_policy: PRUNING })).json!.id as string;
      const committed = [];
      for (let i = 0; i < 3; i++) {
        const r = await a.post("/v1/completions", { ...turn(i), session_id: id });
        assert.equal(r.status, 200, r.text);
        assert.equal(r.json!.choices[0].text, ref[i], `turn ${i + 1}`);
        committed.push(r.json!);
      }
      const last = committed[2].usage;

      // A long fourth turn: once it streams, the server dies without any shutdown.
      const res = await fetch(first.url + "/v1/completions", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ ...turn(3), max_tokens: 1500, session_id: id, stream: true }),
      });
      assert.equal(res.status, 200);
      const reader = res.body!.getReader();
      assert.match(new TextDecoder().decode((await reader.read()).value), /^data: /);
      await first.kill();
      const killedAt = performance.now();
      await reader.cancel().catch(() => {});

      // The dead holder's lease is still there: the bound below is the lease's, not a free session's.
      const store = await DenoKvSessionStore.open(path);
      try {
        assert.equal(await store.acquireLease(id, 1000), null, "the crashed turn's lease is held");
      } finally {
        await store.close();
      }

      second = await startServerProcess({ args, logPath: `${dir}/second.log` });
      const readyAt = performance.now();
      const b = new Client(second.url);
      const info = await b.get(`/v1/sessions/${id}`);
      assert.equal(info.json!.turns, 3, "the fourth turn was not committed");
      assert.equal(info.json!.tokens, last.total_tokens);

      let busy = 0;
      let sentAt = 0;
      let r;
      for (;;) {
        sentAt = performance.now();
        r = await b.post("/v1/completions", { ...turn(3), session_id: id });
        if (r.status === 200) break;
        assert.equal(r.status, 409, r.text);
        assert.equal(r.json!.error.code, "session_busy");
        busy++;
        assert.ok(sentAt - killedAt < LEASE_MS + 5000, "the session never became free");
        await new Promise((res) => setTimeout(res, POLL_MS));
      }
      // Free within the lease time of the crash (or at once, if the restart took longer than that).
      const bound = Math.max(killedAt + LEASE_MS, readyAt) + POLL_MS + 400;
      assert.ok(sentAt <= bound, `taken ${Math.round(sentAt - killedAt)} ms after the crash (${busy} × 409)`);
      if (readyAt < killedAt + LEASE_MS - 1000) assert.ok(busy > 0, "busy until the lease ran out");
      // Exactly the tokens of the last committed turn, and the same text as one uninterrupted decode.
      assert.equal(r.json!.usage.prompt_tokens_details.cached_tokens, last.total_tokens - 1);
      assert.equal(r.json!.kv.rebuilt, null);
      assert.equal(r.json!.choices[0].text, ref[3]);
      assert.equal((await b.get(`/v1/sessions/${id}`)).json!.turns, 4);
    } finally {
      await first.kill();
      await second?.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** Start a streamed turn and resolve once it has sent its first generated text (so it is mid-generation). */
async function midTurn(url: string, body: Record<string, unknown>): Promise<() => Promise<void>> {
  const res = await fetch(url + "/v1/completions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ ...body, stream: true }),
  });
  assert.equal(res.status, 200);
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let seen = "";
  while (!/"text":"[^"]/.test(seen)) {
    const r = await reader.read();
    assert.ok(!r.done, "the turn ended before the crash");
    seen += dec.decode(r.value, { stream: true });
  }
  return () => reader.cancel().catch(() => {});
}

/**
 * N sessions with two committed turns each run their third turn at once on instance A; A is killed with
 * SIGKILL mid-generation. Instance B — A restarted on the same Deno KV file, or a second instance already
 * running on the same Redis — must find every session at its last committed turn and take a new turn on
 * each within the lease time of the crash, resuming from exactly the committed tokens.
 */
async function crashUnderLoad(kind: "denokv" | "redis") {
  const N = 8;
  const dir = await Deno.makeTempDir({ prefix: "lethe-crash-n-" });
  const redis = kind === "redis" ? await startRedis() : null;
  const store = redis ? redis.url : `denokv:${dir}/sessions.sqlite`;
  const args = ["--store", store, "--backend", "ts", "--log-level", "warn", "--max-batch", String(N)];
  const ref = await referenceTurns(PRUNING, TURNS.slice(0, 3), MAX);
  const a = await startServerProcess({ args, logPath: `${dir}/a.log` });
  let b: Awaited<ReturnType<typeof startServerProcess>> | null = null;
  try {
    if (redis) b = await startServerProcess({ args, logPath: `${dir}/b.log` });
    const ca = new Client(a.url);
    const model = await ca.modelId();
    const turn = (i: number, id: string, max = MAX) => ({
      model,
      prompt: TURNS[i],
      max_tokens: max,
      temperature: 0,
      session_id: id,
    });
    const ids: string[] = [];
    for (let s = 0; s < N; s++) ids.push((await ca.post("/v1/sessions", { kv_policy: PRUNING })).json!.id);
    const committed = new Map<string, number>();
    await Promise.all(ids.map(async (id) => {
      for (let i = 0; i < 2; i++) {
        const r = await ca.post("/v1/completions", turn(i, id));
        assert.equal(r.status, 200, r.text);
        assert.equal(r.json!.choices[0].text, ref[i]);
        committed.set(id, r.json!.usage.total_tokens);
      }
    }));
    // Every session mid-generation of its third turn, then SIGKILL.
    const cancels = await Promise.all(ids.map((id) => midTurn(a.url, turn(2, id, 1500))));
    await a.kill();
    const killedAt = performance.now();
    await Promise.all(cancels.map((c) => c()));

    if (!b) b = await startServerProcess({ args, logPath: `${dir}/b.log` });
    const readyAt = performance.now();
    const cb = new Client(b.url);
    let lost = 0, busy = 0, usableMs = 0;
    await Promise.all(ids.map(async (id) => {
      const info = await cb.get(`/v1/sessions/${id}`);
      if (info.status !== 200 || info.json!.turns !== 2 || info.json!.tokens !== committed.get(id)) lost++;
      for (;;) {
        const sentAt = performance.now();
        const r = await cb.post("/v1/completions", turn(2, id));
        if (r.status === 200) {
          assert.equal(r.json!.kv.rebuilt, null);
          assert.equal(r.json!.usage.prompt_tokens_details.cached_tokens, committed.get(id)! - 1);
          assert.equal(r.json!.choices[0].text, ref[2], "as if never interrupted");
          const bound = Math.max(killedAt + LEASE_MS, readyAt) + POLL_MS + 400;
          assert.ok(sentAt <= bound, `${id} taken ${Math.round(sentAt - killedAt)} ms after the crash`);
          usableMs = Math.max(usableMs, sentAt - killedAt);
          return;
        }
        assert.equal(r.status, 409, r.text);
        assert.equal(r.json!.error.code, "session_busy");
        busy++;
        assert.ok(sentAt - killedAt < LEASE_MS + 5000, "the session never became free");
        await new Promise((res) => setTimeout(res, POLL_MS));
      }
    }));
    assert.equal(lost, 0, "sessions lost");
    // B was up before the leases ran out (always on Redis): it was refused until then.
    if (readyAt < killedAt + LEASE_MS - 1000) assert.ok(busy > 0);
    console.log(
      `fault kill -9 (${kind}): ${N} sessions mid-turn, checked ${N}, lost ${lost}, ` +
        `every one taking turns again ${Math.round(usableMs)} ms after the crash (lease ${LEASE_MS} ms; ` +
        `instance B ready after ${Math.round(readyAt - killedAt)} ms)`,
    );
  } finally {
    await a.kill();
    await b?.stop();
    await redis?.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

for (const kind of ["denokv", "redis"] as const) {
  Deno.test({
    name: `kill -9 under ${kind === "redis" ? "Redis, a second instance" : "Deno KV, a restart"}: ` +
      `8 concurrent sessions are at their last commit and resume within the lease time`,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: () => crashUnderLoad(kind),
  });
}
