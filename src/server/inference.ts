/**
 * One generation request, end to end: prompt → tokens (session: only the new ones) → Sequence → scheduler →
 * text events → (session) commit → usage + kv stats. Used by the chat and completions routes.
 *
 * Context limits: the new prompt tokens must fit `maxPromptTokens`; the whole sequence (stored history + new
 * tokens + max_tokens) must fit the model's context length (positions keep counting across turns even when
 * pruning keeps the cache small). Without an explicit max_tokens the budget is clamped to what fits.
 */
import { Sequence } from "../engine/sequence.ts";
import type { SamplingParams } from "../engine/sampler.ts";
import { QueueFullError, type Scheduler, SchedulerClosedError } from "../engine/scheduler.ts";
import type { Backend } from "../engine/backend.ts";
import type { LoadedModel } from "../model/loader.ts";
import type { KVPolicy } from "../kv/policy.ts";
import type { SequenceKV } from "../kv/cache.ts";
import { type ChatMessage, type ChatRenderer, sameMessage } from "./chat_prompt.ts";
import { ApiError, badRequest, tooMany, unavailable } from "./errors.ts";
import type { SessionService, TurnState } from "./session_service.ts";
import { validatePolicySpec } from "./session_service.ts";
import type { Metrics } from "./metrics.ts";
import type { Logger } from "./logger.ts";

export interface InferenceLimits {
  maxPromptTokens: number;
  defaultMaxTokens: number;
  requestTimeoutMs: number;
  prefillChunk: number;
}

export interface GenerateParams {
  owner: string;
  endpoint: "chat" | "completions";
  sessionId?: string;
  input: { kind: "text"; text: string } | { kind: "chat"; messages: ChatMessage[] };
  maxTokens?: number;
  maxTokensParam: string;
  stop: string[];
  sampling: SamplingParams;
  policy?: unknown;
  signal: AbortSignal;
  log: Logger;
  startedAt: number;
  onText?: (text: string) => void;
}

export interface KVReport {
  policy: string;
  params: Record<string, unknown>;
  kept_per_layer: number[];
  kv_bytes: number;
  pruning_rounds: number;
  prune_ms: number;
  stored_bytes: number | null;
  prefilled_tokens: number;
  cached_tokens: number;
  rebuilt: string | null;
}

export interface GenerateResult {
  text: string;
  finishReason: "stop" | "length";
  usage: {
    prompt_tokens: number;
    completion_tokens: number;
    total_tokens: number;
    prompt_tokens_details: { cached_tokens: number };
  };
  kv: KVReport;
  sessionId?: string;
}

export interface Started {
  done: Promise<GenerateResult>;
}

export class Inference {
  constructor(
    readonly model: LoadedModel,
    readonly backend: Backend,
    readonly scheduler: Scheduler,
    readonly sessions: SessionService,
    readonly renderer: ChatRenderer,
    readonly limits: InferenceLimits,
    readonly metrics: Metrics,
  ) {}

