/**
 * Where sessions live between turns: a versioned record per session (its encoded snapshot plus a small JSON
 * summary), committed with compare-and-set, and a per-session lease so that two instances never run the same
 * session's turn at once (short, renewed by its holder while the turn runs: src/server/lease.ts).
 *
 * Implementations: `stores/memory.ts` (tests, ephemeral), `stores/deno_kv.ts` (local sqlite via Deno KV, blobs
 * chunked under the 64 KiB value limit), `stores/redis.ts` (ioredis; one binary value per version).
 * `openStore(url)` picks one from a URL.
 */

export interface SessionRecord {
  id: string;
  /** API key hash or "anonymous". */
  owner: string;
  model: string;
  fingerprint: string;
  createdAt: number;
  updatedAt: number;
  turns: number;
  /** Increments per commit: a put with expectedVersion v writes version v + 1. */
  version: number;
  /** Encoded snapshot (`session/codec.ts`). */
  blob: Uint8Array;
  /** Small JSON summary: tokens, per-layer kept, policy. */
  info: Record<string, unknown>;
}

export type SessionStoreKind = "deno-kv" | "redis" | "memory";

export interface SessionStore {
  readonly kind: SessionStoreKind;
  get(id: string): Promise<SessionRecord | null>;
  /**
   * Atomic compare-and-set: commits only if the stored version equals expectedVersion (0 = must not exist);
   * returns false on conflict. The new version becomes visible atomically; readers never see a half-written
   * blob. `rec.version` must be `expectedVersion + 1`.
   */
  put(rec: SessionRecord, expectedVersion: number): Promise<boolean>;
  delete(id: string): Promise<boolean>;
  /**
   * Exclusive per-session lease for a running turn (so two instances never run the same session's turn
   * concurrently): returns a token or null if held; expires after ttlMs unless renewed.
   */
  acquireLease(id: string, ttlMs: number): Promise<string | null>;
  /**
   * Extend the lease `token` holds to ttlMs from now. False when it no longer holds it (expired — whether or
   * not someone took it since — or released): the holder must then stop, its turn is no longer exclusive.
   */
  renewLease(id: string, token: string, ttlMs: number): Promise<boolean>;
  /** Give the lease up (a no-op unless `token` holds it). */
  releaseLease(id: string, token: string): Promise<void>;
  /** Collect storage left behind by crashed commits (stores that can leak some). Returns items removed. */
  sweep?(graceMs?: number): Promise<number>;
  close(): Promise<void>;
}

/** The record without its blob (what stores keep in their head entry). */
export type SessionHead = Omit<SessionRecord, "blob">;

const ID_RE = /^[A-Za-z0-9_.:-]{1,200}$/;

export class SessionStoreError extends Error {
  constructor(message: string) {
    super(`session store: ${message}`);
    this.name = "SessionStoreError";
  }
}

/**
 * A stored record is damaged (a blob that fails its size or checksum, a head that is not JSON or points to
 * nothing): retrying will not help. Any other error of a store operation means the store is unreachable,
 * full or failing for now.
 */
export class SessionCorruptError extends SessionStoreError {
  constructor(message: string) {
    super(message);
    this.name = "SessionCorruptError";
  }
}

export function checkId(id: string): void {
  if (typeof id !== "string" || !ID_RE.test(id)) {
    throw new TypeError(`session id must match ${ID_RE} (got ${JSON.stringify(id)?.slice(0, 60)})`);
  }
}

export function checkPut(rec: SessionRecord, expectedVersion: number): void {
  checkId(rec.id);
  if (!Number.isSafeInteger(expectedVersion) || expectedVersion < 0) {
    throw new TypeError(`expectedVersion must be a non-negative integer, got ${expectedVersion}`);
  }
  if (rec.version !== expectedVersion + 1) {
    throw new TypeError(`record version ${rec.version} must be expectedVersion + 1 = ${expectedVersion + 1}`);
  }
  if (!(rec.blob instanceof Uint8Array)) throw new TypeError("record blob must be a Uint8Array");
  for (const k of ["owner", "model", "fingerprint"] as const) {
    if (typeof rec[k] !== "string") throw new TypeError(`record ${k} must be a string`);
  }
  for (const k of ["createdAt", "updatedAt", "turns"] as const) {
    if (!Number.isFinite(rec[k])) throw new TypeError(`record ${k} must be a number`);
  }
  if (typeof rec.info !== "object" || rec.info === null) throw new TypeError("record info must be an object");
}

export function checkTtl(ttlMs: number): void {
  if (!Number.isFinite(ttlMs) || ttlMs < 1 || ttlMs > 7 * 24 * 3600_000) {
    throw new TypeError(`lease ttlMs must be in [1, 1 week], got ${ttlMs}`);
  }
}

export function headOf(rec: SessionRecord): SessionHead {
  const { blob: _blob, ...head } = rec;
  return structuredClone(head);
}

export function newToken(): string {
  return crypto.randomUUID();
}

export const DEFAULT_DENO_KV_PATH = "./data/sessions.sqlite";

/**
 * Open a store from a URL: `memory:`, `denokv:/path/file.sqlite` (or `denokv:` for the default
 * `./data/sessions.sqlite`, or a plain file path), `redis://host:port[/db]` / `rediss://…`.
 */
export async function openStore(url: string): Promise<SessionStore> {
  if (url === "memory:" || url === "memory") {
    const { MemorySessionStore } = await import("./stores/memory.ts");
    return new MemorySessionStore();
  }
  if (/^rediss?:\/\//.test(url)) {
    const { RedisSessionStore } = await import("./stores/redis.ts");
    return await RedisSessionStore.open(url);
  }
  let path = url;
  if (url.startsWith("denokv:")) {
    path = url.slice("denokv:".length).replace(/^\/\/(?=\/)/, "") || DEFAULT_DENO_KV_PATH;
  } else if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) {
    throw new TypeError(`unsupported session store URL ${url}`);
  }
  if (!path) path = DEFAULT_DENO_KV_PATH;
  const { DenoKvSessionStore } = await import("./stores/deno_kv.ts");
  // Collect what crashed commits left behind (pending for over 10 minutes) every 5 minutes.
  return await DenoKvSessionStore.open(path, { sweepIntervalMs: 5 * 60_000, sweepGraceMs: 10 * 60_000 });
}
