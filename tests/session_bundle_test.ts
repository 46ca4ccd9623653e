import assert from "node:assert/strict";
import { decodeBundle, encodeBundle } from "../src/session/bundle.ts";

const snapshot = Uint8Array.from({ length: 300 }, (_, i) => (i * 7) & 255);

Deno.test("bundle: history and snapshot round trip; a long history stays compact", () => {
  const tokens = Array.from({ length: 50_000 }, (_, i) => (i * 31) % 2048);
  const messages = [{ role: "user", content: "héllo 🙂" }, {
    role: "assistant",
    content: "x".repeat(10_000),
  }];
  const b = encodeBundle({ tokens, messages }, snapshot);
  const d = decodeBundle(b);
  assert.deepEqual(d.history, { tokens, messages });
  assert.deepEqual(d.snapshot, snapshot);
  assert.equal(d.historyError, undefined);
});

Deno.test("bundle: a damaged snapshot section leaves the history readable", () => {
  const b = encodeBundle({ tokens: [1, 2, 3], messages: [] }, snapshot);
  b[b.length - 10] ^= 0xff;
  const d = decodeBundle(b);
  assert.deepEqual(d.history, { tokens: [1, 2, 3], messages: [] });
  assert.notDeepEqual(
    d.snapshot,
    snapshot,
    "the snapshot section is handed on as stored, for its own checksum",
  );
});

Deno.test("bundle: a damaged history section is reported, the snapshot still handed on", () => {
  const b = encodeBundle({ tokens: [1, 2, 3], messages: [] }, snapshot);
  b[9] ^= 0x01;
  const d = decodeBundle(b);
  assert.equal(d.history, null);
  assert.match(d.historyError!, /history checksum mismatch/);
  assert.deepEqual(d.snapshot, snapshot);
});

Deno.test("bundle: not a bundle, truncated, lying length", () => {
  assert.match(decodeBundle(new Uint8Array(0)).historyError!, /bad magic or truncated/);
  assert.match(decodeBundle(snapshot).historyError!, /bad magic/);
  const b = encodeBundle({ tokens: [5], messages: [] }, snapshot);
  new DataView(b.buffer).setUint32(4, 0xffffff00, true);
  assert.match(decodeBundle(b).historyError!, /runs past the end/);
  const good = encodeBundle({ tokens: [5], messages: [] }, snapshot);
  for (let n = 0; n < 12; n++) {
    assert.equal(decodeBundle(good.subarray(0, n)).history, null, `truncated at ${n}`);
  }
});

Deno.test("bundle: turn records round trip; malformed ones are dropped without failing the history", () => {
  const rec = {
    turn: 1,
    start: 0,
    end: 3,
    prompt_tokens: 2,
    cached_tokens: 0,
    generated_tokens: 1,
    kept_per_layer: [3, 3],
    kv_bytes: 96,
    stored_bytes: null,
    pruning_rounds: 0,
    prune_spans: [] as [number, number][],
    dropped_at_commit: 0,
    at: 1,
  };
  const d = decodeBundle(encodeBundle({ tokens: [1, 2, 3], messages: [], turns: [rec] }, snapshot));
  assert.deepEqual(d.history, { tokens: [1, 2, 3], messages: [], turns: [rec] });
  const bad = encodeBundle(
    // deno-lint-ignore no-explicit-any
    { tokens: [1], messages: [], turns: [rec, null, { end: "x" }, 5] as any },
    snapshot,
  );
  assert.deepEqual(decodeBundle(bad).history!.turns, [rec]);
});
