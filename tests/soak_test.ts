/**
 * `deno task soak` in miniature against its own server process (ts backend): a few windows of steady
 * multi-turn and streamed load, no errors, memory sampled, the report's figures consistent with its windows.
 * (The real soak runs for ten minutes or more: README, Reliability.)
 */
import assert from "node:assert/strict";
import { formatSoak, runSoak } from "../src/cli/soak.ts";

Deno.test({
  name: "soak: a 15-second run in 5-second windows reports throughput, TTFT, memory and drift, with 0 errors",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const r = await runSoak({
      minutes: 0.25,
      windowMs: 5000,
      sessionVus: 2,
      streamVus: 2,
      turns: 3,
      maxTokens: 8,
      maxGrowthMb: 1024,
      serverArgs: ["--backend", "ts"],
    });
    console.log(formatSoak(r));
    assert.equal(r.errors, 0, JSON.stringify(r.windows.map((w) => w.failedChecks)));
    assert.ok(r.ok);
    assert.ok(r.windows.length >= 3, `${r.windows.length} windows`);
    assert.equal(
      r.requests,
      r.windows.slice(1).reduce((n, w) => n + w.requests, 0),
      "warm = after the first window",
    );
    assert.ok(r.reqPerS > 0 && r.tokPerS > 0);
    assert.ok(r.ttftMs.count > 0 && r.ttftMs.p50 <= r.ttftMs.p95 && r.ttftMs.p95 <= r.ttftMs.p99);
    assert.ok(r.memory && r.memory.peakMb >= r.memory.endMb && r.memory.endMb > 0, JSON.stringify(r.memory));
  },
});
