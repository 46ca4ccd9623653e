/**
 * The policies' fast selection (partial selection, ring buffers, reused scratch, O(1) streaming) makes the
 * same decisions as the straightforward definitions: full sorts, fresh arrays, per-vector rings. Each
 * policy runs on synthetic score streams (continuous, and coarsely quantised for many ties) next to a
 * reference kept here, and the kept positions of every layer must agree after every step.
 */
import assert from "node:assert/strict";
import { HostKVCache } from "../src/kv/cache.ts";
import type { Phase, PolicySpec } from "../src/kv/contract.ts";
import { createPolicy } from "../src/kv/registry.ts";
import { hoyer, KeepSelector, type KeepSpec, maxPool, nthByScore, selectKeep } from "../src/kv/select.ts";
import { findBreakpoint } from "../src/kv/policies/lethe.ts";
import { pyramidBudgets, splitBudget } from "../src/kv/budget.ts";
import { farGamma } from "../src/kv/far_decay.ts";

// ---- the reference: straightforward definitions (full sorts, fresh arrays) ----

/** Middle candidates by score descending, ties to the larger index (a full sort). */
function refRank(s: ArrayLike<number>, from: number, to: number): number[] {
  const idx: number[] = [];
  for (let i = from; i < to; i++) idx.push(i);
  return idx.sort((a, b) => (s[b] - s[a]) || (b - a));
}

function refSelectKeep(s: ArrayLike<number>, n: number, spec: KeepSpec): number[] {
  const budget = Math.max(0, Math.floor(spec.budget));
  if (budget >= n) return Array.from({ length: n }, (_, i) => i);
  const sk = Math.min(Math.max(0, Math.floor(spec.sink)), budget);
  const r = Math.min(Math.max(0, Math.floor(spec.recent)), budget - sk);
  const mark = new Array(n).fill(false);
  for (let i = 0; i < sk; i++) mark[i] = true;
  for (let i = n - r; i < n; i++) mark[i] = true;
  for (const i of refRank(s, sk, n - r).slice(0, budget - sk - r)) mark[i] = true;
  return mark.flatMap((m, i) => (m ? [i] : []));
}

/** Deterministic pseudo-random in [0, 1) from integers. */
function hash01(...xs: number[]): number {
  let h = 2166136261;
  for (const x of xs) {
    h = Math.imul(h ^ (x & 0xffff), 16777619);
    h = Math.imul(h ^ (x >>> 16), 16777619);
  }
  h ^= h >>> 15;
  h = Math.imul(h, 0x2c1b3c6d);
  h ^= h >>> 12;
  return (h >>> 0) / 2 ** 32;
}

interface Stream {
  steps: number;
  nNew(t: number): number;
  /** Score of the j-th cached row of layer l at step t (rows in cache order). */
  score(t: number, l: number, j: number): number;
}

function stream(seed: number, quant: number): Stream {
  return {
    steps: 160,
    nNew: (t) => (t === 0 ? 30 : t % 41 === 0 ? 3 : 1),
    score: (t, l, j) => {
      const x = hash01(seed, t, l, j) * (l === 1 ? 1 : hash01(seed + 1, t, l, j));
      return quant ? Math.round(x * quant) / quant : x;
    },
  };
}

const phaseOf = (t: number): Phase => (t === 0 ? "prefill" : "decode");

