/**
 * `deno task bench:watch`: what watching a session (`GET /v1/sessions/{id}/events`, the playground's live
 * view) costs the decode loop, two ways, each side by side in one run:
 *
 * 1. End to end: the server as a subprocess (native backend, memory store, loopback); for each policy, pairs of
 *    rounds, one with and one without a watcher reading every event of every session (order alternating),
 *    each round C concurrent sessions decoding one greedy streamed turn of N tokens (greedy: both sides
 *    generate exactly the same tokens). Reported: the median over the pairs of (tok/s watched) / (tok/s
 *    unwatched), with its interquartile range (on a shared, busy machine a pair's two rounds see about the
 *    same load), and the server process's CPU time per generated token on each side (/proc: what other
 *    processes take from it does not count).
 * 2. The hook itself, in process: what `TurnTrace.step` (the one call the decode loop makes per step) costs
 *    unwatched and watched (buffering the step's prune events, and a flush every 50 ms), against the time of a
 *    decode step of the same model and policy (batch 1, the worst case: the step is at its cheapest).
 *
 *   deno task bench:watch [--pairs 12] [--concurrency 4] [--tokens 256] [--policy SPEC]... [--backend native]
 */
import { Client } from "../client/http.ts";
import { startServerProcess } from "../client/server_process.ts";
import { parsePolicyText } from "../kv/policy_spec.ts";
import { intFlag, parseFlags, runMain } from "./common.ts";
import { loadModel, SHARED_MODELS } from "../model/loader.ts";
import { type BackendChoice, openBackend } from "../engine/select.ts";
import { Sequence } from "../engine/sequence.ts";
import { GREEDY } from "../engine/sampler.ts";
import type { PolicySpec, PruneEvent } from "../kv/contract.ts";
import { createPolicy } from "../kv/registry.ts";
import { KvWatch } from "../server/kv_watch.ts";
import { quantile } from "../client/stats.ts";

const USAGE =
  `usage: deno task bench:watch [--rounds R] [--concurrency C] [--tokens N] [--policy SPEC]... [--backend B]`;

const PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play outside.";

interface Side {
  tokens: number;
  ms: number;
  /** The server process's CPU time (user + system) over the round's decoding, in ms. */
  cpuMs: number;
  pruneEvents: number;
  kvEvents: number;
}

/** One round: C sessions decode one turn at once; with `watch`, each has a watcher reading its events. */
/** CPU time (user + system) the process `pid` has used, in ms (Linux /proc; 100 ticks a second). */
function cpuMs(pid: number): number {
  const f = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const rest = f.slice(f.lastIndexOf(")") + 2).split(" ");
  return (Number(rest[11]) + Number(rest[12])) * 10; // utime, stime (fields 14, 15)
}

async function round(
  pid: number,
  c: Client,
  model: string,
  policy: Record<string, unknown>,
  conc: number,
  tokens: number,
  watch: boolean,
  side: Side,
) {
  const ids: string[] = [];
  for (let i = 0; i < conc; i++) {
    const s = await c.post("/v1/sessions", { kv_policy: policy });
    if (s.status !== 201) throw new Error(`POST /v1/sessions: ${s.status} ${s.text.slice(0, 200)}`);
    ids.push(s.json!.id);
  }
  const stop = new AbortController();
  const ready: Promise<void>[] = [];
  const watchers = watch
    ? ids.map((id) => {
      let started!: () => void;
      ready.push(new Promise((r) => (started = r)));
      return c.get(`/v1/sessions/${id}/events`, {
        stream: true,
        signal: stop.signal,
        onEvent: (ev) => {
          const e = ev as { type?: string; prunes?: unknown[] };
          if (e.type === "watch") started();
          if (e.type === "kv") {
            side.kvEvents++;
            for (const p of (e.prunes ?? []) as { steps: number }[]) side.pruneEvents += p.steps;
          }
        },
      }).catch(() => {});
    })
    : [];
  await Promise.all(ready);
  const t0 = performance.now(), cpu0 = cpuMs(pid);
  const done = await Promise.all(ids.map((id) =>
    c.post("/v1/chat/completions", {
      model,
      session_id: id,
      messages: [{ role: "user", content: PROMPT }],
      max_tokens: tokens,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    }, { stream: true })
  ));
  side.ms += performance.now() - t0;
  side.cpuMs += cpuMs(pid) - cpu0;
  for (const r of done) {
    if (r.status !== 200 || !r.sse?.usage) throw new Error(`chat: ${r.status} ${r.text.slice(0, 200)}`);
    side.tokens += r.sse.usage.completion_tokens;
  }
  stop.abort();
  await Promise.all(watchers);
  await Promise.all(ids.map((id) => c.delete(`/v1/sessions/${id}`)));
}

