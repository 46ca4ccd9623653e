/**
 * One suite, three stores: memory, Deno KV (temp sqlite file) and Redis (a real redis-server started on a free
 * port for the duration of the test; run scripts/setup.sh if it is missing).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { HostKVCache } from "../src/kv/cache.ts";
import { decodeSnapshot, encodeSnapshot } from "../src/session/codec.ts";
import { openStore, type SessionRecord, type SessionStore } from "../src/session/store.ts";
import { DenoKvSessionStore } from "../src/session/stores/deno_kv.ts";
import { MemorySessionStore } from "../src/session/stores/memory.ts";
import { COMMIT_SCRIPT, RedisSessionStore } from "../src/session/stores/redis.ts";
import { Redis } from "ioredis";
import { freePort } from "../src/client/net.ts";
import { startRedis } from "./support/redis.ts";

function rng(seed: number): () => number {
  let a = seed | 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A blob whose content is a function of (tag, size): a reader can tell a torn or mixed blob. */
function blobOf(tag: number, size: number): Uint8Array {
  const b = new Uint8Array(size);
  const r = rng(tag * 7919 + size);
  const w = new Uint32Array(b.buffer, 0, Math.floor(size / 4));
  for (let i = 0; i < w.length; i++) w[i] = r() * 4294967296;
  if (size >= 8) new DataView(b.buffer).setUint32(0, tag, true);
  return b;
}

function tagOf(b: Uint8Array): number {
  return new DataView(b.buffer, b.byteOffset).getUint32(0, true);
}

function rec(
  id: string,
  version: number,
  blob: Uint8Array,
  extra: Partial<SessionRecord> = {},
): SessionRecord {
  return {
    id,
    owner: "sha256:ab12",
    model: "stories260K",
    fingerprint: "f".repeat(64),
    createdAt: 1_700_000_000_000,
    updatedAt: 1_700_000_000_000 + version,
    turns: version,
    version,
    blob,
    info: { tokens: 100 * version, kept: [10, 20, 30], policy: "lethe" },
    ...extra,
  };
}

interface Harness {
  store: SessionStore;
  /** A second handle on the same backing storage (another "instance"). */
  second(): Promise<SessionStore>;
  /** Backend objects stored (chunks/blobs), for leak checks; undefined where not observable. */
  stored?(): Promise<number>;
  /** How many such objects one blob of `size` bytes takes. */
  units?(size: number): number;
  /** Make the next put crash after writing its data, before the head switch. */
  crashNextPut?(): void;
  /** Collect what a crash left behind; resolves when done. */
  collectOrphans?(): Promise<void>;
  close(): Promise<void>;
}

