/**
 * `POST /v1/completions` (OpenAI-compatible legacy completions), plus `session_id` and `kv_policy`.
 *
 * With `session_id`, `prompt` is the text to append to the session (the stored history is not resent): it is
 * tokenized on its own (BOS only on a session's first turn) and fed after the stored tokens, so only the new
 * tokens are prefilled.
 *
 * The prompt is plain text: the text of special tokens (`<|im_start|>`) stays text unless `parse_special: true`
 * (llama.cpp's option of the same name) turns it into those tokens.
 */
import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import type { AppEnv } from "../src/server/http/app.ts";
import {
  AuthHeaderSchema,
  CompletionRequestSchema,
  CompletionResponseSchema,
  errorResponses,
} from "../src/server/http/schemas.ts";
import {
  checkModel,
  commonParams,
  finalChunks,
  randomId,
  streamGeneration,
} from "../src/server/http/openai.ts";

const route = createRoute({
  method: "post",
  path: "/v1/completions",
  tags: ["completions"],
  summary: "Create a text completion (SSE when stream=true)",
  request: {
    headers: AuthHeaderSchema,
    body: { required: true, content: { "application/json": { schema: CompletionRequestSchema } } },
  },
  responses: {
    200: {
      description: "The completion (or a text/event-stream of text_completion events)",
      content: { "application/json": { schema: CompletionResponseSchema } },
    },
    ...errorResponses,
  },
});

export function registerCompletions(app: OpenAPIHono<AppEnv>): void {
  app.openapi(route, async (c) => {
    const body = c.req.valid("json");
    const deps = c.get("deps");
    const model = checkModel(c, body.model);
    const id = randomId("cmpl");
    const created = Math.floor(Date.now() / 1000);
    const params = {
      ...commonParams(c, body),
      endpoint: "completions" as const,
      input: { kind: "text" as const, text: body.prompt, parseSpecial: body.parse_special ?? false },
      maxTokens: body.max_tokens ?? undefined,
      maxTokensParam: "max_tokens",
    };
    const base = { id, object: "text_completion", created, model };
    if (body.stream) {
      const includeUsage = body.stream_options?.include_usage === true;
      return await streamGeneration(c, deps.inference, params, {
        chunk: (d) => ({
          ...base,
          choices: [{ index: 0, text: d.content, finish_reason: null, logprobs: null }],
        }),
        final: (r) => finalChunks(base, r, includeUsage, { text: "" }),
      }) as never;
    }
    const started = await deps.inference.start({ ...params, signal: c.req.raw.signal });
    const r = await started.done;
    return c.json({
      id,
      object: "text_completion" as const,
      created,
      model,
      choices: [{ index: 0, text: r.text, finish_reason: r.finishReason, logprobs: null }],
      usage: r.usage,
      ...(r.sessionId ? { session_id: r.sessionId } : {}),
      kv: r.kv,
    }, 200);
  });
}
