/**
 * The load driver (loadtest/driver.ts) against a real server on a free loopback port: a tiny bounded run of
 * each scenario finishes with 0 failed requests and every check passing; the CLI against a server process
 * of another model names that model (from GET /v1/models); non-loopback targets are refused (library and
 * CLI) before any network access.
 */
import assert from "node:assert/strict";
import { resolve } from "node:path";
import { checkTarget, isLoopbackHost, LoadConfigError, runLoad } from "../loadtest/driver.ts";
import { start } from "./support/server_harness.ts";
import { REPO_ROOT } from "../src/model/loader.ts";
import { startServerProcess } from "../src/client/server_process.ts";

function assertClean(s: Awaited<ReturnType<typeof runLoad>>, requests: number) {
  assert.equal(s.failures, 0, JSON.stringify(s.checks));
  assert.equal(s.requests, requests);
  assert.equal(s.iterations.interrupted, 0);
  for (const [name, c] of Object.entries(s.checks)) assert.equal(c.fail, 0, `check "${name}" failed`);
  assert.equal(s.checksRate, 1);
  assert.ok(s.ok, JSON.stringify(s.thresholds));
  assert.ok(s.generatedTokens > 0);
}

Deno.test("driver: chat_stream and multiturn_sessions, 2 VUs × 2 iterations against a real server", async () => {
  const srv = await start();
  try {
    const chat = await runLoad({
      scenario: "chat_stream",
      baseUrl: srv.url,
      vus: 2,
      iterations: 2,
      maxTokens: 8,
      duration: "60s",
    });
    assertClean(chat, 4);
    assert.deepEqual(Object.keys(chat.checks).sort(), [
      "content-type is text/event-stream",
      "generated text",
      "no error event",
      "status is 200",
      "stream ends with [DONE]",
      "usage reported",
    ]);
    assert.equal(chat.iterations.complete, 4);
    assert.equal(chat.ttft?.count, 4);
    assert.ok(chat.latency!.p99 >= chat.latency!.med && chat.ttft!.med <= chat.latency!.max);
    assert.equal(chat.generatedTokens, 4 * 8);

    // 2 sessions × (create + 3 turns + delete).
    const mt = await runLoad({
      scenario: "multiturn_sessions",
      baseUrl: srv.url,
      vus: 2,
      iterations: 1,
      turns: 3,
      maxTokens: 8,
      duration: "60s",
    });
    assertClean(mt, 2 * 5);
    assert.equal(mt.checks["cached_tokens grows"].pass, 6);
    assert.equal(mt.checks["prefill stays small"].pass, 6);
    assert.equal(mt.checks["session deleted"].pass, 2);
  } finally {
    await srv.shutdown();
  }
});

Deno.test("driver: a run is bounded by its duration", async () => {
  const srv = await start();
  try {
    const t0 = performance.now();
    const s = await runLoad({
      scenario: "chat_stream",
      baseUrl: srv.url,
      vus: 1,
      iterations: 100_000,
      maxTokens: 4,
      duration: "1s",
      gracefulStop: "5s",
    });
    assert.ok(performance.now() - t0 < 7000);
    assert.ok(s.iterations.complete >= 1 && s.iterations.complete < 100_000);
    assert.equal(s.failures, 0);
  } finally {
    await srv.shutdown();
  }
});

Deno.test("driver: refuses non-loopback targets unless allowed", async () => {
  for (const h of ["127.0.0.1", "127.1.2.3", "localhost", "[::1]"]) {
    assert.ok(isLoopbackHost(new URL(`http://${h}:8080`).hostname), h);
  }
  for (
    const url of [
      "http://10.0.0.1:8080",
      "http://example.com",
      "http://[2001:db8::1]/",
      "http://127.0.0.1.evil.com",
    ]
  ) {
    assert.throws(() => checkTarget(url), LoadConfigError, url);
    await assert.rejects(runLoad({ scenario: "chat_stream", baseUrl: url }), LoadConfigError);
  }
  assert.throws(() => checkTarget("ftp://127.0.0.1/"), LoadConfigError);
  assert.equal(checkTarget("http://10.0.0.1:8080/", true), "http://10.0.0.1:8080");

  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", resolve(REPO_ROOT, "loadtest/driver.ts"), "--base-url", "http://192.0.2.1:8080"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 2);
  const err = new TextDecoder().decode(out.stderr).trim();
  assert.match(err, /^load: refusing non-loopback target 192\.0\.2\.1:8080/);
  assert.equal(err.split("\n").length, 1);
});

Deno.test({
  name:
    "driver CLI smoke against a real server process serving another model: the model id comes from /v1/models",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "lethe-load-" });
    const srv = await startServerProcess({
      args: [
        "--model",
        resolve(REPO_ROOT, "../shared/models/tinystories-656K"),
        "--store",
        "memory:",
        "--backend",
        "ts",
      ],
      logPath: `${dir}/server.log`,
    });
    try {
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          resolve(REPO_ROOT, "loadtest/driver.ts"),
          "--base-url",
          srv.url,
          "--scenario",
          "mixed",
          "--vus",
          "1",
          "--iterations",
          "1",
          "--max-tokens",
          "4",
          "--turns",
          "2",
          "--kv-policy",
          "lethe:mode=fixed,budget=64",
          "--json",
          `${dir}/summary.json`,
          "--quiet",
        ],
        env: { MODEL: "" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, text);
      const s = JSON.parse(await Deno.readTextFile(`${dir}/summary.json`));
      assert.equal(s.params.model, "tinystories-656K");
      assert.equal(s.failures, 0, text);
      // chat_stream 1 + completions 1 + one session (create, 2 turns, delete).
      assert.equal(s.requests, 6);
      assert.equal(s.checks["session deleted"].pass, 1);
      assert.ok(s.ok);
    } finally {
      await srv.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
