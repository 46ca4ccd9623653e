/**
 * Session store on Deno KV (a local sqlite file by default: `./data/sessions.sqlite`).
 *
 * Deno KV values are limited to 64 KiB and an atomic operation to ~1000 mutations / ~800 KiB, so a blob is
 * stored as chunks and a commit is two-phase:
 *   1. write a pending marker `gc/<id>/<version>/<nonce>` (start time), then the chunks
 *      `chunk/<id>/<version>/<nonce>/<i>` in batches of a few hundred KiB;
 *   2. one `atomic()` that checks the head's versionstamp (the CAS) and the marker's (not swept), sets the head
 *      to the new version, deletes the marker and marks the previous version's chunks as garbage (at = 0);
 *   3. delete the previous version's chunks and its marker.
 * Readers fetch the head, then the chunks of exactly that version + nonce (retrying if a newer commit collected
 * them underneath), and check size and CRC-32. A crash between 1 and 2 leaves the old version readable and the
 * new chunks under a pending marker; `sweep(graceMs)` (also run every `sweepIntervalMs`) collects them: it first
 * turns a stale pending marker into a garbage marker (so a commit that was merely slow can no longer switch to
 * it), then deletes the chunks, then the marker.
 */
import { dirname } from "node:path";
import { crc32 } from "../codec.ts";
import {
  checkId,
  checkPut,
  checkTtl,
  DEFAULT_DENO_KV_PATH,
  headOf,
  newToken,
  SessionCorruptError,
  type SessionHead,
  type SessionRecord,
  type SessionStore,
  SessionStoreError,
} from "../store.ts";

const ROOT = "lethe_sessions";
/** Below the 64 KiB value limit with room for the serializer's framing. */
const DEFAULT_CHUNK_BYTES = 60 * 1024;
/** Chunks per atomic write: 10 × 60 KiB stays under the ~800 KiB per-operation limit. */
const CHUNKS_PER_BATCH = 10;
const DELETES_PER_BATCH = 500;
const MAX_HEAD_BYTES = 60 * 1024;
const DEFAULT_SWEEP_GRACE_MS = 10 * 60_000;

/**
 * Retry an operation while sqlite reports the database locked (another handle or process on the same file is
 * writing). Every retried operation is a single read or a single atomic commit, so retrying is safe.
 */
async function busy<T>(fn: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + 30_000;
  for (let delay = 2;; delay = Math.min(delay * 2, 100)) {
    try {
      return await fn();
    } catch (e) {
      if (
        !/database is locked|SQLITE_BUSY|database table is locked/i.test(String((e as Error)?.message)) ||
        Date.now() > deadline
      ) {
        throw e;
      }
      await new Promise((r) => setTimeout(r, delay * (0.5 + Math.random())));
    }
  }
}

interface HeadValue {
  head: SessionHead;
  nonce: string;
  chunks: number;
  size: number;
  crc: number;
}

interface Marker {
  /** Commit start time; 0 = garbage, collect now. */
  at: number;
}

interface Lease {
  token: string;
  expiresAt: number;
}

export interface DenoKvStoreOptions {
  chunkBytes?: number;
  /** Run `sweep(sweepGraceMs)` this often (0 = never; default 0). */
  sweepIntervalMs?: number;
  sweepGraceMs?: number;
}

export interface DenoKvStoreHooks {
  /** Test hook: runs after the chunks are written, before the head switch (throw to simulate a crash). */
  beforeHeadSwitch?: (rec: SessionRecord) => void | Promise<void>;
}

export class DenoKvSessionStore implements SessionStore {
  readonly kind = "deno-kv" as const;
  readonly hooks: DenoKvStoreHooks = {};
  readonly #kv: Deno.Kv;
  readonly #chunkBytes: number;
  #timer: ReturnType<typeof setInterval> | undefined;

