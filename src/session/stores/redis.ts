/**
 * Session store on Redis (ioredis), e.g. `redis://127.0.0.1:6379`.
 *
 * Keys (the `{id}` hash tag keeps one session's keys in one cluster slot):
 *   `<prefix>{id}:head`                 hash: v (version), blob (key of the live blob), meta (record JSON)
 *   `<prefix>{id}:blob:<version>:<nonce>` the encoded snapshot, one binary value
 *   `<prefix>{id}:lease`                lease token (SET NX PX; renewed by a compare-and-PEXPIRE script, released
 *                                       by a compare-and-delete one)
 * A commit stages the blob under a fresh key with an expiry (`stagingTtlMs`), then one Lua script checks the
 * version (the CAS), persists the staged blob, switches the head and deletes the previous blob. Reads run one
 * script that returns head and blob together, so a reader never sees a half-written or collected blob. A
 * crashed commit leaves only the staged blob, which expires by itself.
 */
import { Redis } from "ioredis";
import { Buffer } from "node:buffer";
import {
  checkId,
  checkPut,
  checkTtl,
  headOf,
  newToken,
  SessionCorruptError,
  type SessionHead,
  type SessionRecord,
  type SessionStore,
  SessionStoreError,
} from "../store.ts";

// Idempotent: run again for the same staged key (a reply lost to a dropped connection), it reports the
// commit it already made instead of deleting what is now the live blob.
export const COMMIT_SCRIPT = `
local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if cur ~= tonumber(ARGV[1]) then
  if cur == tonumber(ARGV[2]) and redis.call('HGET', KEYS[1], 'blob') == KEYS[2] then return 1 end
  redis.call('DEL', KEYS[2])
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
local old = redis.call('HGET', KEYS[1], 'blob')
redis.call('PERSIST', KEYS[2])
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'blob', KEYS[2], 'meta', ARGV[3])
if old and old ~= KEYS[2] then redis.call('DEL', old) end
return 1`;

const READ = `
local h = redis.call('HMGET', KEYS[1], 'meta', 'blob')
if not h[1] then return false end
local b = redis.call('GET', h[2])
if not b then return {h[1]} end
return {h[1], b}`;

const DELETE = `
local b = redis.call('HGET', KEYS[1], 'blob')
if not b then return 0 end
redis.call('DEL', KEYS[1], b)
return 1`;

