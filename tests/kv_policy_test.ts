import assert from "node:assert/strict";
import { HostKVCache } from "../src/kv/cache.ts";
import type { KVPolicy, Phase } from "../src/kv/contract.ts";
import { createPolicy, POLICY_NAMES, policySpecSchema } from "../src/kv/registry.ts";
import { ScoreTable } from "../src/kv/score_table.ts";
import { hoyer, maxPool, selectKeep } from "../src/kv/select.ts";
import { findBreakpoint, LethePolicy } from "../src/kv/policies/lethe.ts";
import { PyramidKVPolicy } from "../src/kv/policies/pyramidkv.ts";
import { pyramidBudgets, splitBudget } from "../src/kv/budget.ts";
import { farGamma } from "../src/kv/far_decay.ts";

const SHAPE = { nLayers: 2, nKVHeads: 1, headDim: 2 };

/** Row of position p in layer l: K = [1000·l + p, 0.5], V = [-(1000·l + p), 7]. */
function rowK(l: number, p: number): Float32Array {
  return Float32Array.of(1000 * l + p, 0.5);
}
function rowV(l: number, p: number): Float32Array {
  return Float32Array.of(-(1000 * l + p), 7);
}

/** Append nNew recognisable rows to every layer, as a forward step would. */
function appendRows(kv: HostKVCache, nNew: number): void {
  for (let t = 0; t < nNew; t++) {
    const p = kv.nextPos + t;
    for (let l = 0; l < kv.shape.nLayers; l++) kv.append(l, rowK(l, p), rowV(l, p), p);
  }
  kv.nextPos += nNew;
}

/** Check that every kept row still carries the K/V of its original position. */
function assertRowsIntact(kv: HostKVCache): void {
  for (let l = 0; l < kv.shape.nLayers; l++) {
    const pos = kv.positions(l);
    for (let i = 0; i < pos.length; i++) {
      assert.deepEqual(Array.from(kv.k[l].subarray(i * 2, i * 2 + 2)), Array.from(rowK(l, pos[i])));
      assert.deepEqual(Array.from(kv.v[l].subarray(i * 2, i * 2 + 2)), Array.from(rowV(l, pos[i])));
    }
  }
}

/** Run a step: append rows, then hand the policy per-layer scores built by `score(layer, n)`. */
function step(
  policy: KVPolicy,
  kv: HostKVCache,
  nNew: number,
  score: (layer: number, n: number) => number[] | Float32Array,
  phase: Phase = "decode",
) {
  appendRows(kv, nNew);
  const req = policy.scoreRequest(phase, nNew);
  const scores = req
    ? Array.from({ length: kv.shape.nLayers }, (_, l) => Float32Array.from(score(l, kv.length(l))))
    : undefined;
  const r = policy.afterStep(kv, scores, nNew, phase);
  if (r.plan) kv.compact(r.plan); // as the next forward step would
  return r;
}

const pos = (kv: HostKVCache, l: number) => Array.from(kv.positions(l));
const range = (a: number, b: number) => Array.from({ length: b - a }, (_, i) => a + i);

Deno.test("selectKeep: sinks and recent always, top middle scores fill, ascending, deterministic ties", () => {
  const s = [0, 0, 5, 1, 9, 1, 3, 1, 0, 0];
  assert.deepEqual(
    Array.from(selectKeep(s, 10, { sink: 2, recent: 2, budget: 6 })),
    [0, 1, 4, 2, 8, 9].sort(),
  );
  // ties at score 1 (indices 3, 5, 7): the most recent wins
  assert.deepEqual(Array.from(selectKeep(s, 10, { sink: 1, recent: 1, budget: 6 })), [0, 2, 4, 6, 7, 9]);
  // budget >= n keeps all
  assert.deepEqual(Array.from(selectKeep(s, 10, { sink: 1, recent: 1, budget: 10 })), range(0, 10));
  // sinks + recent larger than the budget: sinks first, recent clipped
  assert.deepEqual(Array.from(selectKeep(s, 10, { sink: 3, recent: 5, budget: 4 })), [0, 1, 2, 9]);
  const r = selectKeep(s, 10, { sink: 0, recent: 0, budget: 3 });
  assert.ok(r instanceof Int32Array);
  assert.deepEqual(Array.from(r), [2, 4, 6]);
});

