/**
 * One decoding sequence: its KV cache, KV policy, sampler, token history and stop rules, independent of
 * how it is batched. The CLI drives one Sequence; the scheduler drives many in one batched forward call.
 *
 * Invariant: `tokens` is the whole history; the first `kv.nextPos` of them are in the KV cache, the rest
 * are pending and go into the next forward call(s). A finished sequence's last sampled token stays pending,
 * so a resumed session feeds it together with the next turn's tokens.
 *
 * Pruning: after each step the policy decides what each layer keeps; that plan rides in the next step's input
 * (`StepInput.compact`) and the backend applies it there. A plan still pending when the sequence finishes is
 * applied by `settle()`, so a finished sequence's cache, stats and policy state describe the same rows.
 */
import type { Backend, StepInput, StepOutput } from "./backend.ts";
import type { PrunePlan, SequenceKV } from "../kv/cache.ts";
import type { KVPolicy, Phase, PruneEvent } from "../kv/contract.ts";
import type { StreamDecoder, Tokenizer } from "../model/tokenizer/types.ts";
import { Sampler, type SamplingParams } from "./sampler.ts";

export interface SequenceOptions {
  maxTokens: number;
  stop: string[];
  sampling: SamplingParams;
  policy: KVPolicy;
  /** Stop when the model emits its EOS token (default true). */
  stopAtEos?: boolean;
  /** Most prompt tokens per forward call (default 256). */
  prefillChunk?: number;
}

export type FinishReason = "stop" | "length" | "cancelled";

export interface SequenceEvent {
  /** The token sampled by this step, or null for a prefill chunk that sampled nothing. */
  token: number | null;
  /** Text that became final with this step (stop strings are held back until ruled out). */
  text: string;
  finished: boolean;
  /**
   * The layers the KV policy pruned after this step (its plan's counts; the cache follows at the next step or
   * `settle()`), absent when it pruned none: what KV watchers see.
   */
  pruned?: PruneEvent[];
}

export interface SequenceStats {
  promptTokens: number;
  prefilledTokens: number;
  generatedTokens: number;
  keptPerLayer: number[];
  kvBytes: number;
  pruneRounds: number;
  pruneMs: number;
}

export class Sequence {
  readonly kv: SequenceKV;
  readonly tokens: number[];
  readonly policy: KVPolicy;
  readonly sampler: Sampler;
  finishReason: FinishReason | null = null;
  private readonly opts: Required<Omit<SequenceOptions, "policy" | "sampling">>;
  private readonly tokenizer: Tokenizer;
  private decoder: StreamDecoder;
  private decoderPrimed = false;
  private generated = 0;
  private prefilled = 0;
  private promptTokens = 0;
  private sampling = false;
  private lastPhase: Phase = "prefill";
  private lastN = 0;
  /** Decoded text not yet emitted because it may be the start of a stop string. */
  private held = "";
  /** The policy's plan from the last step, not yet applied to the cache. */
  #plan: PrunePlan | null = null;

  constructor(
    backend: Backend,
    tokenizer: Tokenizer,
    opts: SequenceOptions,
    resume?: { kv: SequenceKV; tokens: number[] },
  ) {
    this.tokenizer = tokenizer;
    this.policy = opts.policy;
    this.sampler = new Sampler(opts.sampling);
    this.opts = {
      maxTokens: opts.maxTokens,
      stop: opts.stop.filter((s) => s.length > 0),
      stopAtEos: opts.stopAtEos ?? true,
      prefillChunk: opts.prefillChunk ?? 256,
    };
    if (!(this.opts.prefillChunk >= 1)) throw new RangeError("prefillChunk must be ≥ 1");
    this.kv = resume?.kv ?? backend.createKV();
    this.tokens = resume ? [...resume.tokens] : [];
    if (this.kv.nextPos > this.tokens.length) {
      throw new Error(`resume: cache holds ${this.kv.nextPos} tokens but history has ${this.tokens.length}`);
    }
    this.decoder = tokenizer.streamDecoder();
  }

  /** Tokens of the history not yet in the KV cache. */
  get pending(): number {
    return this.tokens.length - this.kv.nextPos;
  }

  get finished(): boolean {
    return this.finishReason !== null;
  }

  get generatedTokens(): number {
    return this.generated;
  }

  /** Append prompt tokens; generation starts once they are all in the cache. */
  feed(tokens: number[]): void {
    if (this.sampling) throw new Error("feed: the sequence is already generating");
    this.tokens.push(...tokens);
    this.promptTokens += tokens.length;
  }

  /** Start generating after the fed prompt. */
  start(): void {
    if (this.pending === 0) throw new Error("start: nothing to condition on (empty history)");
    this.sampling = true;
    if (this.opts.maxTokens <= 0) this.finishReason = "length";
  }

