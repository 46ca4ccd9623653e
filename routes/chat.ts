/**
 * `POST /v1/chat/completions` (OpenAI-compatible), plus the extensions `session_id` and `kv_policy`.
 *
 * Chat template: the model's own template (GGUF `tokenizer.chat_template` / HF `chat_template`) rendered with
 * `@huggingface/jinja` when it has one. The story models (stories260K, tinystories-656K) have none; for them
 * the DEFAULT TEMPLATE is: the message contents in order joined with "\n" (roles dropped, no trailing
 * newline), prefixed by BOS. So `[{role:"user", content:"Once upon a time"}]` is the prompt "Once upon a time".
 *
 * Sessions: with `session_id` the client may send either only the new messages (appended to the stored
 * conversation) or the whole conversation (when its first message equals the stored first message). A whole
 * conversation that extends the stored one reuses the stored cache and prefills only the new messages; one
 * that diverges from it (an edited earlier message) rebuilds the cache from scratch (`kv.rebuilt`).
 */
import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import type { AppEnv } from "../src/server/http/app.ts";
import {
  AuthHeaderSchema,
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
import type { ChatMessage } from "../src/server/chat_prompt.ts";
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

function flatten(content: string | { type: "text"; text: string }[] | null): string {
  if (content === null) return "";
  return typeof content === "string" ? content : content.map((p) => p.text).join("");
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
    const messages: ChatMessage[] = body.messages.map((m) => ({
      role: m.role,
      content: flatten(m.content),
      ...(m.name ? { name: m.name } : {}),
    }));
    const id = randomId("chatcmpl");
    const created = Math.floor(Date.now() / 1000);
    const params = {
      ...common,
      endpoint: "chat" as const,
      input: { kind: "chat" as const, messages },
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
        chunk: (text) => ({
          ...base,
          choices: [{ index: 0, delta: { content: text }, finish_reason: null, logprobs: null }],
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
        message: { role: "assistant" as const, content: r.text },
        finish_reason: r.finishReason,
        logprobs: null,
      }],
      usage: r.usage,
      ...(r.sessionId ? { session_id: r.sessionId } : {}),
      kv: r.kv,
    }, 200);
  });
}
