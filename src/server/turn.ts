/**
 * A turn: one generation on one KV cache, from open to commit or abort (in the spirit of llama.cpp's server
 * slot). The turn owns the cache, the KV policy, the sampler state it resumes and, on a session, the lease
 * (lease.ts, renewed by its heartbeat while the turn lives).
 *
 *   open ──plan()──▶ planned ──sequence()──▶ running ──commit()──▶ committed
 *     └──────────────────┴───────────────────────┴──────abort()──▶ aborted
 *
 * - open (`Turn.fresh`, or `Turn.fromRecord` once session_service.ts took the lease and read the record):
 *   where the turn starts — the stored cache, or a rebuild and why. `fromRecord` is the one place that
 *   decides, for every reason: the client resent a conversation that diverges from the stored one, the
 *   snapshot fails its checksum, is malformed or was made by another model.
 * - plan: which prompt tokens to prefill, given that starting point and the request's input. A chat turn on
 *   a model template prefills its conversation's fresh render after the longest prefix it shares with the
 *   stored history (rows past that prefix leave the cache), so its prompt is a stateless request's.
 * - running: the Sequence the scheduler drives (it holds this turn's cache and policy).
 * - commit / abort: the only places that free the cache (one per turn, emptied for a rebuild) and give the
 *   lease up. A turn whose lease was lost does not commit (the record's compare-and-set guards the store as
 *   well). A commit first settles the sequence's last prune plan; a chat commit then stores only what the
 *   template's next render shares (`evictAtCommit`: a finished turn's reasoning, where the template drops it);
 *   the turn's record (its generation's figures and what the commit dropped) joins the session's timeline.
 *
 * Determinism: a session turn resumes from the decoded stored snapshot, never from state kept in memory, so
 * it starts from exactly what a restore on another instance or after a restart gives.
 */
import { Sequence, type SequenceOptions } from "../engine/sequence.ts";
import type { Backend } from "../engine/backend.ts";
import { HostKVCache, type SequenceKV } from "../kv/cache.ts";
import type { KVPolicy } from "../kv/contract.ts";
import { createPolicy, parsePolicySpec, PolicyParamError } from "../kv/registry.ts";
import type { LoadedModel } from "../model/loader.ts";
import type { Tokenizer } from "../model/tokenizer/types.ts";
import { decodeBundle, MAX_TURN_RECORDS, type TurnRecord } from "../session/bundle.ts";
import { decodeSnapshot, SnapshotError } from "../session/codec.ts";
import { type ChatMessage, type ChatOptions, type ChatRenderer, sameMessage } from "./chat_prompt.ts";
import { conflict, internal, invalid } from "./errors.ts";
import type { Lease } from "./lease.ts";
import type { Logger } from "./logger.ts";
import type { Metrics } from "./metrics.ts";
import type { SessionMeta, SessionService } from "./session_service.ts";

/** A validated KV-policy spec: its name and its params (defaults not filled in). */
export interface PolicyChoice {
  name: string;
  params: Record<string, unknown>;
}

/** A request's `kv_policy` → PolicyChoice, or an `invalid` error naming `param`. */
export function validatePolicySpec(spec: unknown, param = "kv_policy"): PolicyChoice {
  try {
    return parsePolicySpec(spec);
  } catch (e) {
    if (e instanceof PolicyParamError) throw invalid(e.message, param, "invalid_kv_policy");
    throw e;
  }
}

export type TurnInput =
  | { kind: "text"; text: string; parseSpecial?: boolean }
  | { kind: "chat"; messages: ChatMessage[]; options?: ChatOptions };

export interface TurnPlan {
  /** Prompt tokens this turn feeds after the history. */
  newTokens: number[];
  /** History + new tokens: the sequence's prompt. */
  promptTokens: number;
  /** Tokens already in the cache (reused, not prefilled). */
  cached: number;
  /** The reply starts inside a `<think>` block the prompt opened. */
  startsInReasoning: boolean;
}

/** A finished turn's reply: its raw text, and its content and reasoning as the response gave them. */
export interface TurnReply {
  text: string;
  content: string;
  /** Null when the reply had no reasoning section (or reasoning was not split out). */
  reasoning: string | null;
}

/** What every turn needs: the model and the backend that owns the caches. */
export interface TurnContext {
  model: LoadedModel;
  backend: Backend;
  metrics: Metrics;
}