  nextInput(): StepInput {
    if (!this.sampling) throw new Error("nextInput: call start() first");
    if (this.finished) throw new Error("nextInput: the sequence is finished");
    const n = Math.min(this.pending, this.opts.prefillChunk);
    const from = this.kv.nextPos;
    const chunk = this.tokens.slice(from, from + n);
    const isLastChunk = n === this.pending;
    this.lastPhase = this.generated > 0 && n === 1 ? "decode" : "prefill";
    this.lastN = n;
    const input: StepInput = {
      kv: this.kv,
      tokens: chunk,
      logits: isLastChunk ? "last" : "none",
      scores: this.policy.scoreRequest(this.lastPhase, n),
    };
    if (this.#plan) input.compact = this.#plan;
    return input;
  }

  /** Take the outputs of the step made from `nextInput()` (which applied the pending plan). */
  accept(out: StepOutput): SequenceEvent {
    const { plan, pruneEvents } = this.policy.afterStep(this.kv, out.scores, this.lastN, this.lastPhase);
    this.#plan = plan;
    if (this.lastPhase === "prefill") this.prefilled += this.lastN;
    const ev: SequenceEvent = this.pending > 0
      ? { token: null, text: "", finished: false }
      : this.#sample(out);
    if (ev.finished) this.settle();
    if (pruneEvents.length > 0) ev.pruned = pruneEvents;
    return ev;
  }

  /**
   * Apply the pending prune plan to the cache now (`SequenceKV.compact`): the one place outside a step that
   * does. A sequence that finishes in a step settles itself; call it between steps, never while a step of
   * this sequence is in flight.
   */
  settle(): void {
    if (!this.#plan) return;
    this.kv.compact(this.#plan);
    this.#plan = null;
  }

  #sample(out: StepOutput): SequenceEvent {
    if (!this.decoderPrimed) {
      // Decode in context: the token before the first generated one decides e.g. the leading-space rule.
      if (this.tokens.length > 0) this.decoder.push(this.tokens[this.tokens.length - 1]);
      this.decoderPrimed = true;
    }
    const token = this.sampler.sample(out.logits, this.tokens);
    this.tokens.push(token);
    this.generated++;
    const eos = this.opts.stopAtEos && this.tokenizer.isEog(token);
    let text = eos ? "" : this.decoder.push(token);
    if (eos) {
      text = this.decoder.flush();
      this.finishReason = "stop";
    } else if (this.generated >= this.opts.maxTokens) {
      text += this.decoder.flush();
      this.finishReason = "length";
    }
    return this.emit(text);
  }

  /**
   * Back to the first `pos` tokens of the history: the rest leaves the history and (policy.rewind) the cache.
   * For a finished sequence about to be stored (a session keeps only what its next prompt shares); the
   * pending prune plan is settled first, so the rewind starts from the rows the policy kept.
   */
  rewind(pos: number): void {
    if (!Number.isInteger(pos) || pos < 0 || pos > this.tokens.length) {
      throw new RangeError(`rewind: ${pos} is outside [0, ${this.tokens.length}]`);
    }
    if (this.sampling && !this.finished) throw new Error("rewind: the sequence is still generating");
    this.settle();
    if (pos < this.kv.nextPos) this.policy.rewind(this.kv, pos);
    this.tokens.length = pos;
  }

  cancel(): void {
    if (!this.finished) this.finishReason = "cancelled";
  }

  /** Apply stop strings to newly decoded text: emit what can no longer start a stop string. */
  private emit(text: string): SequenceEvent {
    const stops = this.opts.stop;
    let buf = this.held + text;
    if (stops.length === 0) {
      this.held = "";
      return { token: this.tokens[this.tokens.length - 1], text: buf, finished: this.finished };
    }
    let cut = -1;
    for (const s of stops) {
      const i = buf.indexOf(s);
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      buf = buf.slice(0, cut);
      this.held = "";
      this.finishReason = "stop";
      return { token: this.tokens[this.tokens.length - 1], text: buf, finished: true };
    }
    if (this.finished) {
      this.held = "";
      return { token: this.tokens[this.tokens.length - 1], text: buf, finished: true };
    }
    // hold back the longest suffix of buf that is a proper prefix of some stop string
    let hold = 0;
    for (const s of stops) {
      for (let k = Math.min(s.length - 1, buf.length); k > hold; k--) {
        if (buf.endsWith(s.slice(0, k))) {
          hold = k;
          break;
        }
      }
    }
    this.held = buf.slice(buf.length - hold);
    return {
      token: this.tokens[this.tokens.length - 1],
      text: buf.slice(0, buf.length - hold),
      finished: false,
    };
  }

  /**
   * Rows per layer and their K/V bytes as the policy decided: a pending plan counted, not applied (it still
   * rides in the next step). What a watcher reads between the steps of a running sequence; `stats()` settles
   * instead, for a finished one.
   */
  kept(): { keptPerLayer: number[]; kvBytes: number } {
    const keptPerLayer: number[] = [];
    let rows = 0, kept = 0;
    for (let l = 0; l < this.kv.shape.nLayers; l++) {
      const n = this.kv.length(l), k = this.#plan?.[l]?.length ?? n;
      rows += n;
      kept += k;
      keptPerLayer.push(k);
    }
    // every cache holds the same bytes per row (bytes() is rows × a constant)
    return { keptPerLayer, kvBytes: rows === 0 ? 0 : Math.round((this.kv.bytes() / rows) * kept) };
  }

  /** Cache and pruning figures (settles a pending plan first, so they describe the rows the policy kept). */
  stats(): SequenceStats {
    this.settle();
    const keptPerLayer: number[] = [];
    for (let l = 0; l < this.kv.shape.nLayers; l++) keptPerLayer.push(this.kv.length(l));
    return {
      promptTokens: this.promptTokens,
      prefilledTokens: this.prefilled,
      generatedTokens: this.generated,
      keptPerLayer,
      kvBytes: this.kv.bytes(),
      pruneRounds: this.policy.stats.pruneRounds,
      pruneMs: this.policy.stats.pruneMs,
    };
  }
}

/** Run one sequence to completion on its own, yielding text as it becomes final. */
export async function* runSequence(backend: Backend, seq: Sequence): AsyncGenerator<SequenceEvent> {
  if (!seq.finished) {
    while (!seq.finished) {
      const [out] = await backend.forward([seq.nextInput()]);
      const ev = seq.accept(out);
      if (ev.token !== null || ev.text) yield ev;
    }
  }
}
