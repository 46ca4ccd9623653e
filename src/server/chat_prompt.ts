/**
 * Chat messages → prompt text.
 *
 * - A model that ships a chat template (GGUF `tokenizer.chat_template`, HF `chat_template`) is rendered as
 *   transformers renders it (src/model/chat_template.ts), with `add_generation_prompt: true` and the model's
 *   BOS/EOS strings.
 * - The story models this service is tested with have none. Their DEFAULT TEMPLATE is plain text: the message
 *   contents, in order, joined with one newline ("\n"), roles dropped, no trailing newline, so a single user
 *   message "Once upon a time" is continued as a story. BOS is added by the tokenizer (not as text).
 *
 * Session turns need the text of only the *new* messages (the stored cache already holds the rest):
 * `continuationText(prev, all)` renders both conversations and returns the suffix; for the default template
 * that is "\n" + the new contents joined with "\n".
 */
import { ChatTemplate } from "../model/chat_template.ts";

export interface ChatMessage {
  role: string;
  content: string;
  name?: string;
}

export class ChatRenderer {
  readonly #template?: ChatTemplate;

  constructor(
    readonly source: string | undefined,
    readonly special: { bos: string; eos: string } = { bos: "", eos: "" },
  ) {
    if (source) this.#template = new ChatTemplate(source, { bosToken: special.bos, eosToken: special.eos });
  }

  get usesModelTemplate(): boolean {
    return this.#template !== undefined;
  }

  /** The prompt for `messages`; `generation` appends the template's assistant prefix. */
  render(messages: ChatMessage[], generation = true): string {
    if (!this.#template) return messages.map((m) => m.content).join("\n");
    return this.#template.render(messages, { addGenerationPrompt: generation });
  }

  /**
   * Text to feed after a stored conversation `prev` (which ends with the assistant reply) so the context
   * becomes `prev ++ added` ready for generation.
   */
  continuationText(prev: ChatMessage[], added: ChatMessage[]): string {
    if (prev.length === 0) return this.render(added, true);
    if (!this.#template) return "\n" + added.map((m) => m.content).join("\n");
    const before = this.render(prev, false);
    const after = this.render([...prev, ...added], true);
    if (after.startsWith(before)) return after.slice(before.length);
    // A template that rewrites earlier turns: fall back to rendering the new messages alone.
    return this.render(added, true);
  }
}

export function sameMessage(a: ChatMessage, b: ChatMessage): boolean {
  return a.role === b.role && a.content === b.content && (a.name ?? null) === (b.name ?? null);
}
