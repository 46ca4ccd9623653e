/**
 * `POST /v1/chat/completions` (OpenAI-compatible), plus the extensions `session_id`, `kv_policy` and those of
 * llama.cpp's server: `reasoning_format`, `chat_template_kwargs`, `add_generation_prompt`,
 * `continue_final_message` (and `tools`, passed to the template).
 *
 * Chat template: the model's own template (GGUF `tokenizer.chat_template` / HF `chat_template`) rendered as
 * transformers renders it when it has one (src/server/chat_prompt.ts). The story models (stories260K,
 * tinystories-656K) have none; for them the DEFAULT TEMPLATE is: the message contents in order joined with "\n"
 * (roles dropped, no trailing newline), prefixed by BOS. So `[{role:"user", content:"Once upon a time"}]` is the
 * prompt "Once upon a time".
 *
 * Reasoning (`<think>` models: DeepSeek-R1 distills, Qwen3, QwQ): with `reasoning_format` "deepseek" (the
 * default, `--reasoning-format`) the thinking comes back as `message.reasoning_content` (streamed as
 * `delta.reasoning_content`) and `content` holds the answer, also when the template opened `<think>` in the
 * prompt; "none" leaves everything in `content`, tags included. `usage.completion_tokens_details.
 * reasoning_tokens` counts the thinking tokens either way.
 *
 * Sessions: with `session_id` the client may send either only the new messages (appended to the stored
 * conversation) or the whole conversation (when its first message equals the stored first message). A whole
 * conversation that extends the stored one reuses the stored cache and prefills only the new messages; one
 * that diverges from it (an edited earlier message) rebuilds the cache from scratch (`kv.rebuilt`).
 */
import { createRoute, type OpenAPIHono, type z } from "@hono/zod-openapi";
import type { AppEnv } from "../src/server/http/app.ts";
import {
  AuthHeaderSchema,
  type ChatMessageSchema,
  ChatRequestSchema,
  ChatResponseSchema,
  errorResponses,
} from "../src/server/http/schemas.ts";
import {
  checkModel,
  commonParams,
  finalChunks,
  randomId,
  streamGeneration,
} from "../src/server/http/openai.ts";
import type { ChatMessage, ChatOptions } from "../src/server/chat_prompt.ts";
import { invalid } from "../src/server/errors.ts";

const route = createRoute({
  method: "post",
  path: "/v1/chat/completions",
  tags: ["chat"],
  summary: "Create a chat completion (SSE when stream=true)",
  request: {
    headers: AuthHeaderSchema,
    body: { required: true, content: { "application/json": { schema: ChatRequestSchema } } },
  },
  responses: {
    200: {
      description: "The completion (or a text/event-stream of chat.completion.chunk events)",
      content: { "application/json": { schema: ChatResponseSchema } },
    },
    ...errorResponses,
  },
});

function flatten(content: string | { type: "text"; text: string }[] | null): string | null {
  if (content === null) return null;
  return typeof content === "string" ? content : content.map((p) => p.text).join("");
}

type RequestMessage = z.infer<typeof ChatMessageSchema>;

/** A request message as the template sees it (null content only for an assistant's tool calls). */
function chatMessage(m: RequestMessage): ChatMessage {
  const calls = m.tool_calls ?? [];
  return {
    role: m.role,
    content: flatten(m.content) ?? (m.role === "assistant" && calls.length > 0 ? null : ""),
    ...(m.name ? { name: m.name } : {}),
    ...(typeof m.reasoning_content === "string" ? { reasoning_content: m.reasoning_content } : {}),
    ...(calls.length > 0 ? { tool_calls: calls } : {}),
    ...(m.tool_call_id ? { tool_call_id: m.tool_call_id } : {}),
  };
}

/** The rendering options of a chat request (`/v1/chat/completions` and `/apply-template`). */
export function chatOptions(body: {
  messages: RequestMessage[];
  tools?: unknown[] | null;
  chat_template_kwargs?: Record<string, unknown> | null;
  add_generation_prompt?: boolean | null;
  continue_final_message?: boolean | null;
}): { messages: ChatMessage[]; options: ChatOptions } {
  const cont = body.continue_final_message === true;
  if (cont && body.add_generation_prompt === true) {
    throw invalid(
      "continue_final_message and add_generation_prompt cannot both be true: the first continues the final " +
        "message, the second starts a new assistant message.",
      "continue_final_message",
      "invalid_value",
    );
  }
  if (cont && body.messages.at(-1)?.role !== "assistant") {
    throw invalid(
      "continue_final_message needs a final assistant message to continue.",
      "continue_final_message",
      "invalid_value",
    );
  }
  return {
    messages: body.messages.map(chatMessage),
    options: {
      addGenerationPrompt: cont ? false : body.add_generation_prompt ?? true,
      continueFinalMessage: cont,
      tools: body.tools ?? null,
      kwargs: body.chat_template_kwargs ?? {},
    },
  };
}

export function registerChat(app: OpenAPIHono<AppEnv>): void {
  app.openapi(route, async (c) => {
    const body = c.req.valid("json");
    const deps = c.get("deps");
    const model = checkModel(c, body.model);
    const common = commonParams(c, body);
    if (body.max_tokens && body.max_completion_tokens && body.max_tokens !== body.max_completion_tokens) {
      throw invalid(
        "max_tokens and max_completion_tokens disagree; send one of them.",
        "max_completion_tokens",
        "invalid_value",
      );
    }
    const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? undefined;
    const { messages, options } = chatOptions(body);
    const id = randomId("chatcmpl");
    const created = Math.floor(Date.now() / 1000);
    const params = {
      ...common,
      endpoint: "chat" as const,
      input: { kind: "chat" as const, messages, options },
      reasoningFormat: body.reasoning_format ?? deps.cfg.reasoningFormat,
      maxTokens,
      maxTokensParam: body.max_completion_tokens ? "max_completion_tokens" : "max_tokens",
    };
    const base = { id, object: "chat.completion.chunk", created, model };
    if (body.stream) {
      const includeUsage = body.stream_options?.include_usage === true;
      return await streamGeneration(c, deps.inference, params, {
        first: () => ({
          ...base,
          choices: [{
            index: 0,
            delta: { role: "assistant", content: "" },
            finish_reason: null,
            logprobs: null,
          }],
        }),
        chunk: (d) => ({
          ...base,
          choices: [{
            index: 0,
            delta: {
              ...(d.reasoning ? { reasoning_content: d.reasoning } : {}),
              ...(d.content ? { content: d.content } : {}),
            },
            finish_reason: null,
            logprobs: null,
          }],
        }),
        final: (r) => finalChunks(base, r, includeUsage, { delta: {} }),
      }) as never;
    }
    const started = await deps.inference.start({ ...params, signal: c.req.raw.signal });
    const r = await started.done;
    return c.json({
      id,
      object: "chat.completion" as const,
      created,
      model,
      choices: [{
        index: 0,
        message: {
          role: "assistant" as const,
          content: r.text,
          ...(r.reasoning !== null ? { reasoning_content: r.reasoning } : {}),
        },
        finish_reason: r.finishReason,
        logprobs: null,
      }],
      usage: r.usage,
      ...(r.sessionId ? { session_id: r.sessionId } : {}),
      kv: r.kv,
    }, 200);
  });
}
