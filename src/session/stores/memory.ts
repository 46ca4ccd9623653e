/** In-process session store (tests, ephemeral deployments). Same semantics as the durable stores. */
import { checkId, checkPut, checkTtl, newToken, type SessionRecord, type SessionStore } from "../store.ts";

function copy(rec: SessionRecord): SessionRecord {
  return { ...structuredClone({ ...rec, blob: undefined }), blob: rec.blob.slice() } as SessionRecord;
}

export class MemorySessionStore implements SessionStore {
  readonly kind = "memory" as const;
  #records = new Map<string, SessionRecord>();
  #leases = new Map<string, { token: string; expiresAt: number }>();
  #closed = false;

  /** Run synchronously, reporting errors as rejections (like the asynchronous stores). */
  #run<T>(fn: () => T): Promise<T> {
    try {
      if (this.#closed) throw new Error("session store is closed");
      return Promise.resolve(fn());
    } catch (e) {
      return Promise.reject(e);
    }
  }

  get(id: string): Promise<SessionRecord | null> {
    return this.#run(() => {
      checkId(id);
      const r = this.#records.get(id);
      return r ? copy(r) : null;
    });
  }

  put(rec: SessionRecord, expectedVersion: number): Promise<boolean> {
    return this.#run(() => {
      checkPut(rec, expectedVersion);
      const cur = this.#records.get(rec.id)?.version ?? 0;
      if (cur !== expectedVersion) return false;
      this.#records.set(rec.id, copy(rec));
      return true;
    });
  }

  delete(id: string): Promise<boolean> {
    return this.#run(() => {
      checkId(id);
      return this.#records.delete(id);
    });
  }

  acquireLease(id: string, ttlMs: number): Promise<string | null> {
    return this.#run(() => {
      checkId(id);
      checkTtl(ttlMs);
      const now = Date.now();
      const cur = this.#leases.get(id);
      if (cur && cur.expiresAt > now) return null;
      const token = newToken();
      this.#leases.set(id, { token, expiresAt: now + ttlMs });
      return token;
    });
  }

  renewLease(id: string, token: string, ttlMs: number): Promise<boolean> {
    return this.#run(() => {
      checkId(id);
      checkTtl(ttlMs);
      const now = Date.now();
      const cur = this.#leases.get(id);
      if (!cur || cur.token !== token || cur.expiresAt <= now) return false;
      cur.expiresAt = now + ttlMs;
      return true;
    });
  }

  releaseLease(id: string, token: string): Promise<void> {
    return this.#run(() => {
      checkId(id);
      if (this.#leases.get(id)?.token === token) this.#leases.delete(id);
    });
  }

  close(): Promise<void> {
    this.#closed = true;
    this.#records.clear();
    this.#leases.clear();
    return Promise.resolve();
  }
}