/** The reference run: per step, per layer, the kept positions. */
function refRun(spec: Record<string, number | string>, L: number, ctx: number, st: Stream): number[][][] {
  const name = spec.name as string;
  const budget = Number(spec.budget);
  const sink = Number(spec.sink ?? 4);
  const pos: number[][] = Array.from({ length: L }, () => []);
  let S: Float32Array[] = Array.from({ length: L }, () => new Float32Array(0));
  const ring: Float32Array[][] = Array.from({ length: L }, () => []);
  const far = {
    sum: new Array(L).fill(0),
    w: new Array(L).fill(0),
    gammas: new Array(L).fill(spec.gamma ?? 0.9),
  };
  const triggers = new Array(L).fill(spec.initialTrigger ?? 128);
  let nextPos = 0;
  const out: number[][][] = [];
  const compact = (l: number, keep: number[]) => {
    pos[l] = keep.map((i) => pos[l][i]);
    S[l] = Float32Array.from(keep, (i) => S[l][i]);
    ring[l] = ring[l].map((e) => Float32Array.from(keep, (i) => (i < e.length ? e[i] : 0)));
  };
  for (let t = 0; t < st.steps; t++) {
    const nNew = st.nNew(t), phase = phaseOf(t);
    for (let l = 0; l < L; l++) for (let i = 0; i < nNew; i++) pos[l].push(nextPos + i);
    nextPos += nNew;
    const scores = pos.map((p, l) => Float32Array.from(p, (_, j) => st.score(t, l, j)));
    const decay = (l: number) =>
      name === "h2o" ? 1 : name === "lethe" ? far.gammas[l] : name === "streaming" ? 1 : 0;
    S = S.map((s, l) => {
      const f = Math.pow(decay(l), nNew);
      const next = new Float32Array(pos[l].length);
      for (let j = 0; j < s.length; j++) next[j] = f === 1 ? s[j] : s[j] * f;
      if (name !== "streaming") { for (let j = 0; j < next.length; j++) next[j] += scores[l][j]; }
      return next;
    });
    if (name === "streaming" || name === "h2o" || name === "tova") {
      const recent = name === "streaming"
        ? budget
        : name === "h2o"
        ? Math.round(Number(spec.recentFraction ?? 0.5) * budget)
        : Number(spec.recent ?? 0);
      for (let l = 0; l < L; l++) {
        if (pos[l].length > budget) compact(l, refSelectKeep(S[l], pos[l].length, { sink, recent, budget }));
      }
    } else if (name === "snapkv" || name === "pyramidkv") {
      const window = Number(spec.window ?? 32), kernel = Number(spec.kernel ?? 7);
      const budgets = name === "pyramidkv"
        ? pyramidBudgets(budget, L, Number(spec.beta ?? 20))
        : new Array(L).fill(budget);
      for (let l = 0; l < L; l++) {
        if (phase === "prefill") ring[l] = [];
        ring[l].push(scores[l].slice());
        if (ring[l].length > window) ring[l].shift();
      }
      for (let l = 0; l < L; l++) {
        const n = pos[l].length;
        if (n <= budgets[l]) continue;
        const sum = new Float32Array(n);
        for (const e of ring[l]) for (let i = 0; i < e.length; i++) sum[i] += e[i];
        const recent = phase === "prefill" ? Math.min(window, nNew) : window;
        compact(l, refSelectKeep(maxPool(sum, kernel), n, { sink, recent, budget: budgets[l] }));
      }
    } else if (name === "lethe") {
      const p = {
        gamma: 0.9,
        farPower: 16,
        farAge: 64,
        recentRatio: 0.5,
        slack: 4,
        minLayer: 8,
        densityPower: 1,
        tau: 400,
        segments: 16,
        ...spec,
      } as Record<string, number | string>;
      const n0 = (k: string) => Number(p[k]);
      if (n0("farPower") > 0 && nNew === 1 && nextPos - 1 > n0("farAge")) {
        const now = nextPos - 1;
        for (let l = 0; l < L; l++) {
          let tot = 0, fa = 0;
          for (let j = Math.min(sink, pos[l].length); j < pos[l].length; j++) {
            tot += scores[l][j];
            if (now - pos[l][j] > n0("farAge")) fa += scores[l][j];
          }
          if (tot > 0) {
            far.sum[l] = 0.99 * far.sum[l] + 0.01 * (fa / tot);
            far.w[l] = 0.99 * far.w[l] + 0.01;
          }
          far.gammas[l] = farGamma(n0("gamma"), far.w[l] > 0 ? far.sum[l] / far.w[l] : 0, n0("farPower"));
        }
      }
      const lens = pos.map((x) => x.length);
      const sum = lens.reduce((a, b) => a + b, 0);
      const total = budget * L;
      if (p.mode === "fixed" && p.select !== "layer" && sum > total + n0("slack") * L) {
        // global: the lowest scores over all layers go, sinks / recent / minLayer middle rows exempt
        const recent = Math.round(n0("recentRatio") * budget);
        const cands: { l: number; j: number; s: number }[] = [];
        const spare: number[] = [];
        for (let l = 0; l < L; l++) {
          const n = lens[l], s = Math.min(sink, n), r = Math.min(recent, n - s);
          spare.push(Math.max(0, n - s - r - n0("minLayer")));
          for (let j = s; j < n - r; j++) cands.push({ l, j, s: S[l][j] });
        }
        cands.sort((a, b) => a.s - b.s || a.j - b.j);
        const gone = Array.from({ length: L }, () => new Set<number>());
        let excess = sum - total;
        for (const c of cands) {
          if (excess <= 0) break;
          if (spare[c.l] <= 0) continue;
          gone[c.l].add(c.j);
          spare[c.l]--;
          excess--;
        }
        for (let l = 0; l < L; l++) {
          compact(l, Array.from({ length: lens[l] }, (_, i) => i).filter((j) => !gone[l].has(j)));
        }
      } else if (p.mode === "fixed" && p.select === "layer" && sum > total) {
        const dens = S.map((s, l) => {
          const m = s.subarray(Math.min(lens[l], sink));
          return m.length > 1 ? Math.pow(Math.max(1e-6, 1 - hoyer(m)), n0("densityPower")) : 1;
        });
        const lb = splitBudget(total, dens, sink + n0("minLayer"));
        for (let l = 0; l < L; l++) {
          if (lens[l] <= lb[l] + n0("slack")) continue;
          compact(
            l,
            refSelectKeep(S[l], lens[l], {
              sink,
              recent: Math.round(n0("recentRatio") * lb[l]),
              budget: lb[l],
            }),
          );
        }
      } else if (p.mode !== "fixed") {
        for (let l = 0; l < L; l++) {
          const n = lens[l];
          if (n <= triggers[l]) continue;
          const s = Math.min(sink, n), r = Math.min(Math.round(n0("recentRatio") * n), n - s);
          const sorted = Float32Array.from(refRank(S[l], s, n - r), (i) => S[l][i]);
          const b = findBreakpoint(sorted, n0("segments"), n0("tau"));
          if (b < 0) {
            triggers[l] *= 2;
            continue;
          }
          const keep = refSelectKeep(S[l], n, { sink: s, recent: r, budget: s + r + b });
          compact(l, keep);
          if (keep.length >= triggers[l]) triggers[l] *= 2;
        }
      }
    }
    out.push(pos.map((p) => [...p]));
  }
  void ctx;
  return out;
}

