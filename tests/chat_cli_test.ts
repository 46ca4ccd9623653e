/**
 * `deno task chat` against a real server process on loopback, driven through its standard input: it streams
 * replies with per-turn stats, resumes a named session across runs (the local name → id file), and its
 * /kv, /policy and /reset commands work; bad input is one line.
 */
import assert from "node:assert/strict";
import { Client } from "../src/client/http.ts";
import { type ServerProcess, startServerProcess } from "../src/client/server_process.ts";
import { runCli } from "./support/cli.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };

const chat = (args: string[], stdin: string, env: Record<string, string> = {}) =>
  runCli("src/cli/chat.ts", args, { stdin, env: { NO_COLOR: "1", ...env } });

const STATS =
  /\[prompt (\d+) \((\d+) cached, (\d+) new\) · (\d+) generated · TTFT \d+ ms · \d+ tok\/s · kept ([\d/]+) · KV [\d.]+ KB · stored [\d.]+ KB · \d+ pruning rounds in the session\]/g;

Deno.test(
  "deno task chat: streams, resumes a named session across runs, /kv /policy /reset",
  opts,
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "lethe-chat-" });
    const names = `${dir}/names.json`;
    let srv: ServerProcess | null = null;
    try {
      srv = await startServerProcess({
        args: ["--store", "memory:", "--backend", "native", "--log-level", "warn"],
      });
      const base = [
        "--base-url",
        srv.url,
        "--sessions-file",
        names,
        "--temperature",
        "0",
        "--max-tokens",
        "24",
      ];
      const api = new Client(srv.url);

      // first run: a new session with the given policy, one streamed turn, /kv
      const a = await chat(
        [...base, "--session", "story", "--policy", "streaming:budget=16"],
        "Once upon a time\n/kv\n/quit\n",
      );
      assert.equal(a.code, 0, a.stderr);
      assert.equal(a.stderr, "");
      const id = a.stdout.match(/new session "story" \((sess_\w+)\), policy streaming:budget=16,sink=4/)?.[1];
      assert.ok(id, a.stdout);
      const msgs = (await api.get(`/v1/sessions/${id}/messages`)).json!.data;
      assert.equal(msgs.length, 2);
      assert.ok(a.stdout.includes(msgs[1].content + "\n"), "the reply was printed as the server stored it");
      const s1 = [...a.stdout.matchAll(STATS)];
      assert.equal(s1.length, 1, a.stdout);
      assert.deepEqual(s1[0].slice(1, 6), ["5", "0", "5", "24", "16/16/16/16/16"]);
      const layers = a.stdout.split("\n").filter((l) => /^ {2}layer +\d/.test(l));
      assert.equal(layers.length, 5);
      for (const l of layers) assert.match(l, /16\/28 {2}budget 16$/);
      assert.deepEqual(JSON.parse(await Deno.readTextFile(names))[`${srv.url} story`].id, id);

      // second run, same name: resumed; the new turn reuses the stored cache
      const b = await chat([...base, "--session", "story"], "Tom had a red ball.\n/policy\n");
      assert.equal(b.code, 0, b.stderr);
      assert.match(
        b.stdout,
        new RegExp(`resumed "story" \\(${id}\\): 1 turns, 29 tokens, policy streaming:budget=16`),
      );
      assert.ok(b.stdout.includes(`assistant: ${msgs[1].content.trim()}`), "the last exchange is shown");
      const s2 = [...b.stdout.matchAll(STATS)];
      assert.equal(s2.length, 1, b.stdout);
      const [prompt, cached, fresh] = s2[0].slice(1, 4).map(Number);
      assert.equal(cached, 28, "the stored cache's 28 tokens are reused");
      assert.equal(prompt, cached + fresh);
      assert.ok(fresh > 1 && fresh < 24, `${fresh} new tokens: only the new message`);
      assert.match(b.stdout, /\npolicy streaming:budget=16,sink=4\n/);
      assert.equal((await api.get(`/v1/sessions/${id}`)).json!.turns, 2);

      // /policy SPEC: a new session under the name (the old one stays); a bad spec is one line and no change
      const c = await chat([...base, "--session", "story"], "/policy h2o:budget=0\n/policy h2o:budget=20\n");
      assert.equal(c.code, 0);
      assert.equal(
        c.stderr.trim(),
        'error: kv_policy h2o: param "budget": must be > 0 (≤ 1: fraction of context, > 1: tokens)',
      );
      const id2 = c.stdout.match(/new session "story" \((sess_\w+)\), policy h2o:budget=20/)?.[1];
      assert.ok(id2 && id2 !== id, c.stdout);
      assert.equal((await api.get(`/v1/sessions/${id}`)).status, 200, "the previous session stays");

      // /reset: a new session with the same policy; the old one is deleted
      const d = await chat([...base, "--session", "story"], "/reset\n/nope\n");
      assert.equal(d.code, 0);
      assert.match(d.stdout, new RegExp(`resumed "story" \\(${id2}\\): 0 turns`));
      const id3 = d.stdout.match(/new session "story" \((sess_\w+)\), policy h2o:budget=20/)?.[1];
      assert.ok(id3 && id3 !== id2, d.stdout);
      assert.equal((await api.get(`/v1/sessions/${id2}`)).status, 404);
      assert.match(d.stdout, /unknown command \/nope/);
      assert.equal(JSON.parse(await Deno.readTextFile(names))[`${srv.url} story`].id, id3);

      // bad flags and an unreachable server: one line, non-zero exit
      const e = await chat([...base, "--session", "a b"], "");
      assert.equal(e.code, 2);
      assert.match(e.stderr, /^error: --session must be/);
      const f = await chat(["--base-url", "http://127.0.0.1:9", "--sessions-file", names], "");
      assert.equal(f.code, 1);
      assert.match(f.stderr, /^error: cannot reach http:\/\/127\.0\.0\.1:9/);
      assert.equal(f.stderr.trim().split("\n").length, 1);
    } finally {
      await srv?.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
);