/** Part 2: ns per `TurnTrace.step` call unwatched / watched, and µs per decode step, for one policy. */
async function hookCost(policy: PolicySpec, backendChoice: string, steps: number) {
  const model = await loadModel(SHARED_MODELS.stories260K);
  const { backend } = await openBackend(model, backendChoice as BackendChoice, { kvPrecision: "f16" });
  const c = model.config;
  const seq = new Sequence(backend, model.tokenizer, {
    maxTokens: steps,
    stop: [],
    sampling: GREEDY,
    policy: createPolicy(policy, { nLayers: c.nLayers, contextLength: c.contextLength }),
    stopAtEos: false,
  });
  seq.feed(model.tokenizer.encode(PROMPT, { addBos: true }));
  seq.start();
  const pruned: (PruneEvent[] | undefined)[] = [];
  // the fastest of 8 stretches of steps: the step's own cost, not what other processes took from it
  let t0 = performance.now(), n = 0, stepUs = Infinity;
  while (!seq.finished) {
    const [out] = await backend.forward([seq.nextInput()]);
    pruned.push(seq.accept(out).pruned);
    if (++n % (steps / 8) === 0) {
      stepUs = Math.min(stepUs, ((performance.now() - t0) * 1000) / (steps / 8));
      t0 = performance.now();
    }
  }
  const watch = new KvWatch();
  const id = "sess_benchbenchbenchbenchbe";
  const calls = 100_000;
  // the decode loop's calls, replayed: one per step, positions advancing, the run's own prune events
  const at = { kv: { nextPos: 0 }, policy: seq.policy, generatedTokens: n, kept: () => seq.kept() };
  const timeCalls = () => {
    const tr = watch.trace(id, 1, at as unknown as Sequence);
    t0 = performance.now();
    for (let i = 0; i < calls; i++) {
      at.kv.nextPos = i;
      tr.step(pruned[i % n]);
    }
    const ns = ((performance.now() - t0) * 1e6) / calls;
    tr.end({ finish_reason: "length", usage: null, kv: null, record: null });
    return ns;
  };
  // alternately unwatched and watched (a watcher draining its stream between the timed stretches); the
  // fastest of 7 each
  timeCalls(); // warm-up
  let off = Infinity, on = Infinity, bytes = 0;
  const reader = watch.subscribe(id).getReader();
  const drain = (async () => {
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      bytes += r.value.length;
    }
  })();
  for (let rep = 0; rep < 7; rep++) {
    on = Math.min(on, timeCalls());
    await new Promise((r) => setTimeout(r, 0));
    const other = new KvWatch().trace(id, 1, at as unknown as Sequence); // a session nobody watches
    t0 = performance.now();
    for (let i = 0; i < calls; i++) {
      at.kv.nextPos = i;
      other.step(pruned[i % n]);
    }
    off = Math.min(off, ((performance.now() - t0) * 1e6) / calls);
  }
  // one flush (what a watched trace does every 50 ms): the buffered run, the cache's figures, one SSE event
  const tr = watch.trace(id, 1, at as unknown as Sequence);
  const flushes = 2000;
  t0 = performance.now();
  for (let i = 0; i < flushes; i++) {
    at.kv.nextPos = i;
    tr.step(pruned[i % n] ?? pruned.find((p) => p));
    tr.settle();
  }
  const flushUs = ((performance.now() - t0) * 1000) / flushes;
  tr.end({ finish_reason: "length", usage: null, kv: null, record: null });
  watch.close();
  await drain;
  seq.kv.free();
  backend.dispose();
  return { stepUs, off, on, flushUs, prunedSteps: pruned.filter((p) => p).length, steps: n, bytes };
}

