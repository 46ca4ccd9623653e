/**
 * API keys (`Authorization: Bearer <key>`) and the owner identity derived from them. Keys are never stored or
 * logged: sessions are scoped to a SHA-256 hash of the key. With no keys configured auth is off and every
 * caller is the anonymous owner.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { unauthenticated } from "../errors.ts";

export const ANONYMOUS_OWNER = "anonymous";

export function hashKey(key: string): string {
  return createHash("sha256").update(key).digest("hex").slice(0, 32);
}

export class ApiKeys {
  readonly #hashes: Buffer[];
  constructor(keys: string[]) {
    this.#hashes = keys.map((k) => createHash("sha256").update(k).digest());
  }

  get enabled(): boolean {
    return this.#hashes.length > 0;
  }

  /** The caller's owner id, or throws an `unauthenticated` ServiceError. */
  authenticate(authorization: string | undefined | null): string {
    if (!this.enabled) return ANONYMOUS_OWNER;
    if (!authorization) {
      throw unauthenticated("Missing API key: send 'Authorization: Bearer <key>'.");
    }
    const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
    if (!m) throw unauthenticated("Malformed Authorization header: expected 'Bearer <key>'.");
    const h = createHash("sha256").update(m[1]).digest();
    let ok = false;
    for (const k of this.#hashes) if (timingSafeEqual(k, h)) ok = true;
    if (!ok) throw unauthenticated("Incorrect API key provided.");
    return hashKey(m[1]);
  }
}