async function suite(t: Deno.TestContext, h: Harness): Promise<void> {
  const { store } = h;

  await t.step("CAS: create, update, conflicts, validation", async () => {
    assert.equal(await store.get("s1"), null);
    assert.equal(await store.put(rec("s1", 1, blobOf(1, 1000)), 0), true);
    assert.equal(await store.put(rec("s1", 1, blobOf(2, 1000)), 0), false, "must not exist");
    const got = await store.get("s1");
    assert.ok(got);
    assert.deepEqual(got, rec("s1", 1, blobOf(1, 1000)));
    assert.equal(await store.put(rec("s1", 2, blobOf(3, 5)), 1), true);
    assert.equal(await store.put(rec("s1", 2, blobOf(4, 5)), 1), false, "stale expected version");
    assert.equal(await store.put(rec("s1", 4, blobOf(4, 5)), 3), false, "future expected version");
    assert.equal(await store.put(rec("nope", 2, blobOf(4, 5)), 1), false, "expects an existing record");
    assert.deepEqual((await store.get("s1"))?.blob, blobOf(3, 5));
    assert.equal((await store.get("s1"))?.version, 2);
    await assert.rejects(() => store.put(rec("s1", 5, blobOf(5, 5)), 2), /version/);
    await assert.rejects(() => store.get("../etc/passwd"), /session id/);
    // Empty blob is a valid value.
    assert.equal(await store.put(rec("empty", 1, new Uint8Array(0)), 0), true);
    assert.equal((await store.get("empty"))?.blob.length, 0);
    // The store keeps its own copy.
    const b = blobOf(6, 64);
    assert.equal(await store.put(rec("copy", 1, b), 0), true);
    b.fill(0);
    assert.deepEqual((await store.get("copy"))?.blob, blobOf(6, 64));
  });

  await t.step("a real encoded snapshot round-trips through the store", async () => {
    const kv = new HostKVCache({ nLayers: 2, nKVHeads: 2, headDim: 4 });
    for (let i = 0; i < 5; i++) {
      kv.append(i % 2, new Float32Array(8).fill(i), new Float32Array(8).fill(-i), i);
    }
    kv.nextPos = 5;
    const blob = encodeSnapshot({
      fingerprint: "ab",
      tokens: [1, 2, 3, 4, 5],
      kv,
      policy: { name: "h2o", params: {}, state: { scores: [], meta: {} } },
    }, { kvPrecision: "f16" });
    assert.equal(await store.put(rec("snap", 1, blob), 0), true);
    const back = decodeSnapshot((await store.get("snap"))!.blob, { fingerprint: "ab" });
    assert.deepEqual(Array.from(back.kv.positions(1)), [1, 3]);
  });

  await t.step("big blobs (several MB, many chunks) round-trip and replace each other", async () => {
    const before = await h.stored?.();
    for (const [v, size] of [[1, 5_000_000], [2, 3_333_333], [3, 61_441]] as const) {
      assert.equal(await store.put(rec("big", v, blobOf(100 + v, size)), v - 1), true);
      const got = await store.get("big");
      assert.equal(got?.blob.length, size);
      assert.deepEqual(got?.blob, blobOf(100 + v, size));
    }
    if (h.stored) {
      // Only the live version's data is kept: superseded versions were collected.
      const after = await h.stored();
      assert.ok(after! - before! <= h.units!(61_441), `leaked storage: ${before} -> ${after}`);
    }
  });

  await t.step("concurrent puts from two instances: exactly one wins", async () => {
    const other = await h.second();
    try {
      for (const [id, expected] of [["race-new", 0], ["race-old", 1]] as const) {
        if (expected === 1) assert.equal(await store.put(rec(id, 1, blobOf(1, 10)), 0), true);
        const before = await h.stored?.();
        const tries = Array.from({ length: 8 }, (_, i) => {
          const s = i % 2 ? other : store;
          return s.put(rec(id, expected + 1, blobOf(500 + i, 150_000 + i)), expected);
        });
        const results = await Promise.all(tries);
        assert.equal(results.filter((x) => x).length, 1, `winners: ${results}`);
        const winner = results.indexOf(true);
        const got = await other.get(id);
        assert.equal(got?.version, expected + 1);
        assert.deepEqual(got?.blob, blobOf(500 + winner, 150_000 + winner));
        if (h.stored) {
          const after = await h.stored();
          // Losers cleaned up: only the winner's data (minus the replaced version's) remains.
          assert.ok(after! - before! <= h.units!(150_010), `losers leaked: ${before} -> ${after}`);
        }
      }
    } finally {
      if (other !== store) await other.close();
    }
  });

  await t.step("readers never see a torn or mixed blob while versions are committed", async () => {
    const id = "torn";
    let done = false;
    let reads = 0;
    const writer = (async () => {
      for (let v = 1; v <= 12; v++) {
        assert.equal(await store.put(rec(id, v, blobOf(1000 + v, 200_000 + v * 1000)), v - 1), true);
      }
      done = true;
    })();
    const reader = (async () => {
      while (!done) {
        const got = await store.get(id);
        if (got) {
          const v = got.version;
          assert.equal(tagOf(got.blob), 1000 + v);
          assert.deepEqual(got.blob, blobOf(1000 + v, 200_000 + v * 1000));
          reads++;
        }
        await new Promise((r) => setTimeout(r, 0));
      }
    })();
    await Promise.all([writer, reader]);
    assert.ok(reads > 0);
  });

  if (h.crashNextPut && h.collectOrphans && h.stored) {
    await t.step(
      "a crash mid-commit leaves the old version readable; the leftovers are collected",
      async () => {
        assert.equal(await store.put(rec("crash", 1, blobOf(7, 300_000)), 0), true);
        const before = await h.stored!();
        h.crashNextPut!();
        await assert.rejects(() => store.put(rec("crash", 2, blobOf(8, 400_000)), 1), /simulated crash/);
        assert.ok((await h.stored!()) > before, "the crashed commit wrote data");
        const got = await store.get("crash");
        assert.equal(got?.version, 1);
        assert.deepEqual(got?.blob, blobOf(7, 300_000));
        await h.collectOrphans!();
        assert.equal(await h.stored!(), before, "orphans collected");
        // And the session carries on from version 1.
        assert.equal(await store.put(rec("crash", 2, blobOf(9, 1000)), 1), true);
        assert.deepEqual((await store.get("crash"))?.blob, blobOf(9, 1000));
      },
    );
  }

  await t.step("leases are exclusive, owner-released and expire", async () => {
    const other = await h.second();
    try {
      const a = await store.acquireLease("L", 10_000);
      assert.ok(a);
      assert.equal(await other.acquireLease("L", 10_000), null);
      await other.releaseLease("L", "not-the-token");
      assert.equal(await other.acquireLease("L", 10_000), null, "a wrong token does not release");
      await store.releaseLease("L", a);
      const b = await other.acquireLease("L", 150);
      assert.ok(b && b !== a);
      assert.equal(await store.acquireLease("L", 10_000), null);
      await new Promise((r) => setTimeout(r, 300));
      const c = await store.acquireLease("L", 10_000);
      assert.ok(c, "expired lease can be taken");
      await other.releaseLease("L", b!); // stale owner's release must not free the new holder's lease
      assert.equal(await other.acquireLease("L", 10_000), null);
      await store.releaseLease("L", c!);
      // Racing acquirers: one winner.
      const tokens = await Promise.all(
        Array.from({ length: 10 }, (_, i) => (i % 2 ? other : store).acquireLease("L2", 10_000)),
      );
      assert.equal(tokens.filter((x) => x !== null).length, 1);
      await assert.rejects(() => store.acquireLease("L3", 0), /ttl/);
    } finally {
      if (other !== store) await other.close();
    }
  });

  await t.step("leases are renewed by their holder only; an expired lease cannot be renewed", async () => {
    const other = await h.second();
    try {
      const a = (await store.acquireLease("R", 250))!;
      assert.ok(a);
      assert.equal(await other.renewLease("R", "not-the-token", 10_000), false);
      // Renewing keeps it held past its first expiry.
      for (let i = 0; i < 4; i++) {
        await new Promise((r) => setTimeout(r, 100));
        assert.equal(await store.renewLease("R", a, 250), true, `renewal ${i}`);
      }
      assert.equal(await other.acquireLease("R", 10_000), null, "renewed past the first 250 ms");
      // Not renewed: it expires, and the old holder can no longer renew it, whether or not it was taken.
      await new Promise((r) => setTimeout(r, 400));
      assert.equal(await store.renewLease("R", a, 10_000), false, "expired, not taken");
      const b = (await other.acquireLease("R", 10_000))!;
      assert.ok(b);
      assert.equal(await store.renewLease("R", a, 10_000), false, "taken by another");
      assert.equal(await other.renewLease("R", b, 10_000), true);
      await other.releaseLease("R", b);
      assert.equal(await other.renewLease("R", b, 10_000), false, "released");
      await assert.rejects(() => store.renewLease("R", b, 0), /ttl/);
    } finally {
      if (other !== store) await other.close();
    }
  });

  await t.step("a release is not lost to the holder's own renewal running at the same time", async () => {
    const other = await h.second();
    try {
      for (let i = 0; i < 20; i++) {
        const a = (await store.acquireLease(`RR${i}`, 10_000))!;
        await Promise.all([store.renewLease(`RR${i}`, a, 10_000), store.releaseLease(`RR${i}`, a)]);
        const b = await other.acquireLease(`RR${i}`, 10_000);
        assert.ok(b, `round ${i}: the lease was given up`);
      }
    } finally {
      if (other !== store) await other.close();
    }
  });

  await t.step("delete removes the record and all its data", async () => {
    assert.equal(await store.put(rec("del", 1, blobOf(11, 700_000)), 0), true);
    assert.equal(await store.put(rec("del", 2, blobOf(12, 650_000)), 1), true);
    const before = await h.stored?.();
    assert.equal(await store.delete("del"), true);
    assert.equal(await store.get("del"), null);
    assert.equal(await store.delete("del"), false);
    if (h.stored) assert.equal(await h.stored(), before! - h.units!(650_000));
    // A new session under the same id starts from version 0 again.
    assert.equal(await store.put(rec("del", 1, blobOf(13, 10)), 0), true);
    assert.deepEqual((await store.get("del"))?.blob, blobOf(13, 10));
  });
}

