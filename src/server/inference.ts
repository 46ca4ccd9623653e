/**
 * One generation request: open a turn (turn.ts) → plan its prompt → its sequence → the scheduler → commit.
 * Used by the chat and completions routes; knows nothing of HTTP (errors are errors.ts kinds).
 *
 * Context limits: the new prompt tokens must fit `maxPromptTokens`; the whole sequence (stored history + new
 * tokens + max_tokens) must fit the model's context length (positions keep counting across turns even when
 * pruning keeps the cache small). Without an explicit max_tokens the budget is clamped to what fits.
 */
import type { SamplingParams } from "../engine/sampler.ts";
import type { Sequence } from "../engine/sequence.ts";
import { type JobResult, QueueFullError, type Scheduler, SchedulerClosedError } from "../engine/scheduler.ts";
import type { Backend } from "../engine/backend.ts";
import type { TurnRecord } from "../session/bundle.ts";
import type { LoadedModel } from "../model/loader.ts";
import type { ChatRenderer } from "./chat_prompt.ts";
import { cancelled, invalid, rateLimited, shuttingDown, timedOut } from "./errors.ts";
import type { SessionService } from "./session_service.ts";
import { leaseLost, Turn, type TurnInput, type TurnPlan, validatePolicySpec } from "./turn.ts";
import type { Metrics } from "./metrics.ts";
import type { Logger } from "./logger.ts";
import { type ReasoningFormat, ReasoningSplitter } from "../model/reasoning.ts";
import { KvWatch } from "./kv_watch.ts";

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
  input: TurnInput;
  maxTokens?: number;
  maxTokensParam: string;
  stop: string[];
  sampling: SamplingParams;
  policy?: unknown;
  /** Chat: split `<think>…</think>` reasoning out of the reply ("deepseek") or not ("none"). */
  reasoningFormat?: ReasoningFormat;
  /** Produce `Generation.deltas` (the reply as it becomes final). */
  stream?: boolean;
  signal: AbortSignal;
  log: Logger;
  startedAt: number;
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

/** A piece of the reply: content, and reasoning when the request splits it out. */
export interface TextDelta {
  content: string;
  reasoning: string;
}

export interface GenerateResult {
  /** The reply's content (without its reasoning when that was split out). */
  text: string;
  /** The reasoning split out of the reply; null when there was none or the format is "none". */
  reasoning: string | null;
  finishReason: "stop" | "length";
  usage: {
    prompt_tokens: number;
    completion_tokens: number;
    total_tokens: number;
    prompt_tokens_details: { cached_tokens: number };
    /** Chat: generated tokens inside `<think>…</think>` (tags included), whatever the format. */
    completion_tokens_details?: { reasoning_tokens: number };
  };
  kv: KVReport;
  sessionId?: string;
}