/** The stored session a turn runs on: its record as read under the lease. */
export interface SessionSlot {
  id: string;
  meta: SessionMeta;
  version: number;
  lease: Lease;
  service: SessionService;
}

export type TurnState = "open" | "planned" | "running" | "committed" | "aborted";

const NEVER = new AbortController().signal;

export class Turn {
  #state: TurnState = "open";
  readonly #kv: SequenceKV;
  #policy: KVPolicy;
  /** History; tokens.slice(kv.nextPos) are pending. */
  #tokens: number[] = [];
  /** Chat conversation so far (chat turns), for full-history prefix matching. */
  #messages: ChatMessage[] = [];
  #sampler: Record<string, unknown> | undefined;
  /** The conversation after this turn's prompt (chat input), stored on commit with the reply. */
  #conversation: ChatMessage[] | null = null;
  #chat: { renderer: ChatRenderer; options: ChatOptions } | null = null;
  #seq: Sequence | null = null;
  /** Why the cache was rebuilt instead of resumed, if it was. */
  rebuilt: string | null = null;
  /** The session's turn records so far (its KV timeline); a commit adds this turn's. */
  #turns: TurnRecord[] = [];
  /** The policy's pruning-round counter (it carries on across a session's turns) when the turn started. */
  #roundsAtStart = 0;
  /** The turn's record as its commit stored it. */
  #record: TurnRecord | null = null;

  private constructor(
    readonly ctx: TurnContext,
    readonly policyChoice: PolicyChoice,
    readonly slot: SessionSlot | null,
  ) {
    this.#kv = ctx.backend.createKV();
    this.#policy = this.#newPolicy();
  }

  /** Open a turn without a session: an empty cache, nothing stored. */
  static fresh(ctx: TurnContext, policy: PolicyChoice): Turn {
    return new Turn(ctx, policy, null);
  }

  /**
   * Open a session turn from its record (read under the lease `slot.lease`): resume the stored cache, or
   * rebuild it, deciding here for every reason. Throws (after giving the lease up) when neither is possible.
   */
  static async fromRecord(
    ctx: TurnContext,
    slot: SessionSlot,
    blob: Uint8Array,
    input: TurnInput,
    log: Logger,
  ): Promise<Turn> {
    const turn = new Turn(ctx, slot.meta.policy, slot);
    try {
      turn.#resume(blob, input, log);
      return turn;
    } catch (e) {
      await turn.abort();
      throw e;
    }
  }