Deno.test("a prune plan: K/V rows, positions (the cache) and scores (the table) move together", () => {
  const kv = new HostKVCache(SHAPE);
  appendRows(kv, 8);
  const t = new ScoreTable(2);
  t.update(kv, [Float32Array.from(range(0, 8)), Float32Array.from(range(100, 108))], 8, 1);
  const keep = Int32Array.of(0, 3, 7);
  kv.compact([null, keep]);
  t.compact(1, keep);
  assert.equal(kv.length(1), 3);
  assert.deepEqual(pos(kv, 1), [0, 3, 7]);
  assert.deepEqual(pos(kv, 0), range(0, 8));
  assert.deepEqual(Array.from(t.get(1)), [100, 103, 107]);
  assert.deepEqual(Array.from(t.get(0)), range(0, 8));
  assertRowsIntact(kv);
  // new rows keep counting positions from nextPos
  appendRows(kv, 1);
  assert.deepEqual(pos(kv, 1), [0, 3, 7, 8]);
});

Deno.test("ScoreTable: decay math, S = S·γ^n + scores; out-of-sync caches are refused", () => {
  const kv = new HostKVCache(SHAPE);
  const t = new ScoreTable(2);
  appendRows(kv, 2);
  t.update(kv, [Float32Array.of(1, 2), Float32Array.of(3, 4)], 2, 0.5);
  appendRows(kv, 2);
  t.update(kv, [Float32Array.of(1, 1, 1, 1), Float32Array.of(0, 0, 0, 8)], 2, 0.5);
  assert.deepEqual(Array.from(t.get(0)), [1.25, 1.5, 1, 1]);
  assert.deepEqual(Array.from(t.get(1)), [0.75, 1, 0, 8]);
  appendRows(kv, 1);
  assert.throws(() => t.update(kv, undefined, 2, 0.5), /out of sync on layer 0/);
});

Deno.test("decay math: a prefill reporting decayed scores equals T decode steps", () => {
  // synthetic attention: query t (position t) attends to key j ≤ t with weight a(t, j)
  const a = (l: number, t: number, j: number) => ((t * 7 + j * 3 + l) % 5) / (t + 1);
  const T = 9, gamma = 0.9;
  const pf = createPolicy({ name: "lethe", gamma, initialTrigger: 1000 }, { nLayers: 2, contextLength: 64 });
  const kvA = new HostKVCache(SHAPE);
  const req = pf.scoreRequest("prefill", T)!;
  assert.deepEqual(req, { decay: gamma, window: T });
  // what a backend reports per ScoreRequest: Σ_t decay^(T-1-t) a(t, j) over the last `window` queries
  step(pf, kvA, T, (l, n) =>
    range(0, n).map((j) => {
      let s = 0;
      for (let t = Math.max(0, T - req.window); t < T; t++) {
        if (j <= t) s += Math.pow(req.decay, T - 1 - t) * a(l, t, j);
      }
      return s;
    }), "prefill");
  const dec = createPolicy({ name: "lethe", gamma, initialTrigger: 1000 }, { nLayers: 2, contextLength: 64 });
  const kvB = new HostKVCache(SHAPE);
  for (let t = 0; t < T; t++) {
    assert.deepEqual(dec.scoreRequest("decode", 1), { decay: gamma, window: 1 });
    step(dec, kvB, 1, (l, n) => range(0, n).map((j) => a(l, n - 1, j)));
  }
  const sa = pf.exportState().scores, sb = dec.exportState().scores;
  for (let l = 0; l < 2; l++) {
    for (let j = 0; j < T; j++) assert.ok(Math.abs(sa[l][j] - sb[l][j]) < 1e-5, `layer ${l} row ${j}`);
  }
});