const RENEW = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`;

const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

export interface RedisStoreOptions {
  /** Key prefix (default `lethe:sess:`). */
  prefix?: string;
  /** Expiry of a staged (not yet committed) blob: bounds what a crashed commit leaks (default 10 min). */
  stagingTtlMs?: number;
  connectTimeoutMs?: number;
  /** A command without a reply after this long fails (default 2000 ms; keep it below the lease time). */
  commandTimeoutMs?: number;
}

export interface RedisStoreHooks {
  /** Test hook: runs after the blob is staged, before the head switch (throw to simulate a crash). */
  beforeHeadSwitch?: (rec: SessionRecord) => void | Promise<void>;
}

export class RedisSessionStore implements SessionStore {
  readonly kind = "redis" as const;
  readonly hooks: RedisStoreHooks = {};
  readonly #redis: Redis;
  readonly #prefix: string;
  readonly #stagingTtlMs: number;

  constructor(redis: Redis, opts: RedisStoreOptions = {}) {
    this.#redis = redis;
    this.#prefix = opts.prefix ?? "lethe:sess:";
    this.#stagingTtlMs = opts.stagingTtlMs ?? 10 * 60_000;
  }

  /** Connect to `url` (fails with a clear error if Redis is unreachable). */
  static async open(url: string, opts: RedisStoreOptions = {}): Promise<RedisSessionStore> {
    // Fail fast while Redis is away (the request gets a 503 with Retry-After; ioredis reconnects in the
    // background): no offline queue, no resending of commands whose reply was lost, a bound on every command.
    const redis = new Redis(url, {
      lazyConnect: true,
      connectTimeout: opts.connectTimeoutMs ?? 5000,
      commandTimeout: opts.commandTimeoutMs ?? 2000,
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      maxRetriesPerRequest: 0,
      retryStrategy: (times: number) => Math.min(100 * times, 1000),
    });
    let lastError: Error | undefined;
    redis.on("error", (e: Error) => lastError = e);
    try {
      await redis.connect();
      await redis.ping();
    } catch (e) {
      redis.disconnect();
      throw new SessionStoreError(`cannot connect to Redis at ${url}: ${(lastError ?? e as Error).message}`);
    }
    return new RedisSessionStore(redis, opts);
  }

  #key(id: string, suffix: string): string {
    return `${this.#prefix}{${id}}:${suffix}`;
  }

  async get(id: string): Promise<SessionRecord | null> {
    checkId(id);
    const r = await this.#redis.callBuffer("EVAL", [READ, 1, this.#key(id, "head")]) as Buffer[] | null;
    if (!r) return null;
    if (r.length < 2) throw new SessionCorruptError(`session ${id}: head points to a missing blob`);
    let head: SessionHead;
    try {
      head = JSON.parse(r[0].toString("utf8"));
    } catch {
      throw new SessionCorruptError(`session ${id}: head record is not JSON`);
    }
    const b = r[1];
    return { ...head, blob: new Uint8Array(b.buffer, b.byteOffset, b.byteLength).slice() };
  }

  async put(rec: SessionRecord, expectedVersion: number): Promise<boolean> {
    checkPut(rec, expectedVersion);
    const headKey = this.#key(rec.id, "head");
    const cur = Number(await this.#redis.hget(headKey, "v") ?? 0);
    if (cur !== expectedVersion) return false;
    const nonce = newToken().replaceAll("-", "").slice(0, 16);
    const blobKey = this.#key(rec.id, `blob:${rec.version}:${nonce}`);
    const buf = Buffer.from(rec.blob.buffer, rec.blob.byteOffset, rec.blob.byteLength);
    await this.#redis.set(blobKey, buf, "PX", this.#stagingTtlMs);
    await this.hooks.beforeHeadSwitch?.(rec);
    const r = await this.#redis.eval(
      COMMIT_SCRIPT,
      2,
      headKey,
      blobKey,
      String(expectedVersion),
      String(rec.version),
      JSON.stringify(headOf(rec)),
    ) as number;
    if (r === -1) {
      throw new SessionStoreError(
        `session ${rec.id}: staged blob expired before the commit (stagingTtlMs too low?)`,
      );
    }
    return r === 1;
  }

  async delete(id: string): Promise<boolean> {
    checkId(id);
    return (await this.#redis.eval(DELETE, 1, this.#key(id, "head"))) === 1;
  }

  async acquireLease(id: string, ttlMs: number): Promise<string | null> {
    checkId(id);
    checkTtl(ttlMs);
    const token = newToken();
    const ok = await this.#redis.set(this.#key(id, "lease"), token, "PX", Math.ceil(ttlMs), "NX");
    return ok === "OK" ? token : null;
  }

  async renewLease(id: string, token: string, ttlMs: number): Promise<boolean> {
    checkId(id);
    checkTtl(ttlMs);
    return (await this.#redis.eval(RENEW, 1, this.#key(id, "lease"), token, String(Math.ceil(ttlMs)))) === 1;
  }

  async releaseLease(id: string, token: string): Promise<void> {
    checkId(id);
    await this.#redis.eval(RELEASE, 1, this.#key(id, "lease"), token);
  }

  /** Number of keys under this store's prefix (SCAN; for tests and diagnostics, not hot paths). */
  async countKeys(pattern = "*"): Promise<number> {
    let cursor = "0", n = 0;
    do {
      const [next, keys] = await this.#redis.scan(cursor, "MATCH", this.#prefix + pattern, "COUNT", 500);
      cursor = next;
      n += keys.length;
    } while (cursor !== "0");
    return n;
  }

  async close(): Promise<void> {
    try {
      await this.#redis.quit();
    } catch {
      this.#redis.disconnect();
    }
  }
}