await runMain(async () => {
  const f = parseFlags(Deno.args, {
    pairs: { type: "string" },
    concurrency: { type: "string" },
    tokens: { type: "string" },
    policy: { type: "string", multiple: true },
    backend: { type: "string" },
  }, USAGE);
  const pairs = intFlag("pairs", f.pairs, 12, 1);
  const conc = intFlag("concurrency", f.concurrency, 4, 1);
  const tokens = intFlag("tokens", f.tokens, 256, 1);
  const backend = f.backend ?? "native";
  const policies = (f.policy ?? ["streaming:budget=64", "lethe"]).map(parsePolicyText);
  const name = (p: Record<string, unknown>) =>
    Object.entries(p).map(([k, v]) => (k === "name" ? v : `${k}=${v}`)).join(" ");

  console.log(
    `1. end to end: ${backend} backend, ${pairs} pairs of rounds, each round ${conc} concurrent sessions × one ${tokens}-token greedy streamed turn`,
  );
  console.log("");
  console.log(
    "| policy | tok/s unwatched (median) | tok/s watched (median) | watched / unwatched, median of pairs [IQR] | server CPU per token, unwatched → watched | prune steps seen |",
  );
  console.log("| --- | --- | --- | --- | --- | --- |");
  const srv = await startServerProcess({
    args: ["--store", "memory:", "--backend", backend, "--log-level", "warn"],
  });
  try {
    const c = new Client(srv.url);
    const model = await c.modelId();
    for (const policy of policies) {
      await round(srv.pid, c, model, policy, conc, tokens, false, {
        tokens: 0,
        ms: 0,
        cpuMs: 0,
        pruneEvents: 0,
        kvEvents: 0,
      }); // warm-up
      const ratios: number[] = [], offs: number[] = [], ons: number[] = [];
      let pruneEvents = 0, cpuOff = 0, cpuOn = 0, tokOff = 0, tokOn = 0;
      for (let r = 0; r < pairs; r++) {
        const side = {
          off: { tokens: 0, ms: 0, cpuMs: 0, pruneEvents: 0, kvEvents: 0 },
          on: { tokens: 0, ms: 0, cpuMs: 0, pruneEvents: 0, kvEvents: 0 },
        };
        for (const w of r % 2 === 0 ? [false, true] : [true, false]) {
          await round(srv.pid, c, model, policy, conc, tokens, w, w ? side.on : side.off);
        }
        if (side.on.tokens !== side.off.tokens) {
          throw new Error(`the two sides generated ${side.on.tokens} vs ${side.off.tokens} tokens`);
        }
        const a = side.off.tokens / side.off.ms, b = side.on.tokens / side.on.ms;
        offs.push(a * 1000);
        ons.push(b * 1000);
        ratios.push(b / a);
        pruneEvents += side.on.pruneEvents;
        cpuOff += side.off.cpuMs;
        cpuOn += side.on.cpuMs;
        tokOff += side.off.tokens;
        tokOn += side.on.tokens;
      }
      const q = (xs: number[], p: number) => quantile(xs, p);
      console.log(
        `| ${name(policy)} | ${Math.round(q(offs, 0.5))} | ${Math.round(q(ons, 0.5))} | ${
          q(ratios, 0.5).toFixed(3)
        } [${q(ratios, 0.25).toFixed(3)}, ${q(ratios, 0.75).toFixed(3)}] | ${
          (1000 * cpuOff / tokOff).toFixed(0)
        } → ${(1000 * cpuOn / tokOn).toFixed(0)} µs (×${
          ((cpuOn / tokOn) / (cpuOff / tokOff)).toFixed(3)
        }) | ${pruneEvents} |`,
      );
    }
  } finally {
    await srv.stop();
  }

  console.log("");
  console.log(
    `2. the hook in the decode loop (in process, stories260K, ${backend} backend, batch 1, 1024 decode steps)`,
  );
  console.log("");
  console.log(
    "| policy | decode step | TurnTrace.step unwatched | watched | watched, share of a step | a flush (every 50 ms) | steps that pruned |",
  );
  console.log("| --- | --- | --- | --- | --- | --- | --- |");
  for (const policy of policies) {
    const h = await hookCost(policy, backend, 1024);
    console.log(
      `| ${name(policy)} | ${h.stepUs.toFixed(1)} µs | ${h.off.toFixed(0)} ns | ${h.on.toFixed(0)} ns | ${
        ((100 * h.on) / (h.stepUs * 1000)).toFixed(2)
      }% | ${h.flushUs.toFixed(1)} µs = ${
        ((100 * h.flushUs) / 50_000).toFixed(3)
      }% of 50 ms | ${h.prunedSteps} of ${h.steps} |`,
    );
  }
});
