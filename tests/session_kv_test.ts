// deno-lint-ignore-file no-explicit-any
/**
 * The read-only session views (`GET /v1/sessions/{id}/kv`, `/messages`, `/events`) against real servers on
 * loopback: the KV view equals what one uninterrupted decode's policy keeps, per layer and position; the
 * timeline adds up; the event stream reports every prune step of a running turn without changing the
 * OpenAI stream; and every view is scoped to the API key.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import { get, post, PREFILL_CHUNK, sharedModel, start } from "./support/server_harness.ts";
import { runSequence, Sequence } from "../src/engine/sequence.ts";
import { GREEDY } from "../src/engine/sampler.ts";
import type { PolicySpec } from "../src/kv/contract.ts";
import { createPolicy } from "../src/kv/registry.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };
const TURNS = ["Once upon a time", "Then the dog said", "The end of the day came and"];
const MAX = 40;

/** One uninterrupted decode of the turns (completions, greedy): each layer's kept positions and scores. */
async function reference(policy: PolicySpec, turns: string[]) {
  const { model, backend } = await sharedModel();
  const tok = model.tokenizer;
  const pol = createPolicy(policy, {
    nLayers: model.config.nLayers,
    contextLength: model.config.contextLength,
  });
  let prev: Sequence | null = null;
  for (let i = 0; i < turns.length; i++) {
    const seq: Sequence = new Sequence(
      backend,
      tok,
      { maxTokens: MAX, stop: [], sampling: GREEDY, policy: pol, prefillChunk: PREFILL_CHUNK },
      prev ? { kv: prev.kv, tokens: prev.tokens } : undefined,
    );
    seq.feed(tok.encode(turns[i], { addBos: i === 0 }));
    seq.start();
    for await (const _ of runSequence(backend, seq)) { /* run it */ }
    prev = seq;
  }
  const kv = prev!.kv;
  const scores = pol.exportState().scores;
  const layers = Array.from({ length: model.config.nLayers }, (_, l) => ({
    positions: Array.from(kv.positions(l)),
    scores: Array.from(scores[l]),
  }));
  const out = { layers, tokens: [...prev!.tokens], nextPos: kv.nextPos };
  kv.free();
  return out;
}

async function sessionTurns(url: string, policy: PolicySpec, turns: string[], headers = {}) {
  const s = await post(url, "/v1/sessions", { kv_policy: policy }, headers);
  assert.equal(s.status, 201, s.text);
  const results = [];
  for (const prompt of turns) {
    const r = await post(url, "/v1/completions", {
      model: "stories260K",
      prompt,
      max_tokens: MAX,
      temperature: 0,
      session_id: s.json.id,
    }, headers);
    assert.equal(r.status, 200, r.text);
    results.push(r.json);
  }
  return { id: s.json.id as string, results };
}