Deno.test("full: never prunes and asks for no scores", () => {
  const p = createPolicy({ name: "full" }, { nLayers: 2, contextLength: 16 });
  const kv = new HostKVCache(SHAPE);
  for (let i = 0; i < 40; i++) assert.equal(step(p, kv, 1, () => []).pruneEvents.length, 0);
  assert.equal(p.scoreRequest("decode", 1), undefined);
  assert.equal(kv.length(0), 40);
  assert.equal(p.stats.evicted, 0);
});

Deno.test("streaming: sinks + recent window, pruned at the budget every step", () => {
  const p = createPolicy({ name: "streaming", budget: 6, sink: 2 }, { nLayers: 2, contextLength: 512 });
  const kv = new HostKVCache(SHAPE);
  step(p, kv, 10, () => [], "prefill");
  assert.deepEqual(pos(kv, 0), [0, 1, 6, 7, 8, 9]);
  const ev = step(p, kv, 1, () => []);
  assert.deepEqual(ev.pruneEvents, [{ layer: 0, before: 7, after: 6 }, { layer: 1, before: 7, after: 6 }]);
  assert.deepEqual(pos(kv, 1), [0, 1, 7, 8, 9, 10]);
  assertRowsIntact(kv);
  assert.equal(p.stats.evicted, 10);
  assert.equal(p.stats.pruneRounds, 2);
});

Deno.test("h2o: accumulated attention (γ = 1) keeps heavy hitters beside sinks and the recent half", () => {
  const p = createPolicy({ name: "h2o", budget: 6, sink: 1, recentFraction: 0.5 }, {
    nLayers: 2,
    contextLength: 512,
  });
  assert.deepEqual(p.scoreRequest("prefill", 5), { decay: 1, window: 5 });
  const kv = new HostKVCache(SHAPE);
  // position 2 is hit once hard, position 4 a little on every step: accumulation makes 4 win
  step(p, kv, 5, (_l, n) => range(0, n).map((j) => (j === 2 ? 1 : 0)), "prefill");
  for (let i = 0; i < 4; i++) {
    step(p, kv, 1, (_l, n) => range(0, n).map((j) => (j === 4 ? 0.3 : j === 3 ? 0.2 : 0)));
  }
  // n = 9 > 6: sink 0, recent 3 (6, 7, 8), two heavy hitters: 4 (1.2) and 2 (1.0) beat 3 (0.8)
  assert.deepEqual(pos(kv, 0), [0, 2, 4, 6, 7, 8]);
  assertRowsIntact(kv);
});

Deno.test("tova: only the current query's attention decides", () => {
  const p = createPolicy({ name: "tova", budget: 4, sink: 1 }, { nLayers: 2, contextLength: 512 });
  assert.deepEqual(p.scoreRequest("decode", 1), { decay: 0, window: 1 });
  const kv = new HostKVCache(SHAPE);
  step(p, kv, 4, (_l, n) => range(0, n).map((j) => (j === 1 ? 100 : 0)), "prefill");
  // now the current query ignores position 1 and likes 2 and 4
  step(p, kv, 1, (_l, n) => range(0, n).map((j) => (j === 2 ? 0.5 : j === 4 ? 0.4 : j === 3 ? 0.1 : 0)));
  assert.deepEqual(pos(kv, 0), [0, 2, 3, 4]);
  step(p, kv, 1, (_l, n) => [0, 0.1, 0.05, 0.3, 0.2].slice(0, n));
  assert.deepEqual(pos(kv, 1), [0, 2, 4, 5]);
});

