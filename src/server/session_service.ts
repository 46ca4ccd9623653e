/**
 * The sessions resource: create / inspect / delete sessions, and open a turn on one (ownership, lease,
 * reading the record) and save what a turn committed. What a turn does in between is turn.ts; the stored
 * formats are src/session/ (bundle.ts: history + snapshot; codec.ts: the snapshot; store.ts: the stores).
 *
 * A session record in the store holds a blob (the bundle: the history — token ids and chat messages — and
 * the snapshot: pruned KV cache, policy and sampler state, each checksummed) and a small JSON meta (owner
 * hash, policy, turn count, stats) that stays small however long the conversation grows.
 *
 * - Ownership: a session belongs to the hash of the API key that created it; another key gets not_found (the
 *   id's existence is not revealed).
 * - One turn at a time: a turn takes the store's lease on the session (lease.ts: short, renewed while the
 *   turn runs); a second concurrent turn gets conflict `session_busy`. The turn commits with compare-and-set
 *   on the record version, so a crash mid-turn leaves the last committed turn intact, and after a crash the
 *   session takes new turns again within the lease time (`leaseMs`).
 * - Precision: with f16 storage the live cache is f16 too (config.liveKVPrecision), so the snapshot is
 *   bit-exact and a resumed conversation decodes exactly like an uninterrupted one; int8 storage resumes
 *   approximately.
 */
import { encodeSnapshotWithStats, type KVPrecision } from "../session/codec.ts";
import type { SessionRecord, SessionStore } from "../session/store.ts";
import { encodeBundle, type TurnRecord } from "../session/bundle.ts";
import type { PolicySpec } from "../kv/contract.ts";
import type { Backend } from "../engine/backend.ts";
import type { Sequence } from "../engine/sequence.ts";
import type { LoadedModel } from "../model/loader.ts";
import type { ChatMessage } from "./chat_prompt.ts";
import { conflict, internal, invalid, notFound, sessionBusy, storeFailure } from "./errors.ts";
import { Lease } from "./lease.ts";
import type { Metrics } from "./metrics.ts";
import type { Logger } from "./logger.ts";
import { type PolicyChoice, type SessionSlot, Turn, type TurnInput, validatePolicySpec } from "./turn.ts";

export const SESSION_ID_RE = /^sess_[A-Za-z0-9]{24}$/;

export interface SessionMeta {
  owner: string;
  policy: PolicyChoice;
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

function samePolicy(a: PolicyChoice, b: PolicyChoice): boolean {
  return a.name === b.name && JSON.stringify(sortKeys(a.params)) === JSON.stringify(sortKeys(b.params));
}

function sortKeys(o: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(o).sort(([x], [y]) => (x < y ? -1 : 1)));
}

export class SessionService {
  readonly #defaultPolicy: PolicyChoice;
  /** Leases this instance holds (given up on shutdown). */
  readonly #leases = new Set<Lease>();

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

  get defaultPolicy(): PolicyChoice {
    return this.#defaultPolicy;
  }

  /** Session leases this instance holds right now (running turns, deletes in progress). */
  get leasesHeld(): number {
    return this.#leases.size;
  }

  checkId(id: string): void {
    if (!SESSION_ID_RE.test(id)) {
      throw invalid(
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
    const ok = await this.#store(
      "put",
      () => this.store.put(this.#record(id, meta, 1, new Uint8Array(0)), 0),
    );
    if (!ok) throw internal("could not create the session", null, "store_conflict");
    return this.#info(id, meta);
  }

  #record(id: string, meta: SessionMeta, version: number, blob: Uint8Array): SessionRecord {
    return {
      id,
      owner: meta.owner,
      model: this.model.name,
      fingerprint: this.model.fingerprint,
      createdAt: meta.createdAt,
      updatedAt: meta.updatedAt,
      turns: meta.turns,
      version,
      blob,
      info: meta as unknown as Record<string, unknown>,
    };
  }

  /** The record of `id` if it exists and belongs to `owner`; otherwise not_found (never revealing other keys' ids). */
  async #load(owner: string, id: string): Promise<{ rec: SessionRecord; meta: SessionMeta }> {
    this.checkId(id);
    const rec = await this.#store("get", () => this.store.get(id));
    const meta = rec?.info as unknown as SessionMeta | undefined;
    if (!rec || !meta || rec.owner !== owner || meta.owner !== owner) {
      throw notFound(`No session found with id '${id}'.`, "session_id", "session_not_found");
    }
    return { rec, meta };
  }

