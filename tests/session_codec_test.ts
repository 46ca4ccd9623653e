import assert from "node:assert/strict";
import zlib from "node:zlib";
import { HostKVCache } from "../src/kv/cache.ts";
import { createTsBackend } from "../src/engine/ts/backend.ts";
import { randomTokens, Rng, synthModel } from "./support/synthetic.ts";
import {
  crc32,
  decodeSnapshot,
  encodeSnapshot,
  encodeSnapshotWithStats,
  estimateRawBytes,
  type KVPrecision,
  readSnapshotHeader,
  type SessionSnapshot,
  SNAPSHOT_VERSION,
  SnapshotError,
  type SnapshotErrorCode,
} from "../src/session/codec.ts";

function rng(seed: number): () => number {
  let a = seed | 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const FP = "3f9a0c".padEnd(64, "e");

/** A stories260K-shaped cache (5 layers, 4 KV heads × 8), `n` tokens seen, layers pruned to different sizes. */
function sampleSnapshot(n = 260, seed = 1, shape = { nLayers: 5, nKVHeads: 4, headDim: 8 }): SessionSnapshot {
  const r = rng(seed);
  const gauss = () => Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r());
  const kv = new HostKVCache(shape);
  const d = shape.nKVHeads * shape.headDim;
  for (let t = 0; t < n; t++) {
    for (let l = 0; l < shape.nLayers; l++) {
      const k = new Float32Array(d), v = new Float32Array(d);
      for (let i = 0; i < d; i++) {
        k[i] = gauss() * (1 + (i % shape.headDim)) * 0.7;
        v[i] = gauss() * 0.3;
      }
      kv.append(l, k, v, t);
    }
  }
  kv.nextPos = n;
  const scores: Float32Array[] = [];
  for (let l = 0; l < shape.nLayers; l++) {
    // Keep 4 sinks, a layer-dependent sample of the middle and a recent window.
    const keep: number[] = [];
    for (let i = 0; i < n; i++) {
      if (i < 4 || i >= n - 30 || (i * (l + 3)) % 7 === 0) keep.push(i);
    }
    if (l === shape.nLayers - 1) keep.length = Math.min(keep.length, 10);
    kv.compact(Array.from({ length: shape.nLayers }, (_, j) => (j === l ? Int32Array.from(keep) : null)));
    scores.push(Float32Array.from({ length: keep.length }, () => r() * 3));
  }
  return {
    fingerprint: FP,
    tokens: Array.from({ length: n + 3 }, (_, i) => (i * 37 + 11) % 512),
    kv,
    policy: {
      name: "lethe",
      params: { tau: 400, recentRatio: 0.3, sinks: 4, gamma: 0.95 },
      state: { scores, meta: { triggers: [64, 64, 128, 64, 256], rounds: 3 } },
    },
    sampler: { temperature: 0.8, rng: [123456789, 362436069, 521288629, 88675123] },
    meta: { turns: [{ prompt: 17, generated: 40, finish: "stop" }], title: "ünïcödé ✓" },
  };
}

function f32bits(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length);
}

function assertSameExceptKV(a: SessionSnapshot, b: SessionSnapshot): void {
  assert.equal(b.fingerprint, a.fingerprint);
  assert.deepEqual(b.tokens, a.tokens);
  assert.deepEqual(b.kv.shape, a.kv.shape);
  assert.equal(b.kv.nextPos, a.kv.nextPos);
  for (let l = 0; l < a.kv.shape.nLayers; l++) {
    assert.equal(b.kv.length(l), a.kv.length(l));
    assert.deepEqual(Array.from(b.kv.positions(l)), Array.from(a.kv.positions(l)));
  }
  assert.equal(b.policy.name, a.policy.name);
  assert.deepEqual(b.policy.params, a.policy.params);
  assert.deepEqual(b.policy.state.meta, a.policy.state.meta);
  assert.equal(b.policy.state.scores.length, a.policy.state.scores.length);
  a.policy.state.scores.forEach((s, i) => assert.deepEqual(f32bits(b.policy.state.scores[i]), f32bits(s)));
  assert.deepEqual(b.sampler, a.sampler);
  assert.deepEqual(b.meta, a.meta);
}

