/**
 * The lease a session turn holds on its session (store.ts: acquire / renew / release).
 *
 * Short and renewed: it is taken for `ttlMs`, a heartbeat renews it every ttlMs/3 while the turn lives, and
 * it is given up on commit, abort or shutdown. After a crash (kill -9) nobody renews it, so the session is
 * free again at most ttlMs after the dead holder's last renewal — at most ttlMs after the crash.
 *
 * The holder stops trusting its lease when a renewal is refused (it expired, so another instance may have
 * taken it) or when no renewal has been confirmed for ttlMs (the store is unreachable or too slow): `lost`
 * then aborts, the turn is cancelled and does not commit. Time is measured locally from the moment a
 * confirmed renewal was *sent*, so the local deadline never outlives the store's.
 */
import type { SessionStore } from "../session/store.ts";
import type { Logger } from "./logger.ts";
import type { Metrics } from "./metrics.ts";

export class Lease {
  readonly #lost = new AbortController();
  readonly #timer: ReturnType<typeof setInterval>;
  #confirmedAt: number;
  /** The renewal in flight, if any (a release waits for it). */
  #renewing: Promise<void> | null = null;
  #released = false;

  private constructor(
    readonly store: SessionStore,
    readonly id: string,
    readonly token: string,
    readonly ttlMs: number,
    readonly metrics: Metrics,
    readonly log: Logger,
    readonly held: Set<Lease>,
    sentAt: number,
  ) {
    this.#confirmedAt = sentAt;
    held.add(this);
    this.#timer = setInterval(() => void this.#beat(), Math.max(1, Math.floor(ttlMs / 3)));
  }

  /** Take the lease on `id`, or null when another turn holds it. Live leases are kept in `held`. */
  static async acquire(
    store: SessionStore,
    id: string,
    ttlMs: number,
    deps: { metrics: Metrics; log: Logger; held: Set<Lease> },
  ): Promise<Lease | null> {
    const sentAt = performance.now();
    const token = await deps.metrics.timeStore("lease", () => store.acquireLease(id, ttlMs));
    if (!token) return null;
    deps.log.debug({ session: id }, "session lease taken");
    return new Lease(store, id, token, ttlMs, deps.metrics, deps.log, deps.held, sentAt);
  }

  /** Aborts when the lease can no longer be trusted (see the module comment). */
  get lost(): AbortSignal {
    return this.#lost.signal;
  }

  /** Whether this holder still certainly holds the lease (confirmed less than ttlMs ago, not lost). */
  get valid(): boolean {
    return !this.#released && !this.#lost.signal.aborted &&
      performance.now() - this.#confirmedAt < this.ttlMs;
  }

  async #beat(): Promise<void> {
    if (!this.valid) return this.#lose("no renewal was confirmed within the lease time");
    if (this.#renewing) return;
    this.#renewing = this.#renew().finally(() => this.#renewing = null);
    await this.#renewing;
  }

  async #renew(): Promise<void> {
    const sentAt = performance.now();
    try {
      const ok = await this.metrics.timeStore(
        "lease_renew",
        () => this.store.renewLease(this.id, this.token, this.ttlMs),
      );
      if (ok) this.#confirmedAt = Math.max(this.#confirmedAt, sentAt);
      else if (!this.#released) this.#lose("the store refused the renewal (the lease expired)");
    } catch (e) {
      // Keep trying until the lease time runs out.
      this.log.warn({ session: this.id, err: String(e) }, "session lease renewal failed");
    }
  }

  #lose(why: string): void {
    if (this.#lost.signal.aborted || this.#released) return;
    clearInterval(this.#timer);
    this.log.warn({ session: this.id, why }, "session lease lost; the turn will not be committed");
    this.#lost.abort();
  }

  /**
   * Give the lease up (idempotent; safe after `lost`: the store only deletes it for this token). If the store
   * refuses (unreachable, full), retry in the background until the lease would have expired anyway, so the
   * session is free as soon as the store is back rather than after the lease time.
   */
  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    clearInterval(this.#timer);
    this.held.delete(this);
    // Logged before the store lets go, so the log's holding intervals of one session never overlap.
    this.log.debug({ session: this.id }, "session lease given up");
    await this.#renewing; // never race the holder's own renewal
    await this.#giveUp(performance.now() + this.ttlMs);
  }

  async #giveUp(until: number): Promise<void> {
    try {
      await this.metrics.timeStore("lease", () => this.store.releaseLease(this.id, this.token));
    } catch (e) {
      this.log.warn({ err: String(e), session: this.id }, "lease release failed");
      const retryMs = Math.max(50, this.ttlMs / 10);
      if (performance.now() + retryMs < until) {
        Deno.unrefTimer(setTimeout(() => void this.#giveUp(until), retryMs));
      }
    }
  }
}