Deno.test(
  "GET /v1/sessions/:id/kv: the kept positions and scores of one uninterrupted decode",
  opts,
  async () => {
    const srv = await start();
    try {
      for (
        const policy of [
          { name: "lethe", mode: "fixed", budget: 40, slack: 8 },
          { name: "streaming", budget: 24 },
          { name: "h2o", budget: 30 },
          { name: "full" },
        ]
      ) {
        const ref = await reference(policy, TURNS);
        const { id, results } = await sessionTurns(srv.url, policy, TURNS);
        const r = await get(srv.url, `/v1/sessions/${id}/kv`);
        assert.equal(r.status, 200, r.text);
        const v = r.json;
        assert.equal(v.object, "session.kv");
        assert.equal(v.turns, 3);
        assert.equal(v.policy.name, policy.name);
        assert.deepEqual(v.tokens, ref.tokens, `${policy.name}: token history`);
        assert.equal(v.next_pos, ref.nextPos);
        assert.equal(v.token_texts.length, v.tokens.length);
        assert.equal(v.token_texts[0], "<s>");
        assert.ok(
          v.token_texts.join("").startsWith("<s>Once upon a time"),
          v.token_texts.slice(0, 8).join("|"),
        );
        assert.equal(v.layers.length, 5);
        for (let l = 0; l < 5; l++) {
          assert.deepEqual(
            v.layers[l].positions,
            ref.layers[l].positions,
            `${policy.name} layer ${l} positions`,
          );
          assert.equal(v.layers[l].scores.length, ref.layers[l].positions.length);
          v.layers[l].scores.forEach((s: number, i: number) => {
            const want = ref.layers[l].scores[i];
            assert.ok(
              Math.abs(s - want) <= 1e-3 * Math.max(1, Math.abs(want)),
              `${policy.name} score ${l}/${i}`,
            );
          });
        }
        const last = results[results.length - 1].kv;
        assert.deepEqual(v.layers.map((l: any) => l.positions.length), last.kept_per_layer);
        assert.equal(v.kv_bytes, last.kv_bytes);
        assert.equal(v.stored_bytes, last.stored_bytes);
        if (policy.name === "full") {
          assert.deepEqual(v.limits, {
            kind: "none",
            per_layer: null,
            total: null,
            note: "nothing is evicted",
          });
          assert.deepEqual(v.layers[0].positions, Array.from({ length: v.next_pos }, (_, i) => i));
          assert.equal(v.scored, false);
        } else if (policy.name === "streaming") {
          assert.equal(v.limits.kind, "budget");
          assert.deepEqual(v.limits.per_layer, [24, 24, 24, 24, 24]);
          assert.equal(v.scored, false);
          assert.deepEqual(v.policy.params, { budget: 24, sink: 4 });
        } else if (policy.name === "lethe") {
          assert.equal(v.limits.kind, "budget");
          assert.equal(v.limits.total, 200);
          assert.equal(v.scored, true);
          assert.equal(v.policy.params.gamma, 0.9, "defaults filled in");
        }
      }
    } finally {
      await srv.shutdown();
    }
  },
);

Deno.test("session timeline: one record per turn; rounds and stored bytes add up", opts, async () => {
  const srv = await start();
  try {
    const { id, results } = await sessionTurns(srv.url, { name: "streaming", budget: 24 }, TURNS);
    const v = (await get(srv.url, `/v1/sessions/${id}/kv`)).json;
    const info = (await get(srv.url, `/v1/sessions/${id}`)).json;
    assert.equal(v.timeline.length, 3);
    let start = 0, rounds = 0;
    v.timeline.forEach((t: any, i: number) => {
      const r = results[i];
      assert.equal(t.turn, i + 1);
      assert.equal(t.start, start);
      assert.equal(t.end, r.usage.prompt_tokens + r.usage.completion_tokens);
      assert.equal(t.prompt_tokens, r.usage.prompt_tokens);
      assert.equal(t.cached_tokens, r.usage.prompt_tokens_details.cached_tokens);
      assert.equal(t.generated_tokens, r.usage.completion_tokens);
      assert.deepEqual(t.kept_per_layer, r.kv.kept_per_layer);
      assert.equal(t.kv_bytes, r.kv.kv_bytes);
      assert.equal(t.stored_bytes, r.kv.stored_bytes, `turn ${i + 1} stored bytes`);
      // streaming prunes every step once a layer exceeds its budget: one span per turn from then on
      const steps = t.prune_spans.reduce((a: number, [f, e]: number[]) => a + e - f + 1, 0);
      assert.ok(
        steps >= t.pruning_rounds - 1 && steps <= t.pruning_rounds,
        `spans ${t.prune_spans} vs rounds`,
      );
      for (const [f, e] of t.prune_spans) assert.ok(f > t.start - 1 && e <= t.end && f <= e);
      start = t.end;
      rounds += t.pruning_rounds;
    });
    assert.equal(v.timeline[0].prune_spans[0][0], 25, "the first prune: the 25th token");
    assert.equal(info.kv.pruning_rounds, rounds, "session pruning rounds = the sum over its turns");
    assert.equal(v.pruning_rounds, rounds);
  } finally {
    await srv.shutdown();
  }
});