  #resume(blob: Uint8Array, input: TurnInput, log: Logger): void {
    const id = this.slot!.id;
    if (this.slot!.meta.turns === 0) return; // nothing stored yet
    const bundle = decodeBundle(blob);
    const messages = (bundle.history?.messages ?? []) as ChatMessage[];
    this.#turns = bundle.history?.turns ?? [];
    if (input.kind === "chat" && diverges(messages, input.messages)) {
      // The client resent a conversation that is not a continuation of the stored one: start over from it.
      log.info({ session: id }, "conversation diverges from the stored history; rebuilding the cache");
      return this.#rebuild("history_diverged", [], []);
    }
    try {
      const snap = decodeSnapshot(bundle.snapshot, { fingerprint: this.ctx.model.fingerprint });
      this.#kv.loadFrom(snap.kv);
      this.#policy.importState(snap.policy.state, this.#kv);
      this.#tokens = snap.tokens;
      this.#sampler = snap.sampler;
      this.#messages = messages;
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
        throw internal(
          `Session '${id}' is damaged beyond repair in the store (history: ${bundle.historyError}; cache: ${
            (e as Error).message
          }).`,
          "session_id",
          "session_corrupted",
        );
      }
      const reason = e instanceof SnapshotError ? e.code : "restore_failed";
      log.warn(
        { session: id, reason, err: (e as Error).message, tokens: bundle.history.tokens.length },
        "stored session cache unusable; rebuilding it by re-prefilling the token history",
      );
      this.#rebuild(reason, [...bundle.history.tokens], messages);
    }
  }

  /** Start from an empty cache (the turn's own, emptied) and a fresh policy that will prefill `tokens`. */
  #rebuild(reason: string, tokens: number[], messages: ChatMessage[]): void {
    this.#kv.loadFrom(new HostKVCache(this.#kv.shape, 1));
    this.#policy = this.#newPolicy();
    this.#tokens = tokens;
    this.#messages = messages;
    this.#sampler = undefined;
    this.rebuilt = reason;
    this.ctx.metrics.cacheRebuilds.inc({ reason });
  }

  #newPolicy(): KVPolicy {
    const { name, params } = this.policyChoice;
    const c = this.ctx.model.config;
    return createPolicy({ ...params, name }, { nLayers: c.nLayers, contextLength: c.contextLength });
  }

  get state(): TurnState {
    return this.#state;
  }

  get sessionId(): string | undefined {
    return this.slot?.id;
  }

  /** The record this turn's commit stored in the session's timeline (null before, or without a session). */
  get record(): TurnRecord | null {
    return this.#record;
  }

  /** This turn's number in its session (1 for the first; 1 without a session). */
  get number(): number {
    return (this.slot?.meta.turns ?? 0) + 1;
  }

  /** Tokens of history the turn starts from (in the cache or still to prefill). */
  get historyTokens(): number {
    return this.#tokens.length;
  }

  /** Aborts when the session lease is lost (never, without a session): the turn must then stop. */
  get leaseLost(): AbortSignal {
    return this.slot?.lease.lost ?? NEVER;
  }

  #expect(s: TurnState, what: string): void {
    if (this.#state !== s) throw new Error(`turn: ${what} in state ${this.#state}`);
  }

  /** The prompt tokens to prefill for `input`, after the stored history. */
  plan(input: TurnInput, tok: Tokenizer, renderer: ChatRenderer): TurnPlan {
    this.#expect("open", "plan");
    let newTokens: number[];
    let startsInReasoning = false;
    if (input.kind === "text") {
      newTokens = input.text.length > 0
        ? tok.encode(input.text, { addBos: this.#tokens.length === 0, parseSpecial: input.parseSpecial })
        : [];
    } else {
      const msgs = input.messages, stored = this.#messages, options = input.options ?? {};
      // The whole conversation, extending the stored one (`fromRecord` rebuilt it otherwise), or only the new
      // messages.
      const whole = stored.length > 0 && sameMessage(msgs[0], stored[0]);
      this.#conversation = whole || stored.length === 0 ? [...msgs] : [...stored, ...msgs];
      this.#chat = { renderer, options };
      if (renderer.usesModelTemplate || this.#tokens.length === 0) {
        const prompt = renderer.prompt(this.#conversation, options);
        startsInReasoning = prompt.startsInReasoning;
        newTokens = prompt.tokens.slice(this.#reuse(prompt.tokens));
      } else {
        // Default template: append (see chat_prompt.ts).
        newTokens = tok.encode(renderer.continuationText(stored, this.#conversation.slice(stored.length)));
      }
    }
    this.#state = "planned";
    return {
      newTokens,
      promptTokens: this.#tokens.length + newTokens.length,
      cached: this.#kv.nextPos,
      startsInReasoning,
    };
  }

  /**
   * Keep the longest common prefix of the history and a chat prompt (at least its last token is fed again):
   * rows past it leave the cache, so the turn prefills exactly the prompt's render. Returns its length.
   */
  #reuse(prompt: number[]): number {
    const h = this.#tokens, n = Math.min(h.length, prompt.length - 1);
    let p = 0;
    while (p < n && h[p] === prompt[p]) p++;
    if (p < this.#kv.nextPos) this.#policy.rewind(this.#kv, p);
    this.ctx.metrics.historyDropped.inc({ at: "resume" }, h.length - p);
    this.#tokens = h.slice(0, p);
    return p;
  }

  /** The running sequence: the stored history (with its sampler state, where it applies) + the plan's tokens. */
  sequence(plan: TurnPlan, opts: Omit<SequenceOptions, "policy">): Sequence {
    this.#expect("planned", "sequence");
    const { backend, model } = this.ctx;
    const seq = new Sequence(backend, model.tokenizer, { ...opts, policy: this.#policy }, {
      kv: this.#kv,
      tokens: this.#tokens,
    });
    const stored = this.#sampler as { params?: { seed?: number } } | undefined;
    if (stored && (opts.sampling.seed === undefined || opts.sampling.seed === stored.params?.seed)) {
      try {
        seq.sampler.setState(stored as Record<string, unknown>);
      } catch { /* a fresh sampler is fine */ }
    }
    seq.feed(plan.newTokens);
    seq.start();
    this.#roundsAtStart = this.#policy.stats.pruneRounds;
    this.#seq = seq;
    this.#state = "running";
    return seq;
  }

  /**
   * The finished sequence becomes the session's new version (compare-and-set on the version read at open).
   * Returns the stored bytes (null without a session). Refuses, aborting, when the lease was lost.
   * `record` (what the turn's generation did to the cache) joins the session's timeline with what the commit
   * dropped.
   */
  async commit(reply: TurnReply, record?: Omit<TurnRecord, "dropped_at_commit">): Promise<number | null> {
    this.#expect("running", "commit");
    let stored: number | null = null;
    let ok = false;
    try {
      if (this.slot) {
        if (!this.slot.lease.valid) throw leaseLost(this.slot.id);
        const chat = this.#chat;
        const messages = chat ? withReply(this.#conversation!, reply, chat.options) : this.#messages;
        // the last prune plan first, so the snapshot and the policy state hold the same rows (and the
        // eviction below rewinds the rows the policy kept)
        this.#seq!.settle();
        const dropped = chat
          ? evictAtCommit(this.#seq!, chat.renderer.nextTurnPrefix(messages, chat.options))
          : 0;
        if (chat) this.ctx.metrics.historyDropped.inc({ at: "commit" }, dropped);
        this.#record = record ? { ...record, dropped_at_commit: dropped } : null;
        const turns = this.#record ? [...this.#turns, this.#record].slice(-MAX_TURN_RECORDS) : this.#turns;
        const rounds = this.#policy.stats.pruneRounds - this.#roundsAtStart;
        stored = await this.slot.service.save(this.slot, this.#seq!, { messages, turns, rounds });
      }
      ok = true;
      return stored;
    } finally {
      await this.#close(ok ? "committed" : "aborted");
    }
  }

  /** End the turn without storing anything (idempotent; a no-op once committed). */
  async abort(): Promise<void> {
    if (this.#state === "committed" || this.#state === "aborted") return;
    await this.#close("aborted");
  }

  async #close(end: "committed" | "aborted"): Promise<void> {
    this.#state = end;
    this.#kv.free();
    this.#seq = null;
    await this.slot?.lease.release();
  }
}

/** The conversation with the turn's reply: a new assistant message, or the continued final one. */
function withReply(conversation: ChatMessage[], reply: TurnReply, opts: ChatOptions): ChatMessage[] {
  if (opts.continueFinalMessage) {
    const last = conversation.at(-1)!;
    return [...conversation.slice(0, -1), { ...last, content: (last.content ?? "") + reply.text }];
  }
  const message: ChatMessage = reply.reasoning === null
    ? { role: "assistant", content: reply.text }
    : { role: "assistant", content: reply.content, reasoning_content: reply.reasoning };
  return [...conversation, message];
}

/**
 * What the stored cache keeps of a finished chat turn: the longest prefix of its tokens that the next turn's
 * prompt starts with (`nextTurnPrefix`: the template's render of the conversation). A template that drops
 * earlier turns' reasoning (R1's, Qwen3's, QwQ's) ends that prefix before the turn's `<think>`, so the
 * reasoning rows, and the answer rows after them (which the next turn prefills again as the template renders
 * the answer), leave the cache before it is stored: the stored session is exactly the prefix a fresh render
 * of the conversation shares, never rows the next prompt would not contain. Other templates keep everything.
 * Returns the number of history tokens dropped.
 */
export function evictAtCommit(seq: Sequence, nextPrefix: readonly number[] | null): number {
  if (nextPrefix === null) return 0;
  const t = seq.tokens;
  let p = 0;
  while (p < t.length && p < nextPrefix.length && t[p] === nextPrefix[p]) p++;
  const dropped = t.length - p;
  seq.rewind(p);
  return dropped;
}

/**
 * Whether a resent conversation `msgs` fails to extend the `stored` one: it starts like it (the client sends
 * the whole history) but is not a strict extension of it (an earlier message was edited or dropped).
 */
function diverges(stored: ChatMessage[], msgs: ChatMessage[]): boolean {
  if (stored.length === 0 || !sameMessage(msgs[0], stored[0])) return false;
  return !(msgs.length > stored.length && stored.every((m, i) => sameMessage(m, msgs[i])));
}

export function leaseLost(id: string) {
  return conflict(
    `Session '${id}' lost its lease during this turn (the store did not confirm it in time); the turn was not saved.`,
    "session_id",
    "session_lease_lost",
  );
}