  /**
   * Validate, tokenize, take the session lease and enqueue. Errors before generation starts (bad input,
   * 404/409 session, 429 queue full, 503 shutting down) are thrown from here, so a streaming route can still
   * answer with a proper HTTP status. `done` settles when the sequence has finished and (session) committed.
   */
  async start(p: GenerateParams): Promise<Started> {
    if (this.scheduler.closed) throw unavailable("The server is shutting down.", "shutting_down");
    const tok = this.model.tokenizer;
    let turn: TurnState | null = null;
    if (p.sessionId !== undefined) {
      turn = await this.sessions.begin(p.owner, p.sessionId, p.policy, p.log);
    }
    try {
      let policyInfo: { name: string; params: Record<string, unknown> };
      let policy: KVPolicy;
      let kv: SequenceKV | undefined;
      let history: number[] = [];
      let rebuilt: string | null = null;
      let conversation: ChatMessage[] | null = null;
      if (turn) {
        policyInfo = turn.meta.policy;
        policy = turn.policy;
        kv = turn.kv;
        history = turn.tokens;
        rebuilt = turn.rebuilt;
      } else {
        policyInfo = p.policy === undefined || p.policy === null
          ? this.sessions.defaultPolicy
          : validatePolicySpec(p.policy);
        policy = this.sessions.newPolicy(policyInfo);
      }

      // Prompt tokens to feed this turn.
      let newTokens: number[];
      const bos = () => history.length === 0;
      if (p.input.kind === "text") {
        newTokens = p.input.text.length > 0 ? tok.encode(p.input.text, { addBos: bos() }) : [];
      } else {
        const msgs = p.input.messages;
        const stored = turn?.messages ?? [];
        if (turn && stored.length > 0 && sameMessage(msgs[0], stored[0])) {
          // The client sent the whole conversation: reuse the stored cache if it is a prefix of it.
          const isPrefix = msgs.length > stored.length && stored.every((m, i) => sameMessage(m, msgs[i]));
          if (isPrefix) {
            newTokens = tok.encode(this.renderer.continuationText(stored, msgs.slice(stored.length)));
          } else {
            p.log.info(
              { session: turn.id },
              "conversation diverges from the stored history; rebuilding the cache",
            );
            rebuilt = "history_diverged";
            turn.kv.free();
            kv = this.backend.createKV();
            policy = this.sessions.newPolicy(policyInfo);
            history = [];
            newTokens = tok.encode(this.renderer.render(msgs), { addBos: true });
          }
          conversation = [...msgs];
        } else if (turn && stored.length > 0) {
          // Only the new messages were sent.
          newTokens = tok.encode(this.renderer.continuationText(stored, msgs));
          conversation = [...stored, ...msgs];
        } else {
          newTokens = tok.encode(this.renderer.render(msgs), { addBos: bos() });
          conversation = [...msgs];
        }
      }
      const promptParam = p.input.kind === "text" ? "prompt" : "messages";
      if (newTokens.length === 0 && history.length === 0) {
        throw badRequest("The prompt is empty.", promptParam, "empty_prompt");
      }
      if (newTokens.length > this.limits.maxPromptTokens) {
        throw badRequest(
          `The prompt has ${newTokens.length} tokens; the limit is ${this.limits.maxPromptTokens}.`,
          promptParam,
          "context_length_exceeded",
        );
      }
      const ctx = this.model.config.contextLength;
      const used = history.length + newTokens.length;
      const room = ctx - used;
      let maxTokens: number;
      if (p.maxTokens !== undefined) {
        if (p.maxTokens > room) {
          throw badRequest(
            `This model's context is ${ctx} tokens; the ${
              turn ? "session history and " : ""
            }prompt use ${used}, ` +
              `so ${p.maxTokensParam} can be at most ${Math.max(0, room)} (got ${p.maxTokens}).`,
            room <= 0 ? promptParam : p.maxTokensParam,
            "context_length_exceeded",
          );
        }
        maxTokens = p.maxTokens;
      } else {
        if (room < 1) {
          throw badRequest(
            `This model's context is ${ctx} tokens and the ${
              turn ? "session history and " : ""
            }prompt use ${used}.`,
            promptParam,
            "context_length_exceeded",
          );
        }
        maxTokens = Math.min(this.limits.defaultMaxTokens, room);
      }

      const cached = kv?.nextPos ?? 0;
      const seq = new Sequence(this.backend, tok, {
        maxTokens,
        stop: p.stop,
        sampling: p.sampling,
        policy,
        prefillChunk: this.limits.prefillChunk,
      }, kv ? { kv, tokens: history } : undefined);
      const storedSampler = turn?.sampler as { params?: { seed?: number } } | undefined;
      if (
        storedSampler && !rebuilt &&
        (p.sampling.seed === undefined || p.sampling.seed === storedSampler.params?.seed)
      ) {
        try {
          seq.sampler.setState(storedSampler as Record<string, unknown>);
        } catch { /* a fresh sampler is fine */ }
      }
      seq.feed(newTokens);
      seq.start();
      const promptTokens = seq.tokens.length;

      let text = "";
      let job;
      try {
        job = this.scheduler.submit(seq, {
          signal: p.signal,
          deadline: p.startedAt + this.limits.requestTimeoutMs,
          onToken: (ev) => {
            if (ev.text) {
              text += ev.text;
              p.onText?.(ev.text);
            }
          },
        });
      } catch (e) {
        seq.kv.free();
        if (e instanceof QueueFullError) throw tooMany(e.message, e.retryAfterSec, "queue_full");
        if (e instanceof SchedulerClosedError) {
          throw unavailable("The server is shutting down.", "shutting_down");
        }
        throw e;
      }
      const t = turn;
      turn = null; // `done` owns the lease from here
      const done = (async (): Promise<GenerateResult> => {
        try {
          const r = await job;
          if (r.firstTokenAt !== undefined) {
            this.metrics.ttftSeconds.observe({ endpoint: p.endpoint }, (r.firstTokenAt - p.startedAt) / 1000);
          }
          const st = seq.stats();
          this.metrics.generatedTokens.inc(st.generatedTokens);
          this.metrics.promptTokens.inc({ kind: "cached" }, cached);
          this.metrics.promptTokens.inc({ kind: "prefilled" }, promptTokens - cached);
          this.metrics.pruneRounds.inc(st.pruneRounds);
          if (r.timedOut) {
            throw new ApiError(
              504,
              "timeout_error",
              `The request did not finish within ${this.limits.requestTimeoutMs} ms.`,
              null,
              "timeout",
            );
          }
          if (r.finishReason === "cancelled") {
            throw new ApiError(499, "invalid_request_error", "The request was cancelled.", null, "cancelled");
          }
          let storedBytes: number | null = null;
          if (t) {
            storedBytes = (await this.sessions.commit(
              t,
              seq,
              conversation
                ? [...conversation, {
                  role: "assistant",
                  content: text,
                }]
                : null,
              p.log,
            )).storedBytes;
          }
          return {
            text,
            finishReason: r.finishReason,
            usage: {
              prompt_tokens: promptTokens,
              completion_tokens: st.generatedTokens,
              total_tokens: promptTokens + st.generatedTokens,
              prompt_tokens_details: { cached_tokens: cached },
            },
            kv: {
              policy: policyInfo.name,
              params: policyInfo.params,
              kept_per_layer: st.keptPerLayer,
              kv_bytes: st.kvBytes,
              pruning_rounds: st.pruneRounds,
              prune_ms: Math.round(st.pruneMs * 1000) / 1000,
              stored_bytes: storedBytes,
              prefilled_tokens: promptTokens - cached,
              cached_tokens: cached,
              rebuilt,
            },
            sessionId: t?.id,
          };
        } finally {
          seq.kv.free();
          if (t) await t.release();
        }
      })();
      done.catch(() => {}); // observed by the route; avoid unhandled rejections if it is not
      return { done };
    } finally {
      if (turn) {
        turn.kv.free();
        await turn.release();
      }
    }
  }
}
