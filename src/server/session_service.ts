/**
 * Session service: create / inspect / delete sessions and run the load → resume → commit cycle of a turn.
 *
 * A session record in the store holds a blob (session/bundle.ts: the history — token ids and chat messages —
 * and the snapshot: pruned KV cache, policy and sampler state, each checksummed) and a small JSON meta
 * (owner hash, policy, turn count, stats) that stays small however long the conversation grows.
 *
 * - Ownership: a session belongs to the hash of the API key that created it; another key gets 404 (the id's
 *   existence is not revealed).
 * - One turn at a time: a turn takes the store's lease on the session; a second concurrent turn gets 409
 *   `session_busy`. The turn commits with compare-and-set on the record version, so a crash mid-turn leaves
 *   the last committed turn intact.
 * - Determinism: every turn resumes from the decoded stored snapshot, never from state kept in memory, so a
 *   turn starts from exactly what a restore on another instance or after a restart gives. With f16 storage the
 *   live cache is f16 too (config.liveKVPrecision), so the snapshot is bit-exact and a resumed conversation
 *   decodes exactly like an uninterrupted one; int8 storage resumes approximately.
 * - Damage: if the blob fails its checksum / is malformed or was made by another model (fingerprint), the cache
 *   is rebuilt by re-prefilling the token history from the bundle's own checksummed section (nothing is lost)
 *   and the event is logged.
 */
import {
  decodeSnapshot,
  encodeSnapshotWithStats,
  type KVPrecision,
  SnapshotError,
} from "../session/codec.ts";
import type { SessionRecord, SessionStore } from "../session/store.ts";
import {
  createPolicy,
  type KVPolicy,
  parsePolicySpec,
  PolicyParamError,
  type PolicySpec,
} from "../kv/policy.ts";
import type { Backend } from "../engine/backend.ts";
import type { SequenceKV } from "../kv/cache.ts";
import type { Sequence } from "../engine/sequence.ts";
import type { LoadedModel } from "../model/loader.ts";
import type { ChatMessage } from "./chat_prompt.ts";
import { ApiError, badRequest, notFound } from "./errors.ts";
import { decodeBundle, encodeBundle } from "../session/bundle.ts";
import type { Metrics } from "./metrics.ts";
import type { Logger } from "./logger.ts";

export const SESSION_ID_RE = /^sess_[A-Za-z0-9]{24}$/;

export interface SessionMeta {
  owner: string;
  policy: { name: string; params: Record<string, unknown> };
  turns: number;
  /** Length of the token history (the history itself is a checksummed section of the blob: bundle.ts). */
  tokenCount: number;
  keptPerLayer: number[];
  kvBytes: number;
  storedBytes: number;
  pruneRounds: number;
  precision: KVPrecision;
  createdAt: number;
  updatedAt: number;
}

export interface SessionInfo {
  id: string;
  object: "session";
  created: number;
  updated: number;
  turns: number;
  tokens: number;
  kv_policy: { name: string } & Record<string, unknown>;
  kv: {
    kept_per_layer: number[];
    kv_bytes: number;
    stored_bytes: number;
    pruning_rounds: number;
    precision: string;
  };
}

/** The state a turn starts from. */
export interface TurnState {
  id: string;
  meta: SessionMeta;
  version: number;
  kv: SequenceKV;
  policy: KVPolicy;
  /** History; tokens.slice(kv.nextPos) are pending. */
  tokens: number[];
  /** Chat conversation so far (chat turns), for full-history prefix matching. */
  messages: ChatMessage[];
  sampler?: Record<string, unknown>;
  /** Why the cache was rebuilt from history, if it was. */
  rebuilt: string | null;
  release(): Promise<void>;
}

export interface SessionServiceOptions {
  precision: KVPrecision;
  defaultPolicy: PolicySpec;
  leaseMs: number;
}

export function newSessionId(): string {
  const abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  const r = crypto.getRandomValues(new Uint8Array(24));
  let s = "sess_";
  for (const b of r) s += abc[b % abc.length];
  return s;
}

export function validatePolicySpec(
  spec: unknown,
  param = "kv_policy",
): { name: string; params: Record<string, unknown> } {
  try {
    return parsePolicySpec(spec);
  } catch (e) {
    if (e instanceof PolicyParamError) throw badRequest(e.message, param, "invalid_kv_policy");
    throw e;
  }
}

function samePolicy(a: { name: string; params: Record<string, unknown> }, b: typeof a): boolean {
  return a.name === b.name && JSON.stringify(sortKeys(a.params)) === JSON.stringify(sortKeys(b.params));
}

function sortKeys(o: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(o).sort(([x], [y]) => (x < y ? -1 : 1)));
}

export class SessionService {
  readonly #defaultPolicy: { name: string; params: Record<string, unknown> };