function rows(kv: HostKVCache, l: number, which: "k" | "v"): Float32Array {
  return kv[which][l].subarray(0, kv.length(l) * kv.kvDim);
}

function expectCode(code: SnapshotErrorCode | SnapshotErrorCode[], fn: () => unknown, ctx = ""): void {
  const codes = Array.isArray(code) ? code : [code];
  try {
    fn();
  } catch (e) {
    if (!(e instanceof SnapshotError)) throw new Error(`${ctx}: expected SnapshotError, got ${e}`);
    assert.ok(codes.includes(e.code), `${ctx}: expected ${codes.join("|")}, got ${e.code}: ${e.message}`);
    assert.ok(e.message.length > 20, "message says what is wrong");
    return;
  }
  throw new Error(`${ctx}: decode did not throw (expected ${codes.join("|")})`);
}

/** Wrap an arbitrary raw payload in a valid envelope (correct lengths and CRC): forged input past the checksum. */
function seal(
  raw: Uint8Array,
  opts: { precision?: number; claimRaw?: number; deflate?: boolean; fingerprint?: string } = {},
): Uint8Array {
  const fp = new TextEncoder().encode(opts.fingerprint ?? FP);
  const deflate = opts.deflate ?? true;
  const payload = deflate ? new Uint8Array(zlib.deflateRawSync(raw, { level: 1 })) : raw;
  const hl = 18 + fp.length;
  const out = new Uint8Array(hl + 4 + payload.length);
  const dv = new DataView(out.buffer);
  out.set([0x4c, 0x53, 0x4e, 0x50]);
  dv.setUint16(4, SNAPSHOT_VERSION, true);
  out[6] = (deflate ? 1 : 0) | 2;
  out[7] = opts.precision ?? 0;
  dv.setUint32(8, opts.claimRaw ?? raw.length, true);
  dv.setUint32(12, payload.length, true);
  dv.setUint16(16, fp.length, true);
  out.set(fp, 18);
  out.set(payload, hl + 4);
  dv.setUint32(hl, crc32(payload, crc32(out.subarray(0, hl))), true);
  return out;
}

function rawPayloadOf(blob: Uint8Array): Uint8Array {
  const h = readSnapshotHeader(blob);
  const p = blob.subarray(blob.length - h.compressedBytes);
  return h.compressed ? new Uint8Array(zlib.inflateRawSync(p)) : p.slice();
}

Deno.test("codec: f32 round trip is bit-exact, with and without shuffle/deflate", () => {
  const s = sampleSnapshot();
  for (const o of [{}, { shuffle: false }, { level: 0 }, { level: 9, shuffle: false }]) {
    const blob = encodeSnapshot(s, { kvPrecision: "f32", ...o });
    const d = decodeSnapshot(blob, { fingerprint: FP });
    assertSameExceptKV(s, d);
    for (let l = 0; l < 5; l++) {
      assert.deepEqual(f32bits(rows(d.kv, l, "k")), f32bits(rows(s.kv, l, "k")));
      assert.deepEqual(f32bits(rows(d.kv, l, "v")), f32bits(rows(s.kv, l, "v")));
    }
  }
});

Deno.test("codec: f32 keeps NaN, ±Infinity and -0 bit patterns", () => {
  const s = sampleSnapshot(20);
  const k = s.kv.k[0];
  k[0] = NaN;
  k[1] = Infinity;
  k[2] = -Infinity;
  k[3] = -0;
  k[4] = 1e-45;
  const d = decodeSnapshot(encodeSnapshot(s, { kvPrecision: "f32" }));
  assert.deepEqual(f32bits(rows(d.kv, 0, "k")), f32bits(rows(s.kv, 0, "k")));
});

