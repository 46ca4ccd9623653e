/**
 * Reasoning output of `<think>…</think>` models (DeepSeek-R1 distills, Qwen3, QwQ): split generated text into
 * `reasoning` (OpenAI-compatible `reasoning_content`) and `content`, chunk by chunk while streaming.
 *
 * The generated text is read as [whitespace] [`<think>`] reasoning `</think>` content:
 * - an opening `<think>` at the very start (after whitespace) opens the reasoning; any other start is plain
 *   content and the text is never split;
 * - `startsInReasoning` (the prompt already ended with an opened `<think>`, as R1's template and QwQ's do:
 *   `promptEndsInReasoning`) makes the output reasoning from its first character; a repeated `<think>` there
 *   is dropped (llama.cpp's parser treats the opening tag as optional for the same reason);
 * - the first `</think>` ends the reasoning; everything after it is content, later tags included.
 * With format "deepseek" the reasoning is trimmed of surrounding whitespace and the content after `</think>` of
 * leading whitespace (llama.cpp and the DeepSeek API return them so); format "none" passes the text through
 * untouched, tags and all. Tags split across chunks are held back until they are told apart from text, so the
 * deltas joined are the same however the text was chunked.
 *
 * Reasoning tokens: each chunk carries how many tokens produced it; a chunk counts as reasoning when it starts
 * inside the reasoning section (the tags included) or contains the opening tag, else as content.
 */
import { ChatTemplate, ChatTemplateError, type ChatTemplateOptions } from "./chat_template.ts";

export type ReasoningFormat = "deepseek" | "none";
export const REASONING_FORMATS: readonly ReasoningFormat[] = ["deepseek", "none"];

export const THINK_OPEN = "<think>";
export const THINK_CLOSE = "</think>";

export interface ReasoningDelta {
  reasoning: string;
  content: string;
}

export interface ReasoningOptions {
  /** "deepseek" (default): split out the reasoning; "none": everything is content, tags kept. */
  format?: ReasoningFormat;
  /** The prompt ended inside an opened reasoning block (see `promptEndsInReasoning`). */
  startsInReasoning?: boolean;
  open?: string;
  close?: string;
}

type Section = "start" | "reasoning" | "content";

/** Parse a format name (a server flag or a request field); throws on anything else. */
export function parseReasoningFormat(s: string): ReasoningFormat {
  if ((REASONING_FORMATS as readonly string[]).includes(s)) return s as ReasoningFormat;
  throw new RangeError(`reasoning format must be one of ${REASONING_FORMATS.join(", ")}, got "${s}"`);
}

/** Whether a rendered prompt ends with an opened reasoning block (`…<｜Assistant｜><think>\n`). */
export function promptEndsInReasoning(prompt: string, open = THINK_OPEN): boolean {
  return prompt.trimEnd().endsWith(open);
}

/** The length of the longest suffix of `s` that is a proper prefix of `tag` (a tag possibly cut by the chunk). */
function partialTagSuffix(s: string, tag: string): number {
  for (let k = Math.min(s.length, tag.length - 1); k > 0; k--) {
    if (tag.startsWith(s.slice(s.length - k))) return k;
  }
  return 0;
}

export class ReasoningSplitter {
  readonly format: ReasoningFormat;
  readonly #forced: boolean;
  readonly #open: string;
  readonly #close: string;
  #section: Section = "start";
  /** Text not yet told apart: a possible (partial) tag, or whitespace before the opening tag. */
  #held = "";
  #sawReasoning = false;
  /** Reasoning text emitted so far is non-empty (leading whitespace is dropped until then). */
  #reasoningBegun = false;
  /** Trailing whitespace of the reasoning, emitted only if more reasoning follows. */
  #reasoningSpace = "";
  /** Content after `</think>` whose leading whitespace is still being dropped. */
  #stripContent = false;
  #pendingTokens = 0;
  #reasoningTokens = 0;
  #contentTokens = 0;

