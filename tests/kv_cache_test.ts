import assert from "node:assert/strict";
import { HostKVCache } from "../src/kv/cache.ts";

const shape = { nLayers: 2, nKVHeads: 2, headDim: 2 };
const row = (x: number) => new Float32Array([x, x + 0.25, x + 0.5, x + 0.75]);
/** A plan that compacts one layer of the two. */
const plan = (layer: number, keep: Int32Array) => [0, 1].map((l) => (l === layer ? keep : null));

function filled(n: number): HostKVCache {
  const kv = new HostKVCache(shape, 1);
  for (let p = 0; p < n; p++) {
    for (let l = 0; l < 2; l++) kv.append(l, row(p * 10 + l), row(-(p * 10 + l)), p);
    kv.nextPos = p + 1;
  }
  return kv;
}

Deno.test("kv cache: append grows capacity and keeps every row and position", () => {
  const kv = filled(40);
  assert.equal(kv.length(0), 40);
  assert.ok(kv.capacity(0) >= 40);
  assert.deepEqual(Array.from(kv.positions(1)), Array.from({ length: 40 }, (_, i) => i));
  assert.deepEqual(Array.from(kv.k[1].subarray(39 * 4, 40 * 4)), Array.from(row(391)));
  assert.deepEqual(Array.from(kv.v[0].subarray(7 * 4, 8 * 4)), Array.from(row(-70)));
  assert.equal(kv.bytes(), 2 * 40 * 4 * 2 * 4);
});

Deno.test("kv cache: compact keeps the chosen rows in order, with their original positions, per layer", () => {
  const kv = filled(10);
  kv.compact(plan(0, new Int32Array([0, 3, 4, 9])));
  assert.equal(kv.length(0), 4);
  assert.equal(kv.length(1), 10, "other layers untouched");
  assert.deepEqual(Array.from(kv.positions(0)), [0, 3, 4, 9]);
  assert.deepEqual(Array.from(kv.k[0].subarray(0, 16)), [...row(0), ...row(30), ...row(40), ...row(90)]);
  assert.deepEqual(Array.from(kv.v[0].subarray(12, 16)), Array.from(row(-90)));
  // appending after compaction continues at nextPos
  kv.append(0, row(100), row(-100), kv.nextPos);
  assert.deepEqual(Array.from(kv.positions(0)), [0, 3, 4, 9, 10]);
  assert.equal(kv.bytes(), (5 + 10) * 4 * 2 * 4);
});

Deno.test("kv cache: compact rejects unsorted, duplicate or out-of-range indices", () => {
  const kv = filled(5);
  for (const bad of [[1, 0], [2, 2], [0, 5], [-1]]) {
    assert.throws(() => kv.compact(plan(0, new Int32Array(bad))), RangeError, `indices ${bad}`);
  }
  assert.throws(() => kv.compact(plan(0, new Int32Array([0, 5]))), /strictly ascending in \[0, 5\)/);
});

Deno.test("kv cache: toHost/loadFrom round trip and shape checks", () => {
  const kv = filled(12);
  kv.compact(plan(1, new Int32Array([1, 2, 11])));
  const snap = kv.toHost();
  const back = new HostKVCache(shape);
  back.loadFrom(snap);
  assert.equal(back.nextPos, 12);
  for (let l = 0; l < 2; l++) {
    assert.equal(back.length(l), kv.length(l));
    assert.deepEqual(back.positions(l), kv.positions(l));
    assert.deepEqual(back.k[l].subarray(0, kv.length(l) * 4), kv.k[l].subarray(0, kv.length(l) * 4));
    assert.deepEqual(back.v[l].subarray(0, kv.length(l) * 4), kv.v[l].subarray(0, kv.length(l) * 4));
  }
  // the snapshot is independent of the original
  kv.compact(plan(0, new Int32Array([0])));
  assert.equal(snap.length(0), 12);
  assert.throws(() => new HostKVCache({ ...shape, headDim: 4 }).loadFrom(snap), /KV shape mismatch/);
});