Deno.test("codec: f16 within half-precision rounding error, int8 within absmax/254 per row", () => {
  const s = sampleSnapshot();
  const { nKVHeads, headDim } = s.kv.shape;
  const f16 = decodeSnapshot(encodeSnapshot(s, { kvPrecision: "f16" }), { fingerprint: FP });
  const i8 = decodeSnapshot(encodeSnapshot(s, { kvPrecision: "int8" }), { fingerprint: FP });
  assertSameExceptKV(s, f16);
  assertSameExceptKV(s, i8);
  let maxRel16 = 0, maxRel8 = 0;
  for (let l = 0; l < 5; l++) {
    for (const w of ["k", "v"] as const) {
      const a = rows(s.kv, l, w), h = rows(f16.kv, l, w), q = rows(i8.kv, l, w);
      for (let i = 0; i < a.length; i++) {
        const err16 = Math.abs(a[i] - h[i]);
        assert.ok(err16 <= Math.max(Math.abs(a[i]) * 2 ** -11, 2 ** -25), `f16 ${a[i]} -> ${h[i]}`);
        maxRel16 = Math.max(maxRel16, err16 / Math.abs(a[i] || 1));
      }
      for (let row = 0; row < a.length / headDim; row++) {
        let amax = 0;
        for (let i = 0; i < headDim; i++) amax = Math.max(amax, Math.abs(a[row * headDim + i]));
        for (let i = 0; i < headDim; i++) {
          const j = row * headDim + i;
          const err = Math.abs(a[j] - q[j]);
          assert.ok(
            err <= amax / 254 * (1 + 1e-5) + 1e-30,
            `int8 row ${row}: ${a[j]} -> ${q[j]} (amax ${amax})`,
          );
          if (amax > 0) maxRel8 = Math.max(maxRel8, err / amax);
        }
      }
    }
  }
  assert.ok(maxRel16 > 0 && maxRel8 > 0, "lossy precisions really are lossy (and tested)");
  assert.equal(nKVHeads, 4);
});

Deno.test("codec: f16 rounds beyond ±65504 to ±inf like every f16 cache, int8 rejects non-finite, zeros stay", () => {
  const s = sampleSnapshot(10);
  s.kv.k[1][0] = 1e6;
  s.kv.k[1][1] = -7e4;
  s.kv.k[1][2] = 65519; // below the rounding midpoint: the largest half
  s.kv.v[2].fill(0, 0, s.kv.kvDim);
  const d = decodeSnapshot(encodeSnapshot(s, { kvPrecision: "f16" }));
  assert.equal(d.kv.k[1][0], Infinity);
  assert.equal(d.kv.k[1][1], -Infinity);
  assert.equal(d.kv.k[1][2], 65504);
  const q = decodeSnapshot(encodeSnapshot(s, { kvPrecision: "int8" }));
  assert.deepEqual(Array.from(q.kv.v[2].subarray(0, s.kv.kvDim)), new Array(s.kv.kvDim).fill(0));
  s.kv.k[0][5] = NaN;
  assert.throws(() => encodeSnapshot(s, { kvPrecision: "int8" }), /non-finite/);
});

Deno.test("codec: empty session and a decoded cache that keeps growing", () => {
  const kv = new HostKVCache({ nLayers: 3, nKVHeads: 2, headDim: 4 });
  const empty: SessionSnapshot = {
    fingerprint: "",
    tokens: [],
    kv,
    policy: { name: "full", params: {}, state: { scores: [], meta: {} } },
  };
  for (const p of ["f32", "f16", "int8"] as const) {
    const d = decodeSnapshot(encodeSnapshot(empty, { kvPrecision: p }));
    assert.equal(d.kv.totalTokens(), 0);
    assert.equal(d.sampler, undefined);
    assert.equal(d.meta, undefined);
    d.kv.append(0, new Float32Array(8).fill(1), new Float32Array(8).fill(2), 0);
    assert.equal(d.kv.length(0), 1);
  }
  const s = sampleSnapshot(40);
  const d = decodeSnapshot(encodeSnapshot(s, { kvPrecision: "f32" }));
  const before = d.kv.length(2);
  d.kv.append(2, new Float32Array(32).fill(5), new Float32Array(32).fill(6), d.kv.nextPos);
  assert.equal(d.kv.length(2), before + 1);
  assert.deepEqual(Array.from(d.kv.positions(2).subarray(0, before)), Array.from(s.kv.positions(2)));
  const live = new HostKVCache(s.kv.shape);
  live.loadFrom(decodeSnapshot(encodeSnapshot(s, { kvPrecision: "f32" })).kv);
  assert.equal(live.totalTokens(), s.kv.totalTokens());
});