  constructor(kv: Deno.Kv, opts: DenoKvStoreOptions = {}) {
    this.#kv = kv;
    this.#chunkBytes = opts.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    if (!(this.#chunkBytes >= 1 && this.#chunkBytes <= DEFAULT_CHUNK_BYTES)) {
      throw new TypeError(`chunkBytes must be in [1, ${DEFAULT_CHUNK_BYTES}]`);
    }
    if (opts.sweepIntervalMs) {
      const grace = opts.sweepGraceMs ?? DEFAULT_SWEEP_GRACE_MS;
      const timer = setInterval(() => {
        this.sweep(grace).catch((e) => console.error(`session store sweep failed: ${e}`));
      }, opts.sweepIntervalMs);
      Deno.unrefTimer(timer);
      this.#timer = timer;
    }
  }

  /** Open (creating the directory if needed) the sqlite file at `path` (default `./data/sessions.sqlite`). */
  static async open(path = DEFAULT_DENO_KV_PATH, opts: DenoKvStoreOptions = {}): Promise<DenoKvSessionStore> {
    if (path !== ":memory:") await Deno.mkdir(dirname(path), { recursive: true });
    let kv: Deno.Kv;
    try {
      kv = await Deno.openKv(path);
    } catch (e) {
      throw new SessionStoreError(`cannot open Deno KV at ${path}: ${(e as Error).message}`);
    }
    return new DenoKvSessionStore(kv, opts);
  }

  #headKey(id: string): Deno.KvKey {
    return [ROOT, "head", id];
  }
  #chunkPrefix(id: string, version: number, nonce: string): Deno.KvKey {
    return [ROOT, "chunk", id, version, nonce];
  }
  #markerKey(id: string, version: number, nonce: string): Deno.KvKey {
    return [ROOT, "gc", id, version, nonce];
  }

  /** All entries under `prefix` (the whole listing restarts if sqlite reports the database busy). */
  #listAll<T>(prefix: Deno.KvKey, batchSize: number): Promise<Deno.KvEntry<T>[]> {
    return busy(async () => {
      const out: Deno.KvEntry<T>[] = [];
      for await (const e of this.#kv.list<T>({ prefix }, { batchSize })) out.push(e);
      return out;
    });
  }

  async get(id: string): Promise<SessionRecord | null> {
    checkId(id);
    let lastMissing = "";
    for (let attempt = 0; attempt < 8; attempt++) {
      const h = await busy(() => this.#kv.get<HeadValue>(this.#headKey(id)));
      if (!h.value) return null;
      const hv = h.value;
      const parts: Uint8Array[] = [];
      let ok = true;
      const prefix = this.#chunkPrefix(id, hv.head.version, hv.nonce);
      for (const e of await this.#listAll<Uint8Array>(prefix, 200)) {
        if (e.key[prefix.length] !== parts.length || !(e.value instanceof Uint8Array)) {
          ok = false;
          break;
        }
        parts.push(e.value);
      }
      if (!ok || parts.length !== hv.chunks) {
        // Collected underneath by a newer commit or a delete: read the head again.
        lastMissing = `version ${hv.head.version} has ${parts.length} of ${hv.chunks} chunks`;
        continue;
      }
      const blob = new Uint8Array(hv.size);
      let off = 0;
      for (const p of parts) {
        if (off + p.length > blob.length) {
          throw new SessionCorruptError(`session ${id}: chunks exceed recorded size`);
        }
        blob.set(p, off);
        off += p.length;
      }
      if (off !== hv.size || crc32(blob) !== hv.crc) {
        throw new SessionCorruptError(`session ${id} version ${hv.head.version}: stored blob is corrupt`);
      }
      return { ...hv.head, blob };
    }
    throw new SessionStoreError(`session ${id}: cannot read a consistent version (${lastMissing})`);
  }

  async put(rec: SessionRecord, expectedVersion: number): Promise<boolean> {
    checkPut(rec, expectedVersion);
    const kv = this.#kv;
    const headKey = this.#headKey(rec.id);
    const cur = await busy(() => kv.get<HeadValue>(headKey));
    if ((cur.value?.head.version ?? 0) !== expectedVersion) return false;
    const head = headOf(rec);
    if (JSON.stringify(head).length > MAX_HEAD_BYTES) {
      throw new SessionStoreError(
        `session ${rec.id}: record info too large for the head entry (keep it small)`,
      );
    }
    const nonce = newToken().replaceAll("-", "").slice(0, 16);
    const markerKey = this.#markerKey(rec.id, rec.version, nonce);
    const m = await busy(() => kv.set(markerKey, { at: Date.now() } satisfies Marker));
    const prefix = this.#chunkPrefix(rec.id, rec.version, nonce);
    const n = Math.ceil(rec.blob.length / this.#chunkBytes);
    for (let i = 0; i < n; i += CHUNKS_PER_BATCH) {
      const op = kv.atomic();
      for (let j = i; j < Math.min(n, i + CHUNKS_PER_BATCH); j++) {
        op.set([...prefix, j], rec.blob.slice(j * this.#chunkBytes, (j + 1) * this.#chunkBytes));
      }
      const r = await busy(() => op.commit());
      if (!r.ok) throw new SessionStoreError(`session ${rec.id}: chunk write failed`);
    }
    await this.hooks.beforeHeadSwitch?.(rec);
    const value: HeadValue = { head, nonce, chunks: n, size: rec.blob.length, crc: crc32(rec.blob) };
    const op = kv.atomic()
      .check({ key: headKey, versionstamp: cur.versionstamp })
      .check({ key: markerKey, versionstamp: m.versionstamp })
      .set(headKey, value)
      .delete(markerKey);
    const old = cur.value;
    if (old) op.set(this.#markerKey(rec.id, old.head.version, old.nonce), { at: 0 } satisfies Marker);
    const res = await busy(() => op.commit());
    if (!res.ok) {
      const still = await busy(() => kv.get<Marker>(markerKey));
      if (still.versionstamp !== m.versionstamp) {
        throw new SessionStoreError(
          `session ${rec.id}: commit took longer than the sweep grace period and its chunks were collected`,
        );
      }
      await this.#collect(rec.id, rec.version, nonce);
      return false;
    }
    if (old) {
      // Best effort: a failure here leaves a garbage marker that the next sweep collects.
      await this.#collect(rec.id, old.head.version, old.nonce).catch(() => {});
    }
    return true;
  }

  /** Delete the chunks of one version, then its marker. */
  async #collect(id: string, version: number, nonce: string): Promise<number> {
    let removed = 0;
    let batch: Deno.KvKey[] = [];
    const flush = async () => {
      const op = this.#kv.atomic();
      for (const k of batch) op.delete(k);
      await busy(() => op.commit());
      removed += batch.length;
      batch = [];
    };
    for (const e of await this.#listAll(this.#chunkPrefix(id, version, nonce), 500)) {
      batch.push(e.key);
      if (batch.length >= DELETES_PER_BATCH) await flush();
    }
    if (batch.length) await flush();
    await busy(() => this.#kv.delete(this.#markerKey(id, version, nonce)));
    return removed;
  }

  async delete(id: string): Promise<boolean> {
    checkId(id);
    const headKey = this.#headKey(id);
    for (;;) {
      const cur = await busy(() => this.#kv.get<HeadValue>(headKey));
      if (!cur.value) return false;
      const { head, nonce } = cur.value;
      const res = await busy(() =>
        this.#kv.atomic()
          .check(cur)
          .delete(headKey)
          .set(this.#markerKey(id, head.version, nonce), { at: 0 } satisfies Marker)
          .commit()
      );
      if (!res.ok) continue;
      await this.#collect(id, head.version, nonce).catch(() => {});
      return true;
    }
  }

  /**
   * Collect chunks of crashed commits (pending for longer than `graceMs`) and leftovers of superseded or
   * deleted versions. Returns the number of chunks removed.
   */
  async sweep(graceMs = DEFAULT_SWEEP_GRACE_MS): Promise<number> {
    const now = Date.now();
    let removed = 0;
    for (const e of await this.#listAll<Marker>([ROOT, "gc"], 500)) {
      const [, , id, version, nonce] = e.key as [string, string, string, number, string];
      if (e.value.at !== 0) {
        if (e.value.at + graceMs > now) continue; // a commit may still be writing
        // Turn it into garbage first: a slow commit's head switch (which checks the marker) now fails.
        const r = await busy(() =>
          this.#kv.atomic().check(e).set(e.key, { at: 0 } satisfies Marker).commit()
        );
        if (!r.ok) continue;
      }
      const head = await busy(() => this.#kv.get<HeadValue>(this.#headKey(id)));
      if (head.value && head.value.head.version === version && head.value.nonce === nonce) {
        await busy(() => this.#kv.delete(e.key)); // never collect the live version
        continue;
      }
      removed += await this.#collect(id, version, nonce);
    }
    return removed;
  }

  async acquireLease(id: string, ttlMs: number): Promise<string | null> {
    checkId(id);
    checkTtl(ttlMs);
    const key = [ROOT, "lease", id];
    const cur = await busy(() => this.#kv.get<Lease>(key));
    const now = Date.now();
    if (cur.value && cur.value.expiresAt > now) return null;
    const token = newToken();
    const res = await busy(() =>
      this.#kv.atomic()
        .check(cur)
        .set(key, { token, expiresAt: now + ttlMs } satisfies Lease, { expireIn: ttlMs })
        .commit()
    );
    return res.ok ? token : null;
  }

  async renewLease(id: string, token: string, ttlMs: number): Promise<boolean> {
    checkId(id);
    checkTtl(ttlMs);
    const key = [ROOT, "lease", id];
    const cur = await busy(() => this.#kv.get<Lease>(key));
    const now = Date.now();
    if (cur.value?.token !== token || cur.value.expiresAt <= now) return false;
    const res = await busy(() =>
      this.#kv.atomic()
        .check(cur)
        .set(key, { token, expiresAt: now + ttlMs } satisfies Lease, { expireIn: ttlMs })
        .commit()
    );
    return res.ok;
  }

  async releaseLease(id: string, token: string): Promise<void> {
    checkId(id);
    const key = [ROOT, "lease", id];
    // Retried while the entry changes underneath (the holder's own renewal committing at the same moment):
    // a release that lost that race would otherwise leave the session locked until the lease ran out.
    for (;;) {
      const cur = await busy(() => this.#kv.get<Lease>(key));
      if (cur.value?.token !== token) return;
      if ((await busy(() => this.#kv.atomic().check(cur).delete(key).commit())).ok) return;
    }
  }

  /** Entry counts by kind (heads, chunks, gc markers, leases): for metrics and tests. */
  async stats(): Promise<{ heads: number; chunks: number; markers: number; leases: number }> {
    const count = async (kind: string) => {
      return (await this.#listAll([ROOT, kind], 1000)).length;
    };
    return {
      heads: await count("head"),
      chunks: await count("chunk"),
      markers: await count("gc"),
      leases: await count("lease"),
    };
  }

  close(): Promise<void> {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#kv.close();
    return Promise.resolve();
  }
}
