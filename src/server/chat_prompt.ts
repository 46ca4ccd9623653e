/**
 * Chat messages → prompt text → prompt tokens.
 *
 * - A model that ships a chat template (GGUF `tokenizer.chat_template`, HF `chat_template`) is rendered as
 *   transformers renders it (src/model/chat_template.ts) with the model's BOS/EOS strings, the request's `tools`
 *   and `chat_template_kwargs` (over the server's `--chat-template-kwargs`), `add_generation_prompt` (default
 *   true) or `continue_final_message`. The render is tokenized as llama.cpp tokenizes a chat prompt: special
 *   tokens parsed (`<|im_start|>` is one token), and a BOS the template wrote itself dropped when the tokenizer
 *   adds one, so the prompt has exactly one.
 * - The story models this service is tested with have none. Their DEFAULT TEMPLATE is plain text: the message
 *   contents, in order, joined with one newline ("\n"), roles dropped, no trailing newline, so a single user
 *   message "Once upon a time" is continued as a story. BOS is added by the tokenizer (not as text); special
 *   tokens are not parsed.
 *
 * Sessions: a model template's turn prefills what its full render adds to the longest common prefix with the
 * stored history (turn.ts), so a template that rewrites earlier turns (dropping their reasoning) still gets
 * exactly its own render. The default template has no separator between a prompt and its reply, so a session
 * turn appends `continuationText` ("\n" + the new contents joined with "\n") to the stored tokens instead.
 */
import { ChatTemplate, ChatTemplateError } from "../model/chat_template.ts";
import { promptEndsInReasoning, THINK_CLOSE, THINK_OPEN } from "../model/reasoning.ts";
import type { Tokenizer } from "../model/tokenizer/types.ts";
import { invalid } from "./errors.ts";

export interface ChatMessage {
  role: string;
  /** null only for an assistant message that carries only tool calls. */
  content: string | null;
  name?: string;
  /** An assistant turn's reasoning, apart from its content (Qwen3's template renders it). */
  reasoning_content?: string;
  tool_calls?: unknown[];
  tool_call_id?: string;
}

/** How a request asks its conversation to be rendered. */
export interface ChatOptions {
  /** Append the template's assistant prefix (default true). */
  addGenerationPrompt?: boolean;
  /** The final assistant message is an unfinished prefix the reply continues. */
  continueFinalMessage?: boolean;
  /** OpenAI `tools`, passed to the template. */
  tools?: unknown[] | null;
  /** The request's `chat_template_kwargs` (e.g. `{"enable_thinking": false}`). */
  kwargs?: Record<string, unknown>;
}

export interface ChatPrompt {
  text: string;
  tokens: number[];
  /** The prompt leaves the reply inside an opened `<think>` block (R1's and QwQ's generation prompts do). */
  startsInReasoning: boolean;
}

export class ChatRenderer {
  readonly #template?: ChatTemplate;

  constructor(
    readonly source: string | undefined,
    readonly tokenizer: Tokenizer,
    readonly special: { bos: string; eos: string; kwargs?: Record<string, unknown> } = { bos: "", eos: "" },
  ) {
    if (source) this.#template = new ChatTemplate(source, { bosToken: special.bos, eosToken: special.eos });
  }

  /** The renderer of a model: its template, BOS/EOS text and tokenizer. */
  static forModel(
    model: { chatTemplate?: string; tokenizer: Tokenizer },
    kwargs?: Record<string, unknown>,
  ): ChatRenderer {
    const tok = model.tokenizer;
    return new ChatRenderer(model.chatTemplate, tok, {
      bos: tok.bosId >= 0 ? tok.piece(tok.bosId) : "",
      eos: tok.eosId >= 0 ? tok.piece(tok.eosId) : "",
      kwargs,
    });
  }

  get usesModelTemplate(): boolean {
    return this.#template !== undefined;
  }

  /** The prompt text for `messages`; a template error is an `invalid` request error naming `messages`. */
  render(messages: ChatMessage[], opts: ChatOptions = {}): string {
    if (!this.#template) return messages.map((m) => m.content ?? "").join("\n");
    const cont = opts.continueFinalMessage === true;
    try {
      return this.#template.render(messages, {
        addGenerationPrompt: cont ? false : opts.addGenerationPrompt ?? true,
        continueFinalMessage: cont,
        tools: opts.tools ?? null,
        vars: { ...this.special.kwargs, ...opts.kwargs },
      });
    } catch (e) {
      if (!(e instanceof ChatTemplateError)) throw e;
      const what = e.kind === "raise" ? "The chat template rejected the conversation" : "Chat template";
      throw invalid(`${what}: ${e.message}`, "messages", "chat_template_error");
    }
  }

  /** `render` and its tokens, and whether the reply starts inside a reasoning block. */
  prompt(messages: ChatMessage[], opts: ChatOptions = {}): ChatPrompt {
    const text = this.render(messages, opts);
    const final = messages.at(-1)?.content ?? "";
    const startsInReasoning = !this.#template
      ? false
      : opts.continueFinalMessage
      ? final.lastIndexOf(THINK_OPEN) > final.lastIndexOf(THINK_CLOSE)
      : promptEndsInReasoning(text);
    return { text, tokens: this.tokens(text), startsInReasoning };
  }

  /** Tokens of a rendered prompt (see the module comment for the two kinds of template). */
  tokens(text: string): number[] {
    const tok = this.tokenizer, bos = this.special.bos;
    if (!this.#template) return text.length > 0 ? tok.encode(text, { addBos: true }) : [];
    if (tok.addBos && bos && text.startsWith(bos)) text = text.slice(bos.length);
    return tok.encode(text, { addBos: true, parseSpecial: true });
  }

  /**
   * Tokens that every next turn's prompt starts with after `conversation` (which ends with the assistant's
   * reply), for a model template: the common part of its renders followed by two different user messages,
   * without its last token (which may merge with the text after it). Null when the template cannot render the
   * probe (the next turn then finds the common prefix itself).
   */
  nextTurnPrefix(conversation: ChatMessage[], opts: ChatOptions = {}): number[] | null {
    if (!this.#template) return null;
    const probe = (s: string) => {
      const o = { ...opts, addGenerationPrompt: true, continueFinalMessage: false };
      return this.render([...conversation, { role: "user", content: s }], o);
    };
    let a: string, b: string;
    try {
      a = probe("a");
      b = probe("b");
    } catch {
      return null;
    }
    let n = 0;
    while (n < a.length && a[n] === b[n]) n++;
    return this.tokens(a.slice(0, n)).slice(0, -1);
  }

  /**
   * Default template: text to feed after a stored conversation `prev` (which ends with the assistant reply)
   * so the context becomes `prev ++ added` ready for generation.
   */
  continuationText(prev: ChatMessage[], added: ChatMessage[]): string {
    if (prev.length === 0) return this.render(added);
    return "\n" + added.map((m) => m.content ?? "").join("\n");
  }
}

/** Whether two messages are the same turn (a resent history is matched against the stored one so). */
export function sameMessage(a: ChatMessage, b: ChatMessage): boolean {
  return a.role === b.role && a.content === b.content && (a.name ?? null) === (b.name ?? null) &&
    (a.tool_call_id ?? null) === (b.tool_call_id ?? null) &&
    JSON.stringify(a.tool_calls ?? null) === JSON.stringify(b.tool_calls ?? null);
}