Deno.test("codec: sizes and estimateRawBytes (stories260K shape, 260 tokens)", () => {
  const full = sampleSnapshot(260, 3);
  // Unpruned copy for the llama.cpp comparison (169,664 bytes for 260 tokens, f16).
  const r = rng(9);
  const kv = new HostKVCache(full.kv.shape);
  for (let t = 0; t < 260; t++) {
    for (let l = 0; l < 5; l++) {
      kv.append(
        l,
        Float32Array.from({ length: 32 }, () => r() * 2 - 1),
        Float32Array.from({ length: 32 }, () => r() - 0.5),
        t,
      );
    }
  }
  kv.nextPos = 260;
  const unpruned: SessionSnapshot = {
    ...full,
    kv,
    policy: { ...full.policy, state: { scores: [], meta: {} } },
  };
  const lines: string[] = [];
  for (const [name, s] of [["pruned", full], ["unpruned", unpruned]] as const) {
    for (const p of ["f32", "f16", "int8"] as KVPrecision[]) {
      const st = encodeSnapshotWithStats(s, { kvPrecision: p });
      assert.equal(st.rawBytes, estimateRawBytes(s, p));
      assert.equal(st.encodedBytes, st.bytes.length);
      assert.ok(st.encodedBytes <= st.rawBytes + 100);
      lines.push(
        `${name.padEnd(8)} ${
          p.padEnd(4)
        } rows=${s.kv.totalTokens()} kvF32=${st.kvF32Bytes} raw=${st.rawBytes} encoded=${st.encodedBytes}`,
      );
    }
  }
  console.log(lines.join("\n"));
});

Deno.test("codec: every flipped byte in a sample of offsets is caught with the right code", () => {
  const s = sampleSnapshot(120, 5);
  const t0 = performance.now();
  for (const p of ["f32", "int8"] as const) {
    const blob = encodeSnapshot(s, { kvPrecision: p });
    const hl = 18 + FP.length;
    const offsets = new Set<number>();
    for (let i = 0; i < hl + 8; i++) offsets.add(i);
    for (let i = hl; i < blob.length; i += 61) offsets.add(i);
    offsets.add(blob.length - 1);
    for (const off of offsets) {
      for (const mask of [0x01, 0x80, 0xff]) {
        const bad = blob.slice();
        bad[off] ^= mask;
        let want: SnapshotErrorCode[];
        if (off < 4) want = ["bad_magic"];
        else if (off < 6) want = ["bad_version"];
        else if ((off >= 12 && off < 18)) want = ["truncated", "malformed"]; // compressed length, fp length
        else want = ["checksum"];
        expectCode(want, () => decodeSnapshot(bad, { fingerprint: FP }), `${p} offset ${off} ^ ${mask}`);
      }
    }
  }
  const ms = performance.now() - t0;
  assert.ok(ms < 5000, `corruption sweep took ${ms} ms`);
});

Deno.test("codec: every truncation is 'truncated', trailing bytes 'malformed'", () => {
  const blob = encodeSnapshot(sampleSnapshot(60, 2), { kvPrecision: "f16" });
  const lengths = new Set<number>();
  for (let i = 0; i < 120; i++) lengths.add(i);
  for (let i = 120; i < blob.length; i += 37) lengths.add(i);
  lengths.add(blob.length - 1);
  for (const n of lengths) expectCode("truncated", () => decodeSnapshot(blob.subarray(0, n)), `length ${n}`);
  const longer = new Uint8Array(blob.length + 1);
  longer.set(blob);
  expectCode("malformed", () => decodeSnapshot(longer));
});

Deno.test("codec: wrong magic, future version, fingerprint mismatch", () => {
  const blob = encodeSnapshot(sampleSnapshot(30), { kvPrecision: "f32" });
  const gguf = blob.slice();
  gguf.set([0x47, 0x47, 0x55, 0x46]);
  expectCode("bad_magic", () => decodeSnapshot(gguf));
  expectCode("bad_magic", () => decodeSnapshot(new TextEncoder().encode('{"not":"a snapshot"}')));
  const v2 = blob.slice();
  new DataView(v2.buffer).setUint16(4, SNAPSHOT_VERSION + 1, true);
  expectCode("bad_version", () => decodeSnapshot(v2));
  expectCode("fingerprint_mismatch", () => decodeSnapshot(blob, { fingerprint: "00".repeat(32) }));
  // The fingerprint is readable without inflating, and decode without `expect` accepts any model.
  assert.equal(readSnapshotHeader(blob).fingerprint, FP);
  assert.equal(decodeSnapshot(blob).fingerprint, FP);
});