Deno.test("snapkv: observation-window votes, max-pooled, compress the prompt; window kept", () => {
  assert.deepEqual(Array.from(maxPool([0, 0, 5, 0, 0, 0, 1], 3)), [0, 5, 5, 5, 0, 1, 1]);
  const p = createPolicy({ name: "snapkv", budget: 7, sink: 1, window: 2, kernel: 3 }, {
    nLayers: 2,
    contextLength: 512,
  });
  assert.deepEqual(p.scoreRequest("prefill", 16), { decay: 1, window: 2 });
  const kv = new HostKVCache(SHAPE);
  step(p, kv, 16, (_l, n) => range(0, n).map((j) => (j === 8 ? 3 : j === 3 ? 1 : 0)), "prefill");
  // pooled votes: 7,8,9 = 3 (top), then 2,3,4 = 1: fill = 7 - 1 sink - 2 window = 4 → 7,8,9 and 4 (tie → recent)
  assert.deepEqual(pos(kv, 0), [0, 4, 7, 8, 9, 14, 15]);
  assertRowsIntact(kv);
  // decode beyond the budget: the ring of the last queries votes (position 4 now)
  step(p, kv, 1, (_l, n) => range(0, n).map((j) => (j === 1 ? 1 : 0)));
  assert.equal(kv.length(0), 7);
  assert.ok(pos(kv, 0).includes(4) && pos(kv, 0).includes(16) && pos(kv, 0).includes(15));
});

Deno.test("pyramidkv: per-layer pyramid averaging the budget, lower layers more", () => {
  assert.deepEqual(pyramidBudgets(100, 5, 20), [195, 147, 100, 52, 5]);
  const b = pyramidBudgets(128, 5, 20);
  assert.ok(b.reduce((x, y) => x + y) <= 640 && b.reduce((x, y) => x + y) >= 635);
  const p = createPolicy({ name: "pyramidkv", budget: 8, beta: 4, sink: 1, window: 1, kernel: 1 }, {
    nLayers: 2,
    contextLength: 512,
  }) as PyramidKVPolicy;
  assert.deepEqual(p.budgets, [14, 2]);
  const kv = new HostKVCache(SHAPE);
  step(p, kv, 20, (_l, n) => range(0, n).map((j) => j % 3), "prefill");
  assert.equal(kv.length(0), 14);
  assert.equal(kv.length(1), 2);
  assert.deepEqual(pos(kv, 1), [0, 19]);
});

Deno.test("lethe: the breakpoint rule picks the first boundary with S[0]/S[b] ≥ tau", () => {
  const sorted = [1000, 900, 800, 500, 100, 9, 2, 1];
  // 4 segments over 8: boundaries 2, 4, 6 → ratios 1.25, 10, 500
  assert.equal(findBreakpoint(sorted, 4, 400), 6);
  assert.equal(findBreakpoint(sorted, 4, 10), 4);
  assert.equal(findBreakpoint(sorted, 4, 1000), -1);
  assert.equal(findBreakpoint([1, 1, 1, 1], 4, 2), -1);
  assert.equal(findBreakpoint([3, 0, 0, 0], 2, 400), 2); // zero scores: infinitely sparse
});

Deno.test("lethe adaptive: prunes a sparse layer at its trigger, backs off (doubles T) on a flat one", () => {
  const p = createPolicy(
    { name: "lethe", initialTrigger: 20, tau: 100, segments: 4, sink: 2, recentRatio: 0.25, gamma: 1 },
    { nLayers: 2, contextLength: 512 },
  ) as LethePolicy;
  const kv = new HostKVCache(SHAPE);
  // layer 0 sparse: positions 5 and 9 hot, the rest tiny; layer 1 flat
  const sc = (l: number, n: number) =>
    range(0, n).map((j) => (l === 1 ? 1 : j === 5 ? 10 : j === 9 ? 9 : 0.01));
  step(p, kv, 20, sc, "prefill");
  assert.equal(kv.length(0), 20); // not above the trigger yet
  const ev = step(p, kv, 1, sc);
  // layer 0: n = 21, sink 2, recent round(5.25) = 5 → middle = 2..15 (14 rows), sorted: 10, 9, 0.01, …
  // boundaries round(14/4·i) = 4, 7, 10 → S[0]/S[4] = 1000 ≥ 100 → keep top 4 of the middle
  assert.deepEqual(ev.pruneEvents, [{ layer: 0, before: 21, after: 11 }]);
  assert.deepEqual(pos(kv, 0), [0, 1, 5, 9, 14, 15, 16, 17, 18, 19, 20]);
  assert.deepEqual(p.triggers, [20, 40]);
  assertRowsIntact(kv);
  // layer 1 stays flat: the next time it passes its trigger it backs off again
  for (let i = 0; i < 20; i++) step(p, kv, 1, sc);
  assert.equal(kv.length(1), 41);
  assert.deepEqual(p.triggers.slice(1), [80]);
});