/** The policy under test on the same stream. */
function run(spec: PolicySpec, L: number, ctx: number, st: Stream): number[][][] {
  const policy = createPolicy(spec, { nLayers: L, contextLength: ctx });
  const kv = new HostKVCache({ nLayers: L, nKVHeads: 1, headDim: 1 });
  const out: number[][][] = [];
  for (let t = 0; t < st.steps; t++) {
    const nNew = st.nNew(t), phase = phaseOf(t);
    for (let i = 0; i < nNew; i++) {
      for (let l = 0; l < L; l++) kv.append(l, Float32Array.of(0), Float32Array.of(0), kv.nextPos + i);
    }
    kv.nextPos += nNew;
    const req = policy.scoreRequest(phase, nNew);
    const scores = req
      ? Array.from({ length: L }, (_, l) => Float32Array.from(kv.positions(l), (_, j) => st.score(t, l, j)))
      : undefined;
    const { plan } = policy.afterStep(kv, scores, nNew, phase);
    if (plan) kv.compact(plan); // as the next forward step would
    out.push(Array.from({ length: L }, (_, l) => Array.from(kv.positions(l))));
  }
  return out;
}

const SPECS: Record<string, number | string>[] = [
  { name: "streaming", budget: 20 },
  { name: "streaming", budget: 3, sink: 5 },
  { name: "h2o", budget: 20 },
  { name: "h2o", budget: 20, recentFraction: 0, sink: 0 },
  { name: "tova", budget: 20 },
  { name: "tova", budget: 20, recent: 3, sink: 0 },
  { name: "snapkv", budget: 20 },
  { name: "snapkv", budget: 24, window: 4, kernel: 3 },
  { name: "pyramidkv", budget: 20, window: 3, beta: 2 },
  { name: "lethe", mode: "fixed", budget: 20 },
  { name: "lethe", mode: "fixed", budget: 20, slack: 0, minLayer: 0, farAge: 8 },
  { name: "lethe", mode: "fixed", budget: 20, minLayer: 30 },
  { name: "lethe", mode: "fixed", budget: 20, select: "layer" },
  { name: "lethe", initialTrigger: 24, tau: 3 },
];

for (const spec of SPECS) {
  Deno.test(`reference agreement: ${JSON.stringify(spec)} keeps the same rows at every step`, () => {
    const L = 3, ctx = 256;
    let pruned = 0;
    for (const [seed, quant] of [[1, 0], [2, 4], [3, 32], [4, 1]]) {
      const st = stream(seed, quant);
      const want = refRun(spec, L, ctx, st);
      const got = run(spec as PolicySpec, L, ctx, st);
      for (let t = 0; t < st.steps; t++) {
        for (let l = 0; l < L; l++) {
          assert.deepEqual(got[t][l], want[t][l], `seed ${seed} quant ${quant} step ${t} layer ${l}`);
        }
      }
      const last = want[st.steps - 1];
      pruned += last.reduce((a, p) => a + (p.length < st.nNew(0) + st.steps - 1 ? 1 : 0), 0);
    }
    assert.ok(pruned > 0, "the streams make the policy prune");
  });
}

Deno.test("KeepSelector and nthByScore agree with the full sort (ties included), buffers reused", () => {
  const sel = new KeepSelector();
  for (let trial = 0; trial < 400; trial++) {
    const n = 1 + Math.floor(hash01(trial, 1) * 90);
    const q = [0, 1, 3, 100][trial % 4];
    const s = Float32Array.from({ length: n }, (_, i) => {
      const x = hash01(trial, 2, i);
      return q ? Math.round(x * q) / q : x;
    });
    const spec = {
      sink: Math.floor(hash01(trial, 3) * 6),
      recent: Math.floor(hash01(trial, 4) * 12),
      budget: Math.floor(hash01(trial, 5) * (n + 4)),
    };
    const want = refSelectKeep(s, n, spec);
    assert.deepEqual(Array.from(sel.select(s, n, spec)), want, `trial ${trial}`);
    assert.deepEqual(Array.from(selectKeep(s, n, spec)), want, `trial ${trial}`);
    const ranked = refRank(s, 0, n);
    const idx = Int32Array.from({ length: n }, (_, i) => i);
    const k = Math.floor(hash01(trial, 6) * n);
    nthByScore(s, idx, 0, n - 1, k);
    assert.equal(idx[k], ranked[k]);
    assert.deepEqual([...idx.subarray(0, k)].sort((a, b) => a - b), ranked.slice(0, k).sort((a, b) => a - b));
  }
});