export interface Generation {
  /** With `stream`: the reply as it becomes final; cancelling it cancels the generation. */
  deltas: ReadableStream<TextDelta> | null;
  /** Settles once the turn committed (or rejects with a ServiceError once it aborted). */
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
    /** Where a session's running turn reports its KV events (watchers: GET /v1/sessions/{id}/events). */
    readonly watch: KvWatch = new KvWatch(),
  ) {}

  /**
   * Open the turn, plan it and enqueue its sequence. Errors before generation starts (bad input, session
   * not found / busy, queue full, shutting down) are thrown from here, so a streaming route can still answer
   * with a proper status; `done` settles when the sequence has finished and the turn committed.
   */
  async start(p: GenerateParams): Promise<Generation> {
    if (this.scheduler.closed) throw shuttingDown();
    const turn = p.sessionId === undefined
      ? Turn.fresh(
        { model: this.model, backend: this.backend, metrics: this.metrics },
        p.policy === undefined || p.policy === null
          ? this.sessions.defaultPolicy
          : validatePolicySpec(p.policy),
      )
      : await this.sessions.openTurn(p.owner, p.sessionId, { policy: p.policy, input: p.input, log: p.log });
    try {
      const plan = turn.plan(p.input, this.model.tokenizer, this.renderer);
      const maxTokens = this.#maxTokens(plan, p, turn);
      const seq = turn.sequence(plan, {
        maxTokens,
        stop: p.stop,
        sampling: p.sampling,
        prefillChunk: this.limits.prefillChunk,
      });
      return this.#run(turn, plan, seq, p, maxTokens);
    } catch (e) {
      await turn.abort();
      throw e;
    }
  }

  /** The generation budget: max_tokens (or the default) checked against the prompt limit and the context. */
  #maxTokens(plan: TurnPlan, p: GenerateParams, turn: Turn): number {
    const promptParam = p.input.kind === "text" ? "prompt" : "messages";
    const n = plan.newTokens.length;
    if (n === 0 && turn.historyTokens === 0) {
      throw invalid("The prompt is empty.", promptParam, "empty_prompt");
    }
    if (n > this.limits.maxPromptTokens) {
      throw invalid(
        `The prompt has ${n} tokens; the limit is ${this.limits.maxPromptTokens}.`,
        promptParam,
        "context_length_exceeded",
      );
    }
    const ctx = this.model.config.contextLength;
    const used = plan.promptTokens;
    const room = ctx - used;
    const what = turn.sessionId !== undefined ? "session history and " : "";
    if (p.maxTokens !== undefined) {
      if (p.maxTokens > room) {
        throw invalid(
          `This model's context is ${ctx} tokens; the ${what}prompt use ${used}, ` +
            `so ${p.maxTokensParam} can be at most ${Math.max(0, room)} (got ${p.maxTokens}).`,
          room <= 0 ? promptParam : p.maxTokensParam,
          "context_length_exceeded",
        );
      }
      return p.maxTokens;
    }
    if (room < 1) {
      throw invalid(
        `This model's context is ${ctx} tokens and the ${what}prompt use ${used}.`,
        promptParam,
        "context_length_exceeded",
      );
    }
    return Math.min(this.limits.defaultMaxTokens, room);
  }

  /** Submit the sequence; the returned `done` commits the turn when it finishes (or aborts it). */
  #run(turn: Turn, plan: TurnPlan, seq: Sequence, p: GenerateParams, maxTokens: number): Generation {
    const cancel = new AbortController();
    let sink = null as ReadableStreamDefaultController<TextDelta> | null;
    const deltas = p.stream
      ? new ReadableStream<TextDelta>({
        start: (c) => void (sink = c),
        cancel: () => {
          sink = null;
          cancel.abort();
        },
      })
      : null;
    // The reply, split into content and reasoning as it becomes final (chat requests).
    const split = p.reasoningFormat === undefined
      ? null
      : new ReasoningSplitter({ format: p.reasoningFormat, startsInReasoning: plan.startsInReasoning });
    let raw = "", content = "", reasoning = "";
    const emit = (d: TextDelta) => {
      content += d.content;
      reasoning += d.reasoning;
      if (d.content || d.reasoning) sink?.enqueue(d);
    };
    let job: Promise<JobResult>;
    const trace = this.watch.trace(turn.sessionId, turn.number, seq);
    trace.start({
      history_tokens: turn.historyTokens,
      prompt_tokens: plan.promptTokens,
      cached_tokens: plan.cached,
      max_tokens: maxTokens,
      policy: { name: turn.policyChoice.name, ...turn.policyChoice.params },
      rebuilt: turn.rebuilt,
    });
    try {
      job = this.scheduler.submit(seq, {
        signal: AbortSignal.any([p.signal, cancel.signal, turn.leaseLost]),
        deadline: p.startedAt + this.limits.requestTimeoutMs,
        onToken: (ev) => {
          trace.step(ev.pruned);
          raw += ev.text;
          if (split) {
            if (ev.token !== null || ev.text) emit(split.push(ev.text, ev.token === null ? 0 : 1));
          } else if (ev.text) emit({ content: ev.text, reasoning: "" });
        },
      });
    } catch (e) {
      trace.fail(e);
      if (e instanceof QueueFullError) throw rateLimited(e.message, e.retryAfterSec, "queue_full");
      if (e instanceof SchedulerClosedError) throw shuttingDown();
      throw e;
    }
    const done = (async (): Promise<GenerateResult> => {
      try {
        const r = await job;
        if (split) emit(split.finish());
        trace.settle();
        const st = seq.stats();
        this.#observe(r, st.generatedTokens, trace.rounds, plan, p);
        if (r.timedOut) throw timedOut(this.limits.requestTimeoutMs);
        if (r.finishReason === "cancelled") {
          throw turn.leaseLost.aborted ? leaseLost(turn.sessionId!) : cancelled();
        }
        const hasReasoning = split !== null && split.format !== "none" && split.sawReasoning;
        const record: Omit<TurnRecord, "dropped_at_commit"> = {
          turn: turn.number,
          start: turn.historyTokens,
          end: seq.tokens.length,
          prompt_tokens: plan.promptTokens,
          cached_tokens: plan.cached,
          generated_tokens: st.generatedTokens,
          kept_per_layer: st.keptPerLayer,
          kv_bytes: st.kvBytes,
          stored_bytes: null,
          pruning_rounds: trace.rounds,
          prune_spans: trace.spans,
          at: Date.now(),
        };
        const storedBytes = await turn.commit({
          text: raw,
          content,
          reasoning: hasReasoning ? reasoning : null,
        }, record);
        const result: GenerateResult = {
          text: content,
          reasoning: hasReasoning ? reasoning : null,
          finishReason: r.finishReason,
          usage: {
            prompt_tokens: plan.promptTokens,
            completion_tokens: st.generatedTokens,
            total_tokens: plan.promptTokens + st.generatedTokens,
            prompt_tokens_details: { cached_tokens: plan.cached },
            ...(split ? { completion_tokens_details: { reasoning_tokens: split.reasoningTokens } } : {}),
          },
          kv: {
            policy: turn.policyChoice.name,
            params: turn.policyChoice.params,
            kept_per_layer: st.keptPerLayer,
            kv_bytes: st.kvBytes,
            pruning_rounds: st.pruneRounds,
            prune_ms: Math.round(st.pruneMs * 1000) / 1000,
            stored_bytes: storedBytes,
            prefilled_tokens: plan.promptTokens - plan.cached,
            cached_tokens: plan.cached,
            rebuilt: turn.rebuilt,
          },
          sessionId: turn.sessionId,
        };
        trace.end({ finish_reason: r.finishReason, usage: result.usage, kv: result.kv, record: turn.record });
        return result;
      } catch (e) {
        trace.fail(e);
        throw e;
      } finally {
        await turn.abort(); // a no-op after a commit
        sink?.close();
        sink = null;
      }
    })();
    done.catch(() => {}); // observed by the route; avoid unhandled rejections if it is not
    return { deltas, done };
  }

  #observe(r: JobResult, generated: number, pruneRounds: number, plan: TurnPlan, p: GenerateParams): void {
    if (r.firstTokenAt !== undefined) {
      this.metrics.ttftSeconds.observe({ endpoint: p.endpoint }, (r.firstTokenAt - p.startedAt) / 1000);
    }
    this.metrics.generatedTokens.inc(generated);
    this.metrics.promptTokens.inc({ kind: "cached" }, plan.cached);
    this.metrics.promptTokens.inc({ kind: "prefilled" }, plan.promptTokens - plan.cached);
    this.metrics.pruneRounds.inc(pruneRounds);
  }
}