  constructor(
    readonly store: SessionStore,
    readonly model: LoadedModel,
    readonly backend: Backend,
    readonly opts: SessionServiceOptions,
    readonly metrics: Metrics,
    readonly log: Logger,
  ) {
    this.#defaultPolicy = validatePolicySpec(opts.defaultPolicy);
  }

  get defaultPolicy(): { name: string; params: Record<string, unknown> } {
    return this.#defaultPolicy;
  }

  policyShape() {
    return { nLayers: this.model.config.nLayers, contextLength: this.model.config.contextLength };
  }

  newPolicy(p: { name: string; params: Record<string, unknown> }): KVPolicy {
    return createPolicy({ ...p.params, name: p.name }, this.policyShape());
  }

  checkId(id: string): void {
    if (!SESSION_ID_RE.test(id)) {
      throw badRequest(
        `Invalid session id '${id.slice(0, 64)}': expected 'sess_' followed by 24 letters or digits.`,
        "session_id",
        "invalid_session_id",
      );
    }
  }

  async create(owner: string, policySpec?: unknown): Promise<SessionInfo> {
    const policy = policySpec === undefined || policySpec === null
      ? this.#defaultPolicy
      : validatePolicySpec(policySpec);
    const now = Date.now();
    const meta: SessionMeta = {
      owner,
      policy,
      turns: 0,
      tokenCount: 0,
      keptPerLayer: new Array(this.model.config.nLayers).fill(0),
      kvBytes: 0,
      storedBytes: 0,
      pruneRounds: 0,
      precision: this.opts.precision,
      createdAt: now,
      updatedAt: now,
    };
    const id = newSessionId();
    const rec: SessionRecord = {
      id,
      owner,
      model: this.model.name,
      fingerprint: this.model.fingerprint,
      createdAt: now,
      updatedAt: now,
      turns: 0,
      version: 1,
      blob: new Uint8Array(0),
      info: meta as unknown as Record<string, unknown>,
    };
    const ok = await this.metrics.timeStore("put", () => this.store.put(rec, 0));
    if (!ok) throw new ApiError(500, "server_error", "could not create the session", null, "store_conflict");
    return this.#info(id, meta);
  }