Deno.test("lethe fixed: the total budget is split by density and respected across layers", () => {
  assert.deepEqual(splitBudget(100, [3, 1], 10), [70, 30]);
  assert.deepEqual(splitBudget(100, [1, 0], 10), [90, 10]);
  const p = createPolicy(
    {
      name: "lethe",
      mode: "fixed",
      select: "layer",
      budget: 32,
      slack: 4,
      sink: 2,
      minLayer: 4,
      recentRatio: 0.25,
    },
    { nLayers: 2, contextLength: 512 },
  ) as LethePolicy;
  const kv = new HostKVCache(SHAPE);
  // layer 0 sparse (one hot token per 10), layer 1 flat (dense)
  const sc = (l: number, n: number) =>
    range(0, n).map((j) => (l === 1 ? 1 / n : kv.positions(l)[j] % 10 === 3 ? 0.5 : 0.001));
  let peakTotal = 0;
  for (let i = 0; i < 200; i++) {
    step(p, kv, 1, sc);
    peakTotal = Math.max(peakTotal, kv.length(0) + kv.length(1));
    if (kv.length(0) + kv.length(1) > 64) {
      assert.ok(kv.length(0) <= p.layerBudgets[0] + 4 && kv.length(1) <= p.layerBudgets[1] + 4);
    }
  }
  assert.ok(p.layerBudgets[0] + p.layerBudgets[1] <= 64);
  assert.ok(p.layerBudgets[1] > p.layerBudgets[0], `dense layer gets more: ${p.layerBudgets}`);
  assert.ok(peakTotal <= 64 + 2 * 4, `peak ${peakTotal}`);
  const d = p.densities(kv);
  assert.ok(d[0] < d[1], `densities ${d}`);
  assert.ok(Math.abs(hoyer([0, 0, 1, 0]) - 1) < 1e-9 && hoyer([1, 1, 1, 1]) === 0);
  assertRowsIntact(kv);
  // the sparse layer kept all its hot tokens (positions ≡ 3 mod 10) among the older rows, and little else
  const kept0 = pos(kv, 0);
  for (let x = 3; x < 180; x += 10) assert.ok(kept0.includes(x), `hot ${x} kept: ${kept0}`);
  assert.ok(kept0.filter((x) => x >= 2 && x < 180 && x % 10 !== 3).length <= 2, `kept ${kept0}`);
});

Deno.test("lethe fixed global: lowest scores over all layers go; total exact; sinks, recent, floor kept", () => {
  const p = createPolicy(
    {
      name: "lethe",
      mode: "fixed",
      budget: 10,
      slack: 0,
      sink: 1,
      recentRatio: 0.2,
      minLayer: 3,
      gamma: 1,
      farPower: 0,
    },
    { nLayers: 2, contextLength: 512 },
  ) as LethePolicy;
  const kv = new HostKVCache(SHAPE);
  // layer 0 peaked: positions 3, 7 and 11 hot, the rest ~0; layer 1 flat (every row 1/n)
  const sc = (l: number, n: number) =>
    range(0, n).map((j) => {
      const x = kv.positions(l)[j];
      return l === 1 ? 1 / n : x === 3 || x === 7 || x === 11 ? 1 : 0.0001;
    });
  step(p, kv, 20, sc, "prefill");
  // 40 rows > 20: 20 go. Recent = round(0.2·10) = 2 per layer, sink 1. Layer 0's 14 cold middle rows score
  // 1e-4 < layer 1's 0.05, but layer 0 keeps at least minLayer = 3 middle rows (its 3 hot ones), so its 14
  // cold rows go and the 6 lowest of layer 1 (ties: the older) make up the rest.
  assert.equal(kv.length(0) + kv.length(1), 20);
  assert.deepEqual(pos(kv, 0), [0, 3, 7, 11, 18, 19]);
  assert.deepEqual(pos(kv, 1), [0, ...range(7, 20)]);
  assert.deepEqual(p.layerBudgets, [6, 14]);
  assertRowsIntact(kv);
  // decoding on: the total never exceeds the budget (slack 0) and the hot rows stay
  for (let i = 0; i < 30; i++) {
    step(p, kv, 1, sc);
    assert.ok(kv.length(0) + kv.length(1) <= 20);
  }
  for (const x of [3, 7, 11]) assert.ok(pos(kv, 0).includes(x), `hot ${x}: ${pos(kv, 0)}`);
});

