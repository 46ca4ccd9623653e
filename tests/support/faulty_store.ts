/**
 * Fault injection at the store boundary: a SessionStore that forwards to a real one until told to fail some of
 * its operations, the way a store fails in production (Redis unreachable, sqlite full).
 */
import type { SessionRecord, SessionStore } from "../../src/session/store.ts";

export type StoreOp = "get" | "put" | "delete" | "acquireLease" | "renewLease" | "releaseLease";

export const STORE_FAULTS = {
  unreachable: () => new Error("connect ECONNREFUSED 127.0.0.1:6379 (injected)"),
  full: () => new TypeError("database or disk is full (injected)"),
} as const;

export class FaultyStore implements SessionStore {
  readonly kind;
  /** Operations that fail now, and with what. */
  readonly #failing = new Map<StoreOp, () => Error>();
  /** Failures injected so far, by operation. */
  readonly injected: Record<string, number> = {};

  constructor(readonly inner: SessionStore) {
    this.kind = inner.kind;
  }

  /** Make `ops` fail with `fault` until `heal()`. */
  fail(ops: StoreOp[], fault: keyof typeof STORE_FAULTS): void {
    for (const op of ops) this.#failing.set(op, STORE_FAULTS[fault]);
  }

  heal(): void {
    this.#failing.clear();
  }

  #run<T>(op: StoreOp, f: () => Promise<T>): Promise<T> {
    const fault = this.#failing.get(op);
    if (!fault) return f();
    this.injected[op] = (this.injected[op] ?? 0) + 1;
    return Promise.reject(fault());
  }

  get(id: string) {
    return this.#run("get", () => this.inner.get(id));
  }
  put(rec: SessionRecord, expectedVersion: number) {
    return this.#run("put", () => this.inner.put(rec, expectedVersion));
  }
  delete(id: string) {
    return this.#run("delete", () => this.inner.delete(id));
  }
  acquireLease(id: string, ttlMs: number) {
    return this.#run("acquireLease", () => this.inner.acquireLease(id, ttlMs));
  }
  renewLease(id: string, token: string, ttlMs: number) {
    return this.#run("renewLease", () => this.inner.renewLease(id, token, ttlMs));
  }
  releaseLease(id: string, token: string) {
    return this.#run("releaseLease", () => this.inner.releaseLease(id, token));
  }
  close() {
    return this.inner.close();
  }
}
