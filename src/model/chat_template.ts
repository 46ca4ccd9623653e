/**
 * A model's chat template (GGUF `tokenizer.chat_template`, HF `chat_template`) rendered as Hugging Face
 * transformers' `apply_chat_template` renders it: jinja2 with `trim_blocks`, `lstrip_blocks`, loop controls and
 * the `{% generation %}` tag, transformers' `tojson`, `raise_exception` and `strftime_now`, the variables
 * `messages`, `tools`, `documents`, `add_generation_prompt`, `bos_token`, `eos_token` and any extra ones
 * (`chat_template_kwargs` such as `enable_thinking`), and `continue_final_message` cut after the final message's
 * text. `@huggingface/jinja` parses and runs the template; `jinja_python.ts` gives it Python semantics.
 *
 * Every failure is a `ChatTemplateError` whose `kind` says whose fault it is: the template's own
 * `raise_exception(message)` ("raise", message carried as is), a template that does not parse ("syntax"), one
 * that fails while rendering ("render"), or arguments that cannot be rendered ("input").
 */
import { Environment, Template } from "@huggingface/jinja";
import { pyStrip, pythonGlobals, PythonInterpreter, stepBudget, TemplateRaise } from "./jinja_python.ts";

export type ChatTemplateErrorKind = "raise" | "syntax" | "render" | "input";

export class ChatTemplateError extends Error {
  override name = "ChatTemplateError";
  constructor(readonly kind: ChatTemplateErrorKind, message: string) {
    super(message);
  }
}

/** A chat message as the template sees it (OpenAI shape: role, content string or parts, tool_calls, …). */
export type TemplateMessage = { role: string; content?: unknown };

export interface ChatTemplateOptions {
  /** Append the template's assistant prefix (transformers' `add_generation_prompt`; default false). */
  addGenerationPrompt?: boolean;
  /** The final (assistant) message is an unfinished prefix: cut the render right after its text. */
  continueFinalMessage?: boolean;
  /** Tool (function) schemas, as the OpenAI `tools` field; absent means `None`. */
  tools?: readonly unknown[] | null;
  /** Retrieval documents (`documents`); absent means `None`. */
  documents?: readonly unknown[] | null;
  /** Extra template variables (e.g. a request's `chat_template_kwargs`); they override `bos_token`/`eos_token`. */
  vars?: Record<string, unknown>;
  bosToken?: string;
  eosToken?: string;
  /** The clock of `strftime_now` (default: now, local time like Python's `datetime.now()`). */
  now?: () => Date;
}

/** Variables the renderer sets itself; `vars` may not set them (Python: "got multiple values"). */
const RESERVED = new Set(["messages", "tools", "documents", "add_generation_prompt"]);

export class ChatTemplate {
  readonly #template: Template;

  /** Parses `source` (a template that does not parse is a "syntax" error); `defaults` apply to every render. */
  constructor(readonly source: string, readonly defaults: Omit<ChatTemplateOptions, "vars"> = {}) {
    try {
      // jinja2 reads "\r\n" and "\r" as "\n" everywhere in the source, string literals included.
      this.#template = new Template(source.replace(/\r\n?/g, "\n"));
    } catch (e) {
      throw new ChatTemplateError("syntax", `chat template does not parse: ${(e as Error).message}`);
    }
  }

  /** The prompt text for `messages`. */
  render<M extends TemplateMessage>(messages: readonly M[], options: ChatTemplateOptions = {}): string {
    const o = { ...this.defaults, ...options };
    if (!Array.isArray(messages) || messages.some((m) => typeof m !== "object" || m === null)) {
      throw new ChatTemplateError("input", "messages must be an array of objects");
    }
    if (o.continueFinalMessage && o.addGenerationPrompt) {
      throw new ChatTemplateError(
        "input",
        "continue_final_message and add_generation_prompt are not compatible: continue_final_message continues " +
          "the final message, add_generation_prompt starts a new assistant message",
      );
    }
    for (const k of Object.keys(o.vars ?? {})) {
      if (RESERVED.has(k)) {
        throw new ChatTemplateError("input", `template variable "${k}" cannot be overridden`);
      }
    }
    const rendered = this.#run(
      {
        bos_token: o.bosToken ?? "",
        eos_token: o.eosToken ?? "",
        ...o.vars,
        messages,
        tools: o.tools ?? null,
        documents: o.documents ?? null,
        add_generation_prompt: o.addGenerationPrompt ?? false,
      },
      o.now ?? (() => new Date()),
      stepBudget(messages.length + (o.tools?.length ?? 0)),
    );
    return o.continueFinalMessage ? cutAfterFinalMessage(rendered, messages) : rendered;
  }

  #run(vars: Record<string, unknown>, now: () => Date, maxSteps: number): string {
    let env: Environment;
    try {
      // Globals live in a parent scope so that the render's variables shadow them, as in jinja2.
      env = new Environment(pythonGlobals(now));
      for (const [k, v] of Object.entries(vars)) env.set(k, v);
    } catch (e) {
      throw new ChatTemplateError("input", `template variables: ${(e as Error).message}`);
    }
    try {
      const out = new PythonInterpreter(env, maxSteps).evaluate(this.#template.parsed, env);
      return out.value as string;
    } catch (e) {
      if (e instanceof TemplateRaise) throw new ChatTemplateError("raise", e.message);
      throw new ChatTemplateError("render", `chat template failed: ${(e as Error).message}`);
    }
  }
}

/** The text of the final message that continue_final_message continues (its last text part for part lists). */
function finalText(messages: readonly TemplateMessage[]): string {
  const content = messages.at(-1)?.content;
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    for (const part of [...content].reverse()) {
      if (part && typeof part === "object" && typeof (part as { text?: unknown }).text === "string") {
        return (part as { text: string }).text;
      }
    }
  }
  throw new ChatTemplateError(
    "input",
    "continue_final_message is set but the final message has no text to continue",
  );
}

/**
 * transformers' cut for `continue_final_message`: find the last occurrence of the final message's stripped
 * text and end the render there, keeping the message's trailing whitespace only when the template kept it.
 */
function cutAfterFinalMessage(rendered: string, messages: readonly TemplateMessage[]): string {
  const text = finalText(messages);
  const stripped = pyStrip(text);
  const at = rendered.lastIndexOf(stripped);
  if (at < 0) {
    throw new ChatTemplateError(
      "input",
      "continue_final_message is set but the final message does not appear in the rendered chat " +
        "(the template changes it)",
    );
  }
  const left = pyStrip(text, null, "left");
  if (rendered.slice(at, at + left.length) === text) return rendered.slice(0, at + left.length);
  return rendered.slice(0, at + stripped.length);
}

/** A model's chat template and the text of its BOS/EOS tokens (transformers' `bos_token`/`eos_token`). */
export interface ModelChatTemplate {
  source?: string;
  bosToken: string;
  eosToken: string;
}

/** The chat template of a GGUF's metadata (`tokenizer.chat_template`, BOS/EOS ids into `tokenizer.ggml.tokens`). */
export function ggufChatTemplate(metadata: Record<string, unknown>): ModelChatTemplate {
  const tokens = metadata["tokenizer.ggml.tokens"];
  const piece = (key: string) => {
    const id = metadata[key];
    return Array.isArray(tokens) && typeof id === "number" && typeof tokens[id] === "string"
      ? tokens[id]
      : "";
  };
  const source = metadata["tokenizer.chat_template"];
  return {
    source: typeof source === "string" ? source : undefined,
    bosToken: piece("tokenizer.ggml.bos_token_id"),
    eosToken: piece("tokenizer.ggml.eos_token_id"),
  };
}