Deno.test("GET /v1/sessions/:id/messages and /kv of a new session", opts, async () => {
  const srv = await start();
  try {
    const s = await post(srv.url, "/v1/sessions", { kv_policy: { name: "lethe" } });
    const empty = await get(srv.url, `/v1/sessions/${s.json.id}/kv`);
    assert.equal(empty.status, 200);
    assert.deepEqual(empty.json.tokens, []);
    assert.equal(empty.json.limits.kind, "trigger");
    assert.deepEqual(empty.json.limits.per_layer, [128, 128, 128, 128, 128]);
    assert.deepEqual(empty.json.timeline, []);
    assert.deepEqual((await get(srv.url, `/v1/sessions/${s.json.id}/messages`)).json, {
      object: "list",
      data: [],
    });
    const msgs = [{ role: "user", content: "Tom had a red ball." }];
    const r = await post(srv.url, "/v1/chat/completions", {
      model: "stories260K",
      messages: msgs,
      max_tokens: 12,
      temperature: 0,
      session_id: s.json.id,
    });
    assert.equal(r.status, 200, r.text);
    const m = await get(srv.url, `/v1/sessions/${s.json.id}/messages`);
    assert.deepEqual(m.json.data, [...msgs, {
      role: "assistant",
      content: r.json.choices[0].message.content,
    }]);
  } finally {
    await srv.shutdown();
  }
});

Deno.test(
  "session views are scoped to the API key: 404 for another key's session, 400 for a bad id",
  opts,
  async () => {
    const k1 = "key-one-0000000000", k2 = "key-two-0000000000";
    const srv = await start({ apiKeys: [k1, k2] });
    try {
      const h1 = { authorization: `Bearer ${k1}` }, h2 = { authorization: `Bearer ${k2}` };
      const { id } = await sessionTurns(srv.url, { name: "full" }, ["Once upon a time"], h1);
      for (const view of ["kv", "messages", "events"]) {
        const own = view === "events" ? null : await get(srv.url, `/v1/sessions/${id}/${view}`, h1);
        if (own) assert.equal(own.status, 200, own.text);
        const other = await get(srv.url, `/v1/sessions/${id}/${view}`, h2);
        assert.equal(other.status, 404, `${view}: ${other.text}`);
        assert.equal(other.json.error.code, "session_not_found");
        const none = await get(srv.url, `/v1/sessions/${id}/${view}`);
        assert.equal(none.status, 401);
        const bad = await get(srv.url, `/v1/sessions/nope/${view}`, h1);
        assert.equal(bad.status, 400);
        assert.equal(bad.json.error.code, "invalid_session_id");
      }
      const spec = (await get(srv.url, "/openapi.json")).json;
      for (const view of ["kv", "messages", "events"]) {
        assert.ok(
          spec.paths[`/v1/sessions/{id}/${view}`]?.get,
          view,
        );
      }
      assert.ok(spec.components.schemas.SessionKv && spec.components.schemas.SessionWatchEvent);
    } finally {
      await srv.shutdown();
    }
  },
);

/** Open the events stream of `id`; resolves once the `watch` event arrived. */
async function watch(url: string, id: string, headers: Record<string, string> = {}) {
  const ctrl = new AbortController();
  const res = await fetch(`${url}/v1/sessions/${id}/events`, { headers, signal: ctrl.signal });
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /text\/event-stream/);
  const events: any[] = [];
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  const waiters: { pred: (e: any) => boolean; resolve: (e: any) => void }[] = [];
  const pump = (async () => {
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 2);
          if (!line.startsWith("data: ")) continue;
          const e = JSON.parse(line.slice(6));
          events.push(e);
          for (const w of [...waiters]) if (w.pred(e)) (waiters.splice(waiters.indexOf(w), 1), w.resolve(e));
        }
      }
    } catch { /* aborted */ }
  })();
  const until = (pred: (e: any) => boolean) =>
    new Promise<any>((resolve) => {
      const hit = events.find(pred);
      if (hit) resolve(hit);
      else waiters.push({ pred, resolve });
    });
  await until((e) => e.type === "watch");
  return {
    events,
    until,
    close: async () => {
      ctrl.abort();
      await pump;
    },
  };
}