Deno.test("codec: zip bombs and lying inflated sizes are refused fast, without big allocations", () => {
  const t0 = performance.now();
  // Inflates to 64 MiB but claims 4 KiB: inflation stops at the claim.
  const bomb = new Uint8Array(zlib.deflateRawSync(new Uint8Array(64 << 20), { level: 9 }));
  const fp = new TextEncoder().encode(FP);
  const hl = 18 + fp.length;
  const forge = (payload: Uint8Array, claim: number) => {
    const out = new Uint8Array(hl + 4 + payload.length);
    const dv = new DataView(out.buffer);
    out.set([0x4c, 0x53, 0x4e, 0x50]);
    dv.setUint16(4, SNAPSHOT_VERSION, true);
    out[6] = 3;
    dv.setUint32(8, claim, true);
    dv.setUint32(12, payload.length, true);
    dv.setUint16(16, fp.length, true);
    out.set(fp, 18);
    out.set(payload, hl + 4);
    dv.setUint32(hl, crc32(payload, crc32(out.subarray(0, hl))), true);
    return out;
  };
  expectCode("malformed", () => decodeSnapshot(forge(bomb, 4096)), "bomb with small claim");
  // Claims more than deflate could ever produce from this many bytes.
  expectCode("malformed", () => decodeSnapshot(forge(bomb.subarray(0, 100), 0xffffffff)), "ratio");
  // Claims more than the caller's limit.
  expectCode("malformed", () => decodeSnapshot(forge(bomb, 64 << 20), { maxRawBytes: 1 << 20 }), "limit");
  // Not deflate at all.
  expectCode(
    "malformed",
    () => decodeSnapshot(forge(new Uint8Array([0xff, 0xfe, 0xfd, 0xfc]), 100)),
    "garbage",
  );
  assert.ok(performance.now() - t0 < 3000);
});

Deno.test("codec: forged payloads with lying counts are 'malformed' (checked before allocating)", () => {
  const good = rawPayloadOf(encodeSnapshot(sampleSnapshot(30), { kvPrecision: "f32" }));
  const u32 = (vals: number[]) => new Uint8Array(new Uint32Array(vals).buffer);
  const cases: [string, Uint8Array][] = [
    ["empty", new Uint8Array(0)],
    ["shape only", u32([5, 4, 8, 30])],
    ["huge layer count", u32([0xffffffff, 4, 8, 30])],
    ["zero heads", u32([5, 0, 8, 30])],
    ["huge kvDim", u32([1, 65536, 65536, 0])],
    // 2^31 tokens claimed with 5 bytes left.
    ["huge token count", new Uint8Array([...u32([1, 1, 1, 0]), 0x80, 0x80, 0x80, 0x80, 0x08])],
    ["varint overflow", new Uint8Array([...u32([1, 1, 1, 0]), 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])],
    // One layer claiming 1e6 rows.
    ["huge layer length", new Uint8Array([...u32([1, 1, 1, 0]), 0, 0xc0, 0x84, 0x3d])],
    ["fewer tokens than nextPos", new Uint8Array([...u32([0, 1, 1, 5]), 0, 0, 0])],
    ["cut payload", good.subarray(0, good.length - 7)],
    ["extra payload", new Uint8Array([...good, 0])],
  ];
  for (const [name, raw] of cases) {
    expectCode("malformed", () => decodeSnapshot(seal(raw)), name);
    expectCode("malformed", () => decodeSnapshot(seal(raw, { deflate: false })), `${name} (stored)`);
  }
  const badJson = good.slice();
  badJson[badJson.length - 1] = 0x7b; // last '}' -> '{'
  expectCode("malformed", () => decodeSnapshot(seal(badJson)), "bad JSON");
  expectCode("malformed", () => decodeSnapshot(seal(good, { precision: 7 })), "precision code");
  expectCode("malformed", () => decodeSnapshot(seal(good, { precision: 1 })), "wrong precision for data");
  // Sanity: the same helper with the right precision decodes.
  assert.equal(decodeSnapshot(seal(good)).tokens.length, 33);
});