Deno.test("lethe far-attention decay: a layer attending far back gets γ → 1, a local one keeps γ", () => {
  assert.equal(farGamma(0.9, 0, 16), 0.9);
  assert.equal(farGamma(0.9, 1, 16), 1);
  assert.ok(Math.abs(farGamma(0.9, 0.5, 1) - 0.95) < 1e-12);
  assert.equal(farGamma(0.9, 0.7, 0), 0.9); // power 0: the paper's fixed γ
  const p = createPolicy(
    { name: "lethe", mode: "fixed", budget: 1000, farAge: 8, sink: 1 },
    { nLayers: 2, contextLength: 4096 },
  ) as LethePolicy;
  const kv = new HostKVCache(SHAPE);
  // layer 0 puts half its (non-sink) attention on position 1 (far once t > 9), layer 1 only on the newest row
  const sc = (l: number, n: number) =>
    range(0, n).map((j) => (l === 0 ? (j === 1 ? 0.5 : j === n - 1 ? 0.5 : 0) : j === n - 1 ? 1 : 0));
  for (let i = 0; i < 400; i++) step(p, kv, 1, sc);
  // (the first measurement, before row 1 was far, counted 0 with a tiny weight)
  assert.ok(Math.abs(p.farShare(0) - 0.5) < 1e-3, `far share ${p.farShare(0)}`);
  assert.equal(p.farShare(1), 0);
  assert.ok(Math.abs(p.gammas[0] - farGamma(0.9, p.farShare(0), 16)) < 1e-12 && p.gammas[0] > 0.9999);
  assert.equal(p.gammas[1], 0.9);
  // and the scores really decay per layer: row 2 got attention only at t = 2 (as the newest row)
  const s = p.exportState().scores;
  assert.ok(Math.abs(s[1][2] / Math.pow(0.9, 397) - 1) < 1e-4, `layer 1 row 2: ${s[1][2]}`);
  assert.ok(s[0][1] > 100, `layer 0 keeps accumulating row 1: ${s[0][1]}`);
});

Deno.test("state export/import round trip continues identically; mismatches throw", () => {
  const sc = (l: number, n: number) => range(0, n).map((j) => ((j * 13 + l * 7) % 11) / 11);
  for (const name of POLICY_NAMES) {
    const spec = { name, ...(name === "full" ? {} : { budget: 12 }) };
    const a = createPolicy(spec, { nLayers: 2, contextLength: 64 });
    const kvA = new HostKVCache(SHAPE);
    step(a, kvA, 10, sc, "prefill");
    for (let i = 0; i < 15; i++) step(a, kvA, 1, sc);
    const state = a.exportState();
    const json = JSON.parse(JSON.stringify({ ...state, scores: state.scores.map((s) => Array.from(s)) }));
    const b = createPolicy(spec, { nLayers: 2, contextLength: 64 });
    const kvB = kvA.toHost();
    b.importState({ scores: json.scores.map((s: number[]) => Float32Array.from(s)), meta: json.meta }, kvB);
    assert.deepEqual(b.stats, a.stats, name);
    for (let i = 0; i < 10; i++) {
      step(a, kvA, 1, sc);
      step(b, kvB, 1, sc);
    }
    for (let l = 0; l < 2; l++) assert.deepEqual(pos(kvB, l), pos(kvA, l), `${name} layer ${l}`);
    assert.deepEqual(b.exportState().scores, a.exportState().scores, name);
    const short = new HostKVCache(SHAPE);
    appendRows(short, 3);
    const fresh = createPolicy(spec, { nLayers: 2, contextLength: 64 });
    assert.throws(() => fresh.importState(a.exportState(), short), /cache holds 3 rows/, name);
  }
  const l = createPolicy({ name: "lethe" }, { nLayers: 2, contextLength: 64 });
  assert.throws(
    () =>
      l.importState(
        createPolicy({ name: "h2o" }, { nLayers: 2, contextLength: 64 }).exportState(),
        new HostKVCache(SHAPE),
      ),
    /is for policy "h2o"/,
  );
});

