/**
 * A full disk under a server process: its Deno KV file lives on a small tmpfs (mounted by the test; CI runs
 * as root), sessions take turns until the disk fills. Every request answers 200 or a clear 503 `store_full`
 * with Retry-After, reads keep working, no session shows a half-written turn, and once the filesystem is
 * grown (remounted larger, no restart) every session takes its next turn from exactly its last committed one.
 */
import assert from "node:assert/strict";
import { Client } from "../src/client/http.ts";
import { startServerProcess } from "../src/client/server_process.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function run(cmd: string, args: string[]): Promise<void> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
}

Deno.test({
  name:
    "disk full (Deno KV on a small tmpfs): 503 store_full, nothing half-written, recovers when space returns",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "lethe-full-" });
    try {
      await run("mount", ["-t", "tmpfs", "-o", "size=2m", "tmpfs", dir]);
    } catch (e) {
      await Deno.remove(dir);
      throw new Error(`this test mounts a tmpfs and needs root (CI runs as root): ${(e as Error).message}`);
    }
    const logDir = await Deno.makeTempDir({ prefix: "lethe-full-log-" });
    let srv: Awaited<ReturnType<typeof startServerProcess>> | null = null;
    try {
      srv = await startServerProcess({
        args: ["--store", `denokv:${dir}/sessions.sqlite`, "--backend", "ts", "--log-level", "warn"],
        logPath: `${logDir}/server.log`,
      });
      const c = new Client(srv.url);
      const model = await c.modelId();
      const turn = (id: string, i: number) => ({
        model,
        prompt: `Once upon a time ${i}`,
        max_tokens: 48,
        temperature: 0,
        session_id: id,
      });
      const sessions: { id: string; turns: number; tokens: number }[] = [];
      const statuses: Record<string, number> = {};
      const count = (k: string) => (statuses[k] = (statuses[k] ?? 0) + 1);
      const check503 = (r: Awaited<ReturnType<Client["post"]>>) => {
        assert.equal(r.status, 503, r.text);
        assert.equal(r.json!.error.code, "store_full", r.text);
        assert.equal(r.json!.error.type, "service_unavailable");
        assert.ok(Number(r.headers.get("retry-after")) > 0);
        assert.doesNotMatch(r.text, /sqlite|lethe-full/, "no paths in the error");
        count("503 store_full");
      };
      // Fill the disk: new sessions and turns round-robin until 6 requests were refused for space.
      for (let i = 0; (statuses["503 store_full"] ?? 0) < 6; i++) {
        assert.ok(i < 2000, `the disk never filled: ${JSON.stringify(statuses)}`);
        if (i % 4 === 0) {
          const r = await c.post("/v1/sessions", { kv_policy: { name: "full" } });
          if (r.status === 201) sessions.push({ id: r.json!.id, turns: 0, tokens: 0 });
          else check503(r);
          continue;
        }
        if (sessions.length === 0) continue;
        const s = sessions[i % sessions.length];
        const r = await c.post("/v1/completions", turn(s.id, i));
        if (r.status === 200) {
          count("200");
          s.turns++;
          s.tokens = r.json!.usage.total_tokens;
        } else if (r.status === 409 && r.json!.error.code === "session_busy") {
          count("409 session_busy"); // a lease whose release found no space runs out by itself
        } else check503(r);
      }
      // Reads still work; every session is exactly at its last committed turn.
      let lost = 0;
      for (const s of sessions) {
        const info = await c.get(`/v1/sessions/${s.id}`);
        assert.equal(info.status, 200, info.text);
        if (info.json!.turns !== s.turns || info.json!.tokens !== s.tokens) lost++;
      }
      assert.equal(lost, 0, "sessions lost or half-written");
      assert.equal((await fetch(`${srv.url}/ready`)).status, 200);

      // Space comes back (the filesystem grows); no restart: every session takes its next turn.
      await run("mount", ["-o", "remount,size=64m", dir]);
      const grownAt = performance.now();
      let recoveredMs = 0;
      for (const s of sessions) {
        for (let attempt = 0;; attempt++) {
          const r = await c.post("/v1/completions", turn(s.id, 9999));
          if (r.status !== 200 && attempt < 60) {
            await sleep(200);
            continue;
          }
          assert.equal(r.status, 200, r.text);
          assert.equal(r.json!.kv.rebuilt, null);
          assert.equal(r.json!.usage.prompt_tokens_details.cached_tokens, Math.max(0, s.tokens - 1));
          recoveredMs = Math.max(recoveredMs, performance.now() - grownAt);
          break;
        }
      }
      console.log(
        `fault disk full: ${JSON.stringify(statuses)}; sessions checked ${sessions.length}, lost 0; ` +
          `all took a turn again ${Math.round(recoveredMs)} ms after space returned`,
      );
    } finally {
      await srv?.stop();
      await run("umount", [dir]).catch(() => run("umount", ["-l", dir]));
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(logDir, { recursive: true });
    }
  },
});