Deno.test("codec: encode refuses inconsistent snapshots with a clear error", () => {
  const s = sampleSnapshot(20);
  assert.throws(
    () => encodeSnapshot({ ...s, tokens: s.tokens.slice(0, 5) }, { kvPrecision: "f32" }),
    /nextPos/,
  );
  assert.throws(
    () => encodeSnapshot({ ...s, tokens: [...s.tokens, -1] }, { kvPrecision: "f32" }),
    /bad token/,
  );
  assert.throws(() => encodeSnapshot(s, { kvPrecision: "q4" as KVPrecision }), /kvPrecision/);
  s.kv.pos[0][1] = 999;
  assert.throws(() => encodeSnapshot(s, { kvPrecision: "f32" }), /position 999/);
});

Deno.test("codec: an f16 snapshot of a cache holding values above 65504 resumes bit-exactly", async () => {
  // One f16 rule everywhere (src/model/f16.ts): a live f16 cache rounds 7e4 to inf as the row enters it, and the
  // snapshot codec encodes the same value to the same bits, so the resumed cache is the live one, bit for bit,
  // and decodes on exactly like it. An f32 cache's values come back as an f16 cache of them would hold them.
  const { config, weights } = synthModel({ rope: "half", bias: true, seed: 51, tied: false });
  const ts = createTsBackend(config, weights, { kvPrecision: "f16" });
  const live = ts.createKV() as HostKVCache;
  await ts.forward([{ kv: live, tokens: randomTokens(new Rng(52), 12, config.vocabSize), logits: "last" }]);
  const big = live.toHost();
  const huge = [7e4, -1e5, 65519, 65520, -65536, 1e38];
  huge.forEach((x, i) => {
    big.k[1][3 * big.kvDim + i] = x; // layer 1, row 3 (K) and row 5 (V)
    big.v[1][5 * big.kvDim + i] = -x;
  });
  live.loadFrom(big); // the live f16 cache rounds them as it takes them in
  assert.equal(live.k[1][3 * live.kvDim], Infinity);
  const snap: SessionSnapshot = {
    fingerprint: FP,
    tokens: Array.from({ length: 13 }, (_, i) => i % config.vocabSize),
    kv: live.toHost(),
    policy: { name: "full", params: {}, state: { scores: [], meta: {} } },
  };
  const restored = ts.createKV() as HostKVCache;
  restored.loadFrom(decodeSnapshot(encodeSnapshot(snap, { kvPrecision: "f16" })).kv);
  for (let l = 0; l < config.nLayers; l++) {
    const d = live.len[l] * live.kvDim;
    assert.deepEqual(restored.k[l].subarray(0, d), live.k[l].subarray(0, d), `layer ${l} K`);
    assert.deepEqual(restored.v[l].subarray(0, d), live.v[l].subarray(0, d), `layer ${l} V`);
    assert.deepEqual(restored.positions(l), live.positions(l));
  }
  const [a] = await ts.forward([{
    kv: live,
    tokens: [7],
    logits: "last",
    scores: { decay: 0.9, window: 1 },
  }]);
  const [b] = await ts.forward([{
    kv: restored,
    tokens: [7],
    logits: "last",
    scores: { decay: 0.9, window: 1 },
  }]);
  assert.deepEqual(b.logits, a.logits);
  assert.deepEqual(b.scores, a.scores);
  // An f32 cache holding the same values: its f16 snapshot holds exactly what an f16 cache of them would.
  const f32 = new HostKVCache(big.shape, 1, "f32");
  f32.loadFrom(big);
  const back = decodeSnapshot(encodeSnapshot({ ...snap, kv: f32 }, { kvPrecision: "f16" })).kv;
  for (let l = 0; l < config.nLayers; l++) {
    const d = f32.len[l] * f32.kvDim;
    for (let i = 0; i < d; i++) {
      assert.ok(Object.is(back.k[l][i], Math.f16round(f32.k[l][i])), `K ${f32.k[l][i]} -> ${back.k[l][i]}`);
      assert.ok(Object.is(back.v[l][i], Math.f16round(f32.v[l][i])), `V ${f32.v[l][i]} -> ${back.v[l][i]}`);
    }
  }
});