Deno.test(
  "GET /v1/sessions/:id/events: every prune step of a running turn; the OpenAI stream is unchanged",
  opts,
  async () => {
    const srv = await start();
    try {
      const s = await post(srv.url, "/v1/sessions", { kv_policy: { name: "streaming", budget: 24 } });
      const id = s.json.id;
      const w = await watch(srv.url, id);
      assert.deepEqual(w.events[0], { type: "watch", session: id, running: false });
      const client = new OpenAI({ baseURL: srv.url + "/v1", apiKey: "unused" });
      const body: any = {
        model: "stories260K",
        messages: [{ role: "user", content: "Once upon a time" }],
        max_tokens: MAX,
        temperature: 0,
        stream: true,
        session_id: id, // the extension field
      };
      const stream = await client.chat.completions.create(body) as unknown as AsyncIterable<any>;
      let text = "";
      for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
      assert.ok(text.length > 20, "the OpenAI client streamed the reply");
      const end = await w.until((e) => e.type === "turn.end");
      const startEv = w.events.find((e) => e.type === "turn.start");
      assert.deepEqual(startEv, {
        type: "turn.start",
        turn: 1,
        history_tokens: 0,
        prompt_tokens: 5,
        cached_tokens: 0,
        max_tokens: MAX,
        policy: { name: "streaming", budget: 24, sink: 4 },
        rebuilt: null,
      });
      // streaming at its budget prunes every layer from 25 to 24 rows at every step from the 25th token on: runs
      const records = w.events.filter((e) => e.type === "kv").flatMap((e) => e.prunes);
      const steps = records.flatMap((r: any) =>
        Array.from({ length: r.steps }, (_, i) => ({ pos: r.pos + i, layers: r.layers }))
      );
      assert.equal(steps.length, end.record.pruning_rounds, "one prune step per pruning round");
      steps.forEach((p: any, i: number) => {
        assert.equal(p.pos, 25 + i, "streaming prunes at every step from the 25th token");
        assert.deepEqual(p.layers, [0, 1, 2, 3, 4].map((l) => [l, 25, 24]));
      });
      assert.ok(
        records.length <= w.events.filter((e) => e.type === "kv").length,
        "one run per event at most",
      );
      const kvEvents = w.events.filter((e) => e.type === "kv");
      assert.deepEqual(kvEvents[kvEvents.length - 1].kept_per_layer, [24, 24, 24, 24, 24]);
      assert.equal(end.finish_reason, "length");
      assert.equal(end.usage.completion_tokens, MAX);
      const v = (await get(srv.url, `/v1/sessions/${id}/kv`)).json;
      assert.deepEqual({ ...end.record, stored_bytes: null }, { ...v.timeline[0], stored_bytes: null });
      assert.equal(srv.deps.inference.watch.watchers(id), 1);
      await w.close();
      for (let i = 0; i < 50 && srv.deps.inference.watch.watchers(id) > 0; i++) {
        await new Promise((r) => setTimeout(r, 10));
      }
      assert.equal(srv.deps.inference.watch.watchers(id), 0, "a closed watcher is dropped");
    } finally {
      await srv.shutdown();
    }
  },
);

Deno.test(
  "events: a failed turn is reported; the watcher cap; shutdown ends open watchers",
  opts,
  async () => {
    const srv = await start();
    try {
      const s = await post(srv.url, "/v1/sessions", { kv_policy: { name: "full" } });
      const id = s.json.id;
      const w = await watch(srv.url, id);
      // a client that goes away mid-stream: the turn is cancelled, not saved
      const ctrl = new AbortController();
      const res = await fetch(`${srv.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: "stories260K",
          messages: [{ role: "user", content: "Once upon a time" }],
          max_tokens: 200,
          stream: true,
          session_id: id,
        }),
        signal: ctrl.signal,
      });
      const reader = res.body!.getReader();
      await reader.read();
      ctrl.abort();
      const err = await w.until((e) => e.type === "turn.error");
      assert.equal(err.turn, 1);
      assert.equal(err.error.code, "cancelled");
      const others = [];
      for (let i = 1; i < 8; i++) others.push(await watch(srv.url, id));
      const over = await get(srv.url, `/v1/sessions/${id}/events`);
      assert.equal(over.status, 429);
      assert.equal(over.json.error.code, "too_many_watchers");
      await srv.shutdown(); // would hang while the watchers' streams stayed open
      assert.equal(srv.deps.inference.watch.watchers(id), 0);
      await Promise.all([w, ...others].map((x) => x.close()));
    } finally {
      await srv.shutdown();
    }
  },
);
