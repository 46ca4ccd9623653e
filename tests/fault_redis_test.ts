/**
 * Real server processes on one real redis-server (loopback):
 * - two instances racing for one session's turns never run them at once: every attempt either commits or
 *   gets 409 session_busy, the session counts exactly the committed turns, and the instances' logged lease
 *   intervals (taken → given up) never overlap;
 * - redis-server killed (SIGKILL) and restarted under steady multi-turn load on two instances: every request
 *   succeeds or fails cleanly (503 store_unavailable with Retry-After, 409, or that as a stream's error event),
 *   nothing is corrupted (each session is at a turn it committed and resumes from exactly its stored tokens),
 *   and the service recovers by itself once Redis is back.
 */
import assert from "node:assert/strict";
import { Client } from "../src/client/http.ts";
import { startServerProcess } from "../src/client/server_process.ts";
import { startRedis } from "./support/redis.ts";
import { Rng } from "./fuzz/gen.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };
const POLICY = { name: "lethe", mode: "fixed", budget: 40, slack: 8 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** [taken, given up] times of `session`'s leases in a server's JSON log. */
async function leaseIntervals(logPath: string, session: string): Promise<[number, number][]> {
  const out: [number, number][] = [];
  let open: number | null = null;
  for (const line of (await Deno.readTextFile(logPath)).split("\n")) {
    if (!line.startsWith("{")) continue;
    const e = JSON.parse(line);
    if (e.session !== session) continue;
    const t = Date.parse(e.time);
    if (e.msg === "session lease taken") {
      assert.equal(open, null, "taken twice without giving up");
      open = t;
    } else if (e.msg === "session lease given up") {
      assert.notEqual(open, null);
      out.push([open!, t]);
      open = null;
    }
  }
  assert.equal(open, null, "a lease never given up");
  return out;
}

Deno.test(
  "two server processes racing on one Redis never run the same session's turn at once",
  opts,
  async () => {
    const redis = await startRedis();
    const dir = await Deno.makeTempDir({ prefix: "lethe-race-" });
    const args = ["--store", redis.url, "--backend", "ts", "--log-level", "debug"];
    const a = await startServerProcess({ args, logPath: `${dir}/a.log` });
    const b = await startServerProcess({ args, logPath: `${dir}/b.log` });
    try {
      const ca = new Client(a.url), cb = new Client(b.url);
      const model = await ca.modelId();
      const id = (await ca.post("/v1/sessions", { kv_policy: POLICY })).json!.id as string;
      const body = (prompt: string) => ({ model, prompt, max_tokens: 24, temperature: 0, session_id: id });
      assert.equal((await ca.post("/v1/completions", body("Once upon a time"))).status, 200);
      const statuses: Record<string, number> = {};
      const okBy = { a: 0, b: 0 };
      let maxTokens = 0;
      const random = new Rng(7);
      // Four clients, two per instance, each until it committed 3 turns (retrying at random short intervals).
      await Promise.all([0, 1, 2, 3].map(async (k) => {
        const [c, name] = k % 2 ? [cb, "b" as const] : [ca, "a" as const];
        for (let i = 0, mine = 0; mine < 3; i++) {
          assert.ok(i < 300, "starved");
          await sleep(random.next() * 20);
          const r = await c.post("/v1/completions", body(` And then ${k}.${i}`));
          const key = r.status === 200 ? "200" : `${r.status} ${r.json?.error?.code}`;
          statuses[key] = (statuses[key] ?? 0) + 1;
          if (r.status === 200) {
            mine++;
            okBy[name]++;
            maxTokens = Math.max(maxTokens, r.json!.usage.total_tokens);
          }
        }
      }));
      const ok = okBy.a + okBy.b;
      assert.deepEqual(Object.keys(statuses).sort(), ["200", "409 session_busy"], JSON.stringify(statuses));
      assert.deepEqual(okBy, { a: 6, b: 6 });
      const info = await cb.get(`/v1/sessions/${id}`);
      assert.equal(info.json!.turns, 1 + ok, "every 200 committed once, nothing else did");
      assert.equal(info.json!.tokens, maxTokens);
      await a.stop();
      await b.stop();
      const intervals = [...await leaseIntervals(a.logPath, id), ...await leaseIntervals(b.logPath, id)]
        .sort((x, y) => x[0] - y[0]);
      assert.equal(intervals.length, 1 + ok, "one lease per committed turn");
      for (let i = 1; i < intervals.length; i++) {
        assert.ok(intervals[i][0] >= intervals[i - 1][1], `turns ${i - 1} and ${i} overlap`);
      }
      console.log(
        `fault race: 4 clients on one session through 2 instances: ${ok} committed ` +
          `(a ${okBy.a}, b ${okBy.b}), ${statuses["409 session_busy"]} × 409 session_busy, ` +
          `${intervals.length} lease intervals, 0 overlapping`,
      );
    } finally {
      await a.stop();
      await b.stop();
      await redis.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test(
  "redis-server killed and restarted under load: clean failures, nothing corrupted, recovers by itself",
  opts,
  async () => {
    const redis = await startRedis({ persist: true });
    const dir = await Deno.makeTempDir({ prefix: "lethe-redis-restart-" });
    const args = ["--store", redis.url, "--backend", "ts", "--log-level", "warn"];
    const a = await startServerProcess({ args, logPath: `${dir}/a.log` });
    const b = await startServerProcess({ args, logPath: `${dir}/b.log` });
    const N = 6, LOAD_MS = 9000, DOWN_AT = 3000, DOWN_MS = 1500;
    try {
      const clients = [new Client(a.url), new Client(b.url)];
      const model = await clients[0].modelId();
      const body = (id: string, prompt: string, stream = false) => ({
        model,
        prompt,
        max_tokens: 16,
        temperature: 0,
        session_id: id,
        ...(stream ? { stream: true } : {}),
      });
      const sessions = await Promise.all(Array.from({ length: N }, async () => {
        const id = (await clients[0].post("/v1/sessions", { kv_policy: POLICY })).json!.id as string;
        assert.equal((await clients[0].post("/v1/completions", body(id, "Once upon a time"))).status, 200);
        return { id, ok: 1, ambiguous: 0 };
      }));
      const outcomes: Record<string, number> = {};
      const count = (k: string) => (outcomes[k] = (outcomes[k] ?? 0) + 1);
      const t0 = performance.now();
      let restartedAt = Infinity;
      let recoveredAt = 0;
      const outage = (async () => {
        await sleep(DOWN_AT);
        await redis.kill();
        await sleep(DOWN_MS);
        await redis.restart();
        restartedAt = performance.now();
      })();
      await Promise.all(sessions.map(async (s, k) => {
        for (let i = 0; performance.now() - t0 < LOAD_MS; i++) {
          const stream = i % 2 === 1;
          const sentAt = performance.now();
          const r = await clients[(k + i) % 2].post("/v1/completions", body(s.id, ` Then ${i}.`, stream), {
            stream,
          });
          const err = r.status === 200 ? r.sse?.errorBody?.error : r.json?.error;
          if (r.status === 200 && !err) {
            assert.ok(!stream || r.sse!.done);
            s.ok++;
            count("200");
            if (sentAt > restartedAt && !recoveredAt) recoveredAt = performance.now();
            continue;
          }
          const key = `${r.status}${r.status === 200 ? " stream error" : ""} ${err?.code}`;
          count(key);
          if (err?.code === "store_unavailable") {
            assert.equal(err.type, "service_unavailable");
            if (r.status === 503) assert.equal(r.headers.get("retry-after"), "1");
            s.ambiguous++; // the commit may have reached Redis before the connection dropped
            await sleep(1000);
          } else if (r.status === 409 && err?.code === "session_busy") {
            await sleep(200); // a lease whose release was lost in the outage runs out
          } else if (err?.code === "session_lease_lost") {
            await sleep(200);
          } else {
            assert.fail(`not a clean failure: ${r.status} ${r.text.slice(0, 300)}`);
          }
        }
      }));
      await outage;
      const failed = Object.entries(outcomes).filter(([k]) => k !== "200").reduce((n, [, v]) => n + v, 0);
      assert.ok(failed > 0, "the outage was felt");
      assert.ok(recoveredAt > 0, "requests succeed again after the restart");
      // Nothing corrupted: each session is at a turn it committed and resumes from exactly its tokens.
      let lost = 0;
      for (const s of sessions) {
        const info = await clients[1].get(`/v1/sessions/${s.id}`);
        assert.equal(info.status, 200, info.text);
        const turns = info.json!.turns;
        if (turns < s.ok || turns > s.ok + s.ambiguous) lost++;
        for (;;) {
          const r = await clients[0].post("/v1/completions", body(s.id, " The end."));
          if (r.status === 409 && r.json!.error.code === "session_busy") {
            await sleep(200);
            continue;
          }
          assert.equal(r.status, 200, r.text);
          assert.equal(r.json!.kv.rebuilt, null, "the stored cache decodes");
          assert.equal(r.json!.usage.prompt_tokens_details.cached_tokens, info.json!.tokens - 1);
          break;
        }
      }
      assert.equal(lost, 0);
      assert.equal((await fetch(`${a.url}/ready`)).status, 200);
      console.log(
        `fault redis restart: ${N} sessions, 2 instances, Redis down ${DOWN_MS} ms: outcomes ${
          JSON.stringify(outcomes)
        }; sessions checked ${N}, lost 0; first success ${Math.round(recoveredAt - restartedAt)} ms ` +
          `after Redis was back`,
      );
    } finally {
      await a.stop();
      await b.stop();
      await redis.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
);