Deno.test("session store: memory", async (t) => {
  const store = new MemorySessionStore();
  await suite(t, { store, second: () => Promise.resolve(store), close: () => store.close() });
  await store.close();
});

Deno.test("session store: Deno KV (temp sqlite file)", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "lethe_kv_" });
  const path = join(dir, "nested", "sessions.sqlite");
  const store = await DenoKvSessionStore.open(path);
  const stored = async () => {
    const s = await store.stats();
    return s.chunks;
  };
  try {
    await suite(t, {
      store,
      second: () => DenoKvSessionStore.open(path),
      stored,
      units: (size) => Math.ceil(size / (60 * 1024)),
      crashNextPut: () => {
        store.hooks.beforeHeadSwitch = () => {
          store.hooks.beforeHeadSwitch = undefined;
          throw new Error("simulated crash");
        };
      },
      collectOrphans: async () => {
        assert.equal(await store.sweep(60_000), 0, "a recent pending commit is left alone");
        assert.ok((await store.sweep(0)) > 0);
        const s = await store.stats();
        assert.equal(s.markers, 0);
      },
      close: () => store.close(),
    });

    await t.step("a commit slower than the sweep grace period fails cleanly", async () => {
      assert.equal(await store.put(rec("slow", 1, blobOf(21, 100_000)), 0), true);
      const before = await stored();
      store.hooks.beforeHeadSwitch = async () => {
        store.hooks.beforeHeadSwitch = undefined;
        await store.sweep(-1); // the sweeper considers this commit dead
      };
      await assert.rejects(() => store.put(rec("slow", 2, blobOf(22, 100_000)), 1), /grace period/);
      assert.deepEqual((await store.get("slow"))?.blob, blobOf(21, 100_000));
      assert.equal(await stored(), before);
    });

    await t.step("data survives reopening the file; openStore URLs", async () => {
      const again = await openStore(`denokv:${path}`);
      assert.equal(again.kind, "deno-kv");
      assert.deepEqual((await again.get("s1"))?.blob, blobOf(3, 5));
      await again.close();
      const plain = await openStore(path);
      assert.equal(plain.kind, "deno-kv");
      await plain.close();
      const mem = await openStore("memory:");
      assert.equal(mem.kind, "memory");
      await mem.close();
      await assert.rejects(() => openStore("ftp://x/y"), /unsupported/);
    });
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "session store: Redis (real redis-server child process)",
  // ioredis keeps socket timers alive until quit completes.
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    const server = await startRedis();
    const stagingTtlMs = 400;
    const store = await RedisSessionStore.open(server.url, { stagingTtlMs });
    const opened: SessionStore[] = [];
    try {
      await suite(t, {
        store,
        second: async () => {
          const s = await RedisSessionStore.open(server.url, { stagingTtlMs });
          opened.push(s);
          return s;
        },
        stored: () => store.countKeys("*:blob:*"),
        units: () => 1,
        crashNextPut: () => {
          store.hooks.beforeHeadSwitch = () => {
            store.hooks.beforeHeadSwitch = undefined;
            throw new Error("simulated crash");
          };
        },
        // The staged blob of a crashed commit expires by itself.
        collectOrphans: () => new Promise((r) => setTimeout(r, stagingTtlMs + 300)),
        close: () => store.close(),
      });
      await t.step(
        "a commit run twice (its reply lost, the command resent) keeps the blob it committed",
        async () => {
          assert.equal(await store.put(rec("twice", 1, blobOf(31, 1000)), 0), true);
          const raw = new Redis(server.url);
          try {
            const head = "lethe:sess:{twice}:head", blob = "lethe:sess:{twice}:blob:2:resent";
            await raw.set(blob, "v2-bytes");
            const commit = () =>
              raw.eval(COMMIT_SCRIPT, 2, head, blob, "1", "2", JSON.stringify({ version: 2 }));
            assert.equal(await commit(), 1);
            assert.equal(await commit(), 1, "the second run reports the commit it already made");
            assert.equal(await raw.get(blob), "v2-bytes", "and does not delete the live blob");
            assert.equal(await raw.hget(head, "blob"), blob);
          } finally {
            await raw.quit();
          }
        },
      );
      await t.step("openStore(redis://…) and a clear error when Redis is unreachable", async () => {
        const s = await openStore(server.url);
        assert.equal(s.kind, "redis");
        assert.deepEqual((await s.get("s1"))?.blob, blobOf(3, 5));
        await s.close();
        const dead = freePort();
        await assert.rejects(
          () => RedisSessionStore.open(`redis://127.0.0.1:${dead}`, { connectTimeoutMs: 500 }),
          /cannot connect to Redis/,
        );
      });
    } finally {
      await store.close();
      await server.stop();
    }
  },
});