  constructor(opts: ReasoningOptions = {}) {
    this.format = opts.format ?? "deepseek";
    this.#forced = opts.startsInReasoning ?? false;
    this.#open = opts.open ?? THINK_OPEN;
    this.#close = opts.close ?? THINK_CLOSE;
    if (!this.#open || !this.#close) throw new RangeError("reasoning tags must be non-empty");
  }

  /** The output had (or has begun) a reasoning section. */
  get sawReasoning(): boolean {
    return this.#sawReasoning;
  }

  /** Generation is inside the reasoning section now. */
  get inReasoning(): boolean {
    return this.#section === "reasoning" || (this.#section === "start" && this.#forced);
  }

  get reasoningTokens(): number {
    return this.#reasoningTokens;
  }

  get contentTokens(): number {
    return this.#contentTokens;
  }

  /** Feed the next generated text, produced by `tokens` tokens; returns what it adds to each part. */
  push(text: string, tokens = 1): ReasoningDelta {
    const before = this.#section;
    const out: ReasoningDelta = { reasoning: "", content: "" };
    const buf = this.#held + text;
    this.#held = "";
    this.#scan(buf, out);
    this.#count(before, tokens);
    return this.format === "none" ? { reasoning: "", content: text } : out;
  }

  /** The end of generation: releases held-back text (an unfinished tag is text after all). */
  finish(): ReasoningDelta {
    const out: ReasoningDelta = { reasoning: "", content: "" };
    const held = this.#held;
    this.#held = "";
    if (this.#section === "start" && held) {
      this.#section = this.#forced ? "reasoning" : "content";
      this.#sawReasoning = this.#forced;
      if (this.#forced) this.#emitReasoning(held, out);
      else out.content += held;
    } else if (this.#section === "reasoning") this.#emitReasoning(held, out);
    this.#settle(this.#forced ? "reasoning" : "content");
    // With format "none" push() already passed every character through.
    return this.format === "none" ? { reasoning: "", content: "" } : out;
  }

  #scan(buf: string, out: ReasoningDelta): void {
    while (buf) {
      if (this.#section === "start") {
        const t = buf.trimStart();
        if (t === "" || (this.#open.startsWith(t) && t !== this.#open)) {
          this.#held = buf; // whitespace, or an opening tag cut by the chunk
          return;
        }
        this.#section = this.#forced || t.startsWith(this.#open) ? "reasoning" : "content";
        this.#sawReasoning = this.#section === "reasoning";
        if (t.startsWith(this.#open)) buf = t.slice(this.#open.length);
        continue;
      }
      if (this.#section === "reasoning") {
        const end = buf.indexOf(this.#close);
        if (end >= 0) {
          this.#emitReasoning(buf.slice(0, end), out);
          this.#reasoningSpace = "";
          this.#section = "content";
          this.#stripContent = true;
          buf = buf.slice(end + this.#close.length);
          continue;
        }
        const k = partialTagSuffix(buf, this.#close);
        this.#emitReasoning(buf.slice(0, buf.length - k), out);
        this.#held = buf.slice(buf.length - k);
        return;
      }
      if (this.#stripContent) {
        buf = buf.trimStart();
        if (!buf) return;
        this.#stripContent = false;
      }
      out.content += buf;
      return;
    }
  }

  #emitReasoning(s: string, out: ReasoningDelta): void {
    if (!this.#reasoningBegun) {
      s = s.trimStart();
      if (!s) return;
      this.#reasoningBegun = true;
    }
    const text = this.#reasoningSpace + s;
    const body = text.trimEnd();
    out.reasoning += body;
    this.#reasoningSpace = text.slice(body.length);
  }

  #count(before: Section, tokens: number): void {
    if (before === "reasoning") this.#reasoningTokens += tokens;
    else if (before === "content") this.#contentTokens += tokens;
    else {
      this.#pendingTokens += tokens;
      if (this.#section !== "start") this.#settle(this.#sawReasoning ? "reasoning" : "content");
    }
  }

  /** Tokens of chunks read before the start was told apart go to the part the start turned out to be. */
  #settle(to: "reasoning" | "content"): void {
    if (to === "reasoning") this.#reasoningTokens += this.#pendingTokens;
    else this.#contentTokens += this.#pendingTokens;
    this.#pendingTokens = 0;
  }
}

/** A whole (non-streamed) output split at once; `reasoning` is null when there was no reasoning section. */
export function splitReasoning(
  text: string,
  opts: ReasoningOptions = {},
): { reasoning: string | null; content: string } {
  const s = new ReasoningSplitter(opts);
  const a = s.push(text), b = s.finish();
  return {
    reasoning: s.sawReasoning && s.format !== "none" ? a.reasoning + b.reasoning : null,
    content: a.content + b.content,
  };
}

const PROBE_REASONING = "lethe-probe-reasoning";
const PROBE_ANSWER = "lethe-probe-answer";

/**
 * Whether `template` leaves earlier assistant turns' reasoning out of the prompt (R1's template keeps only the
 * text after `</think>`; Qwen3's and QwQ's drop it before the last user turn). Then a stored conversation's
 * prompt is not a prefix of the next turn's render. Probed by rendering user / assistant-with-reasoning / user;
 * false when the template cannot render that conversation (it raises) or drops the whole turn.
 */
export function templateDropsReasoning(
  template: ChatTemplate,
  options: Omit<ChatTemplateOptions, "continueFinalMessage"> = {},
  tags: { open?: string; close?: string } = {},
): boolean {
  const messages = [
    { role: "user", content: "Hello?" },
    {
      role: "assistant",
      content: `${tags.open ?? THINK_OPEN}\n${PROBE_REASONING}\n${
        tags.close ?? THINK_CLOSE
      }\n\n${PROBE_ANSWER}`,
    },
    { role: "user", content: "And then?" },
  ];
  let prompt: string;
  try {
    prompt = template.render(messages, { addGenerationPrompt: true, ...options });
  } catch (e) {
    if (e instanceof ChatTemplateError) return false;
    throw e;
  }
  return prompt.includes(PROBE_ANSWER) && !prompt.includes(PROBE_REASONING);
}