Deno.test("param validation: clear errors naming the policy and the param; defaults filled", () => {
  const shape = { nLayers: 2, contextLength: 512 };
  assert.throws(
    () => createPolicy({ name: "nope" }, shape),
    /unknown KV policy "nope" \(known: full, streaming/,
  );
  assert.throws(
    () => createPolicy({ name: "lethe", gamma: 1.5 }, shape),
    /lethe: param "gamma": must be in \(0, 1\]/,
  );
  assert.throws(() => createPolicy({ name: "lethe", gamma: 0 }, shape), /param "gamma"/);
  assert.throws(() => createPolicy({ name: "lethe", gamma: "x" }, shape), /param "gamma"/);
  assert.throws(() => createPolicy({ name: "h2o", budget: -1 }, shape), /h2o: param "budget": must be > 0/);
  assert.throws(() => createPolicy({ name: "lethe", mode: "greedy" }, shape), /param "mode"/);
  assert.throws(() => createPolicy({ name: "snapkv", kernel: 4 }, shape), /param "kernel": must be odd/);
  assert.throws(
    () => createPolicy({ name: "tova", gama: 1 }, shape),
    /tova: unknown param "gama" \(known: budget/,
  );
  assert.throws(() => createPolicy({} as never, shape), /kv_policy.name must be a string/);
  const l = createPolicy({ name: "lethe" }, shape);
  assert.deepEqual(l.params, {
    mode: "adaptive",
    gamma: 0.9,
    tau: 400,
    segments: 16,
    sink: 4,
    recentRatio: 0.5,
    initialTrigger: 128,
    budget: 0.25,
    slack: 4,
    densityPower: 1,
    minLayer: 8,
    select: "global",
    farPower: 16,
    farAge: 64,
  });
  assert.equal(
    (createPolicy({ name: "h2o", budget: 0.25 }, shape) as unknown as { budgetTokens: number }).budgetTokens,
    128,
  );
  assert.equal(policySpecSchema.safeParse({ name: "lethe", tau: 50 }).success, true);
  assert.equal(policySpecSchema.safeParse({ name: "lethe", bogus: 1 }).success, false);
  assert.equal(policySpecSchema.safeParse({ name: "zzz" }).success, false);
});

Deno.test("rewind: every policy drops the rows at positions ≥ p with their scores and rewinds nextPos", () => {
  const sc = (l: number, n: number) => range(0, n).map((j) => ((j * 13 + l * 7) % 11) / 11);
  for (const name of POLICY_NAMES) {
    const spec = { name, ...(name === "full" ? {} : { budget: 12 }) };
    const a = createPolicy(spec, { nLayers: 2, contextLength: 64 });
    const kv = new HostKVCache(SHAPE);
    step(a, kv, 10, sc, "prefill");
    for (let i = 0; i < 15; i++) step(a, kv, 1, sc);
    const before = [0, 1].map((l) => pos(kv, l));
    const scores = a.exportState().scores;
    const stats = { ...a.stats };
    a.rewind(kv, 18);
    assert.equal(kv.nextPos, 18, name);
    for (let l = 0; l < 2; l++) {
      const kept = before[l].filter((p) => p < 18);
      assert.deepEqual(pos(kv, l), kept, `${name} layer ${l}: rows before 18, pruned ones stay pruned`);
      assert.deepEqual(Array.from(a.exportState().scores[l]), Array.from(scores[l].subarray(0, kept.length)));
    }
    assertRowsIntact(kv);
    assert.deepEqual(a.stats, stats, `${name}: a rewind is not a pruning decision`);
    step(a, kv, 1, sc); // appends position 18 and carries on in sync
    assert.equal(pos(kv, 0).at(-1), 18, name);
    a.rewind(kv, 0);
    assert.deepEqual([kv.length(0), kv.length(1), kv.nextPos], [0, 0, 0], name);
    assert.throws(() => a.rewind(kv, 1), /outside \[0, 0\]/, name);
  }
});

Deno.test("rewind: refused while a prune plan is pending (nothing changes); once it is applied, it goes ahead", () => {
  const sc = (l: number, n: number) => range(0, n).map((j) => ((j * 5 + l * 3) % 7) / 7);
  const a = createPolicy({ name: "h2o", budget: 12 }, { nLayers: 2, contextLength: 64 });
  const kv = new HostKVCache(SHAPE);
  step(a, kv, 10, sc, "prefill");
  appendRows(kv, 6); // a step whose plan the next step would carry
  const scores = [0, 1].map((l) => Float32Array.from(sc(l, kv.length(l))));
  const { plan } = a.afterStep(kv, scores, 6, "decode");
  assert.ok(plan && plan.every((k) => k !== null && k.length === 12), "both layers pruned to the budget");
  const before = [0, 1].map((l) => pos(kv, l));
  assert.throws(
    () => a.rewind(kv, 8),
    /layer 0 has a prune plan pending \(the policy keeps 12 rows, the cache holds 16\); settle it first/,
  );
  assert.deepEqual([0, 1].map((l) => pos(kv, l)), before, "the cache is untouched");
  assert.equal(kv.nextPos, 16);
  assert.deepEqual(a.exportState().scores.map((s) => s.length), [12, 12], "the policy's state too");
  kv.compact(plan);
  const kept = [0, 1].map((l) => pos(kv, l));
  a.rewind(kv, 8);
  for (let l = 0; l < 2; l++) {
    assert.deepEqual(pos(kv, l), kept[l].filter((p) => p < 8), `layer ${l}: what the plan kept, before 8`);
    assert.equal(a.exportState().scores[l].length, kv.length(l));
  }
  assert.equal(kv.nextPos, 8);
  assertRowsIntact(kv);
});

Deno.test("limits: each policy reports what it holds each layer to, from its own state", () => {
  const shape = { nLayers: 2, contextLength: 64 };
  const kinds = (spec: { name: string; [k: string]: unknown }) => {
    const l = createPolicy(spec, shape).limits();
    return [l.kind, l.per_layer, l.total];
  };
  assert.deepEqual(kinds({ name: "full" }), ["none", null, null]);
  for (const name of ["streaming", "h2o", "tova", "snapkv"]) {
    assert.deepEqual(kinds({ name, budget: 12 }), ["budget", [12, 12], null], name);
  }
  const pyr = createPolicy({ name: "pyramidkv", budget: 12, beta: 2 }, shape) as PyramidKVPolicy;
  assert.deepEqual(pyr.limits().per_layer, pyr.budgets);
  assert.notEqual(pyr.budgets[0], pyr.budgets[1], "a pyramid, not one budget");
  assert.deepEqual(kinds({ name: "lethe", mode: "fixed", budget: 12, select: "global" }), [
    "budget",
    [12, 12],
    24,
  ]);
  assert.deepEqual(kinds({ name: "lethe", initialTrigger: 20 }), ["trigger", [20, 20], null]);
  // Lethe's triggers move: the limits follow them
  const a = createPolicy({ name: "lethe", initialTrigger: 8 }, shape) as LethePolicy;
  const kv = new HostKVCache(SHAPE);
  step(a, kv, 10, () => new Float32Array(10).fill(1), "prefill"); // flat scores: the triggers double
  assert.deepEqual(a.limits().per_layer, [16, 16]);
});