  /** A session's stored record, for read-only views of it (session_view.ts). */
  async read(owner: string, id: string): Promise<{ meta: SessionMeta; blob: Uint8Array }> {
    const { rec, meta } = await this.#load(owner, id);
    return { meta, blob: rec.blob };
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

  /** A store operation, timed; its failure becomes a service error (storeFailure: 503, or 500 if corrupt). */
  #store<T>(op: string, f: () => Promise<T>, log: Logger = this.log): Promise<T> {
    return this.metrics.timeStore(op, f).catch(this.#failed(op, log));
  }

  #failed(op: string, log: Logger): (e: unknown) => never {
    return (e) => {
      log.warn({ op, err: String(e) }, "session store operation failed");
      throw storeFailure(e);
    };
  }

  #lease(id: string, log: Logger): Promise<Lease | null> {
    return Lease.acquire(this.store, id, this.opts.leaseMs, {
      metrics: this.metrics,
      log,
      held: this.#leases,
    })
      .catch(this.#failed("lease", log));
  }

  async delete(owner: string, id: string): Promise<void> {
    await this.#load(owner, id);
    const lease = await this.#lease(id, this.log);
    if (!lease) throw sessionBusy(id);
    try {
      await this.#store("delete", () => this.store.delete(id));
    } finally {
      await lease.release();
    }
  }

  /**
   * Open a turn on session `id`: ownership, the lease (conflict `session_busy` while another turn holds it),
   * the latest committed record, the policy check; then `Turn.fromRecord` decides where the turn starts.
   * The turn owns the lease from here: its commit or abort gives it up.
   */
  async openTurn(
    owner: string,
    id: string,
    req: { policy?: unknown; input: TurnInput; log: Logger },
  ): Promise<Turn> {
    await this.#load(owner, id);
    const lease = await this.#lease(id, req.log);
    if (!lease) throw sessionBusy(id);
    let slotOwned = false;
    try {
      // Re-read under the lease: the latest committed turn.
      const { rec, meta } = await this.#load(owner, id);
      if (req.policy !== undefined && req.policy !== null) {
        const want = validatePolicySpec(req.policy);
        if (!samePolicy(want, meta.policy)) {
          throw invalid(
            `kv_policy differs from the session's policy (${meta.policy.name}); a session keeps the policy it was created with.`,
            "kv_policy",
            "policy_mismatch",
          );
        }
      }
      const slot: SessionSlot = { id, meta, version: rec.version, lease, service: this };
      slotOwned = true; // fromRecord gives the lease up itself if it throws
      return await Turn.fromRecord(
        { model: this.model, backend: this.backend, metrics: this.metrics },
        slot,
        rec.blob,
        req.input,
        req.log,
      );
    } finally {
      if (!slotOwned) await lease.release();
    }
  }

  /**
   * Store a turn's finished sequence as the session's next version (CAS), with the conversation, the turn
   * records (ending with this turn's, whose stored bytes the next commit fills in) and the turn's pruning
   * rounds. Returns the stored blob size.
   */
  async save(
    slot: SessionSlot,
    seq: Sequence,
    turn: { messages: ChatMessage[]; turns: TurnRecord[]; rounds: number },
  ): Promise<number> {
    const t0 = performance.now();
    const { meta: prev } = slot;
    const enc = encodeSnapshotWithStats({
      fingerprint: this.model.fingerprint,
      tokens: seq.tokens,
      kv: seq.kv.toHost(),
      policy: { name: prev.policy.name, params: prev.policy.params, state: seq.policy.exportState() },
      sampler: seq.sampler.getState(),
      meta: { turns: prev.turns + 1 },
    }, { kvPrecision: this.opts.precision });
    const last = turn.turns.length - 1;
    const turns = turn.turns.map((t, i) =>
      i < last && t.stored_bytes === null ? { ...t, stored_bytes: prev.storedBytes } : t
    );
    const blob = encodeBundle({ tokens: seq.tokens, messages: turn.messages, turns }, enc.bytes);
    const st = seq.stats();
    const meta: SessionMeta = {
      ...prev,
      turns: prev.turns + 1,
      tokenCount: seq.tokens.length,
      keptPerLayer: st.keptPerLayer,
      kvBytes: st.kvBytes,
      storedBytes: blob.length,
      pruneRounds: prev.pruneRounds + turn.rounds,
      precision: this.opts.precision,
      updatedAt: Date.now(),
    };
    const rec = this.#record(slot.id, meta, slot.version + 1, blob);
    const ok = await this.#store("put", () => this.store.put(rec, slot.version));
    if (!ok) {
      throw conflict(
        `Session '${slot.id}' was changed by another writer during this turn; the turn was not saved.`,
        "session_id",
        "session_conflict",
      );
    }
    this.log.debug({ session: slot.id, bytes: blob.length, ms: performance.now() - t0 }, "session committed");
    return blob.length;
  }

  /** Give up every lease still held (shutdown, after the running turns ended): their sessions are free at once. */
  async close(): Promise<void> {
    await Promise.all([...this.#leases].map((l) => l.release()));
  }
}