  /** The record of `id` if it exists and belongs to `owner`; otherwise a 404 (never revealing other keys' ids). */
  async #load(owner: string, id: string): Promise<{ rec: SessionRecord; meta: SessionMeta }> {
    this.checkId(id);
    const rec = await this.metrics.timeStore("get", () => this.store.get(id));
    const meta = rec?.info as unknown as SessionMeta | undefined;
    if (!rec || !meta || rec.owner !== owner || meta.owner !== owner) {
      throw notFound(`No session found with id '${id}'.`, "session_id", "session_not_found");
    }
    return { rec, meta };
  }

  async info(owner: string, id: string): Promise<SessionInfo> {
    const { meta } = await this.#load(owner, id);
    return this.#info(id, meta);
  }

  #info(id: string, meta: SessionMeta): SessionInfo {
    return {
      id,
      object: "session",
      created: Math.floor(meta.createdAt / 1000),
      updated: Math.floor(meta.updatedAt / 1000),
      turns: meta.turns,
      tokens: meta.tokenCount,
      kv_policy: { name: meta.policy.name, ...meta.policy.params },
      kv: {
        kept_per_layer: meta.keptPerLayer,
        kv_bytes: meta.kvBytes,
        stored_bytes: meta.storedBytes,
        pruning_rounds: meta.pruneRounds,
        precision: meta.precision,
      },
    };
  }

  async delete(owner: string, id: string): Promise<void> {
    await this.#load(owner, id);
    const lease = await this.metrics.timeStore("lease", () => this.store.acquireLease(id, this.opts.leaseMs));
    if (!lease) throw busy(id);
    try {
      await this.metrics.timeStore("delete", () => this.store.delete(id));
    } finally {
      await this.store.releaseLease(id, lease).catch(() => {});
    }
  }

  /**
   * Start a turn: ownership check, lease (409 when another turn holds it), load and decode the snapshot
   * (or plan a rebuild from the token history). The caller must `release()` the returned state.
   */
  async begin(owner: string, id: string, requestedPolicy: unknown, log: Logger): Promise<TurnState> {
    await this.#load(owner, id);
    const lease = await this.metrics.timeStore("lease", () => this.store.acquireLease(id, this.opts.leaseMs));
    if (!lease) throw busy(id);
    this.metrics.activeSessions.inc();
    let released = false;
    const release = async () => {
      if (released) return;
      released = true;
      this.metrics.activeSessions.dec();
      await this.metrics.timeStore("lease", () => this.store.releaseLease(id, lease)).catch((e) =>
        log.warn({ err: String(e), session: id }, "lease release failed")
      );
    };
    try {
      // Re-read under the lease: the latest committed turn.
      const { rec, meta } = await this.#load(owner, id);
      if (requestedPolicy !== undefined && requestedPolicy !== null) {
        const want = validatePolicySpec(requestedPolicy);
        if (!samePolicy(want, meta.policy)) {
          throw badRequest(
            `kv_policy differs from the session's policy (${meta.policy.name}); a session keeps the policy it was created with.`,
            "kv_policy",
            "policy_mismatch",
          );
        }
      }
      let kv = this.backend.createKV();
      let policy = this.newPolicy(meta.policy);
      let tokens: number[] = [];
      let sampler: Record<string, unknown> | undefined;
      let rebuilt: string | null = null;
      let messages: ChatMessage[] = [];
      if (meta.turns > 0) {
        const bundle = decodeBundle(rec.blob);
        if (bundle.history) messages = bundle.history.messages as ChatMessage[];
        try {
          const snap = decodeSnapshot(bundle.snapshot, { fingerprint: this.model.fingerprint });
          kv.loadFrom(snap.kv);
          policy.importState(snap.policy.state, kv);
          tokens = snap.tokens;
          sampler = snap.sampler;
          if (!bundle.history) {
            // The history section is damaged but the cache is intact: its token history carries on; the chat
            // transcript is lost, so a resent full history is then treated as new messages.
            log.warn(
              { session: id, err: bundle.historyError },
              "session history section damaged; using the cache's",
            );
          }
        } catch (e) {
          if (!bundle.history) {
            throw new ApiError(
              500,
              "server_error",
              `Session '${id}' is damaged beyond repair in the store (history: ${bundle.historyError}; cache: ${
                (e as Error).message
              }).`,
              "session_id",
              "session_corrupted",
            );
          }
          const reason = e instanceof SnapshotError ? e.code : "restore_failed";
          rebuilt = reason;
          this.metrics.cacheRebuilds.inc({ reason });
          log.warn(
            { session: id, reason, err: (e as Error).message, tokens: bundle.history.tokens.length },
            "stored session cache unusable; rebuilding it by re-prefilling the token history",
          );
          kv.free();
          kv = this.backend.createKV();
          policy = this.newPolicy(meta.policy);
          tokens = [...bundle.history.tokens];
        }
      }
      return { id, meta, version: rec.version, kv, policy, tokens, messages, sampler, rebuilt, release };
    } catch (e) {
      await release();
      throw e;
    }
  }

  /** Commit a finished turn (CAS on the version read at `begin`). Returns the stored blob size. */
  async commit(
    turn: TurnState,
    seq: Sequence,
    messages: ChatMessage[] | null,
    log: Logger,
  ): Promise<{ storedBytes: number }> {
    const t0 = performance.now();
    const policyState = seq.policy.exportState();
    const enc = encodeSnapshotWithStats({
      fingerprint: this.model.fingerprint,
      tokens: seq.tokens,
      kv: seq.kv.toHost(),
      policy: { name: turn.meta.policy.name, params: turn.meta.policy.params, state: policyState },
      sampler: seq.sampler.getState(),
      meta: { turns: turn.meta.turns + 1 },
    }, { kvPrecision: this.opts.precision });
    const blob = encodeBundle({ tokens: seq.tokens, messages: messages ?? turn.messages }, enc.bytes);
    const st = seq.stats();
    const meta: SessionMeta = {
      ...turn.meta,
      turns: turn.meta.turns + 1,
      tokenCount: seq.tokens.length,
      keptPerLayer: st.keptPerLayer,
      kvBytes: st.kvBytes,
      storedBytes: blob.length,
      pruneRounds: turn.meta.pruneRounds + st.pruneRounds,
      precision: this.opts.precision,
      updatedAt: Date.now(),
    };
    const rec: SessionRecord = {
      id: turn.id,
      owner: meta.owner,
      model: this.model.name,
      fingerprint: this.model.fingerprint,
      createdAt: meta.createdAt,
      updatedAt: meta.updatedAt,
      turns: meta.turns,
      version: turn.version + 1,
      blob,
      info: meta as unknown as Record<string, unknown>,
    };
    const ok = await this.metrics.timeStore("put", () => this.store.put(rec, turn.version));
    if (!ok) {
      throw new ApiError(
        409,
        "conflict_error",
        `Session '${turn.id}' was changed by another writer during this turn; the turn was not saved.`,
        "session_id",
        "session_conflict",
      );
    }
    log.debug({ session: turn.id, bytes: blob.length, ms: performance.now() - t0 }, "session committed");
    return { storedBytes: blob.length };
  }
}

function busy(id: string): ApiError {
  return new ApiError(
    409,
    "conflict_error",
    `Session '${id}' is busy: another turn is in progress. Wait for it to finish, then retry.`,
    "session_id",
    "session_busy",
  );
}
