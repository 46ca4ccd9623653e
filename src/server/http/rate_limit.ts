/** Per-key rate limiting: a token bucket per owner (requests per second with a burst). */
import { rateLimited } from "../errors.ts";

export class RateLimiter {
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  constructor(readonly ratePerSec: number, readonly burst: number, readonly now = () => performance.now()) {}

  get enabled(): boolean {
    return this.ratePerSec > 0;
  }

  /** Take one token for `owner` or throw a `rate_limited` ServiceError (429 with Retry-After). */
  take(owner: string): void {
    if (!this.enabled) return;
    const t = this.now();
    let b = this.#buckets.get(owner);
    if (!b) {
      b = { tokens: this.burst, at: t };
      this.#buckets.set(owner, b);
    }
    b.tokens = Math.min(this.burst, b.tokens + ((t - b.at) / 1000) * this.ratePerSec);
    b.at = t;
    if (b.tokens < 1) {
      const wait = (1 - b.tokens) / this.ratePerSec;
      throw rateLimited("Rate limit exceeded for this API key; retry later.", wait, "rate_limit_exceeded");
    }
    b.tokens -= 1;
    if (this.#buckets.size > 10_000) this.#evict(t);
  }

  #evict(t: number): void {
    for (const [k, b] of this.#buckets) {
      if (b.tokens + ((t - b.at) / 1000) * this.ratePerSec >= this.burst) this.#buckets.delete(k);
    }
  }
}
