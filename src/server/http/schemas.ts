/**
 * Request/response schemas shared by the route modules (zod, registered with @hono/zod-openapi so
 * `/openapi.json` is generated from the very schemas that validate requests).
 */
import { z } from "@hono/zod-openapi";

export const ErrorSchema = z.object({
  error: z.object({
    message: z.string(),
    type: z.string(),
    param: z.string().nullable(),
    code: z.string().nullable(),
  }),
}).openapi("Error");

export const errorResponses = {
  400: { description: "Invalid request", content: { "application/json": { schema: ErrorSchema } } },
  401: {
    description: "Missing or invalid API key",
    content: { "application/json": { schema: ErrorSchema } },
  },
  404: { description: "Unknown model or session", content: { "application/json": { schema: ErrorSchema } } },
  409: {
    description: "Session busy (another turn is running)",
    content: { "application/json": { schema: ErrorSchema } },
  },
  413: { description: "Request body too large", content: { "application/json": { schema: ErrorSchema } } },
  429: {
    description: "Queue full or rate limited (see Retry-After)",
    content: { "application/json": { schema: ErrorSchema } },
  },
  503: {
    description: "Not ready or shutting down",
    content: { "application/json": { schema: ErrorSchema } },
  },
} as const;

/** `kv_policy: {name, ...params}`; the params are validated against the named policy's own schema. */
export const KvPolicySchema = z.object({ name: z.string().min(1) }).catchall(z.unknown()).openapi(
  "KvPolicy",
  {
    description:
      "KV-cache policy: full, streaming, h2o, tova, snapkv, pyramidkv or lethe, with its parameters",
    example: { name: "lethe" },
  },
);

export const SessionIdSchema = z.string().min(1).max(200).openapi({
  description: "Continue this session (id from POST /v1/sessions)",
  example: "sess_AbCdEfGhIjKlMnOpQrStUvWx",
});

const num = (min: number, max: number) => z.number().min(min).max(max);

/** Sampling and generation fields shared by chat and completions. */
export const samplingFields = {
  max_tokens: z.number().int().min(1).nullish(),
  temperature: num(0, 2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  top_k: z.number().int().min(0).nullish(),
  min_p: num(0, 1).nullish(),
  repetition_penalty: z.number().gt(0).max(10).nullish(),
  seed: z.number().int().min(0).max(0xffffffff).nullish(),
  stop: z.union([z.string(), z.array(z.string()).max(8)]).nullish(),
  n: z.number().int().nullish().openapi({ description: "Only 1 is supported" }),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().nullish() }).nullish(),
  user: z.string().nullish(),
  session_id: SessionIdSchema.nullish(),
  kv_policy: KvPolicySchema.nullish(),
};

const ContentPart = z.object({ type: z.literal("text"), text: z.string() });

const ToolCallSchema = z.object({
  id: z.string(),
  type: z.literal("function"),
  function: z.object({ name: z.string(), arguments: z.string() }),
}).openapi("ToolCall");

/** An OpenAI tool (function) schema; passed to the chat template as it is. */
export const ToolSchema = z.object({
  type: z.literal("function"),
  function: z.object({
    name: z.string().min(1),
    description: z.string().optional(),
    parameters: z.record(z.string(), z.unknown()).optional(),
  }).catchall(z.unknown()),
}).openapi("Tool");

export const ChatMessageSchema = z.object({
  role: z.enum(["system", "developer", "user", "assistant", "tool"]),
  content: z.union([z.string(), z.array(ContentPart)]).nullable(),
  name: z.string().optional(),
  reasoning_content: z.string().nullish().openapi({
    description: "An assistant turn's reasoning (as returned); templates that render reasoning read it",
  }),
  tool_calls: z.array(ToolCallSchema).nullish(),
  tool_call_id: z.string().nullish(),
});

/** How a conversation is rendered: shared by chat completions and `/apply-template`. */
export const templateFields = {
  messages: z.array(ChatMessageSchema).min(1),
  tools: z.array(ToolSchema).nullish().openapi({ description: "Tool schemas, passed to the chat template" }),
  chat_template_kwargs: z.record(z.string(), z.unknown()).nullish().openapi({
    description:
      'Extra chat template variables, e.g. {"enable_thinking": false} (over --chat-template-kwargs)',
  }),
  add_generation_prompt: z.boolean().nullish().openapi({
    description: "Append the template's assistant prefix (default true)",
  }),
  continue_final_message: z.boolean().nullish().openapi({
    description: "The final assistant message is an unfinished prefix: the reply continues it",
  }),
};

export const ReasoningFormatSchema = z.enum(["deepseek", "none"]).openapi({
  description: "deepseek: a <think> model's reasoning in reasoning_content; none: left in content " +
    "(default: --reasoning-format)",
});

export const ChatRequestSchema = z.object({
  model: z.string().min(1),
  ...templateFields,
  max_completion_tokens: z.number().int().min(1).nullish(),
  reasoning_format: ReasoningFormatSchema.nullish(),
  ...samplingFields,
}).openapi("ChatCompletionRequest", {
  example: {
    model: "stories260K",
    messages: [{ role: "user", content: "Once upon a time" }],
    max_tokens: 32,
  },
});

export const CompletionRequestSchema = z.object({
  model: z.string().min(1),
  prompt: z.string(),
  parse_special: z.boolean().nullish().openapi({
    description:
      "Turn the text of special tokens (<|im_start|>) in the prompt into those tokens (default false)",
  }),
  ...samplingFields,
}).openapi("CompletionRequest", {
  example: { model: "stories260K", prompt: "Once upon a time", max_tokens: 32 },
});

export const UsageSchema = z.object({
  prompt_tokens: z.number().int(),
  completion_tokens: z.number().int(),
  total_tokens: z.number().int(),
  prompt_tokens_details: z.object({ cached_tokens: z.number().int() }),
  completion_tokens_details: z.object({ reasoning_tokens: z.number().int() }).optional(),
}).openapi("Usage");

export const KvReportSchema = z.object({
  policy: z.string(),
  params: z.record(z.string(), z.unknown()),
  kept_per_layer: z.array(z.number().int()),
  kv_bytes: z.number().int(),
  pruning_rounds: z.number().int(),
  prune_ms: z.number(),
  stored_bytes: z.number().int().nullable(),
  prefilled_tokens: z.number().int(),
  cached_tokens: z.number().int(),
  rebuilt: z.string().nullable(),
}).openapi("KvReport");

export const ChatResponseSchema = z.object({
  id: z.string(),
  object: z.literal("chat.completion"),
  created: z.number().int(),
  model: z.string(),
  choices: z.array(z.object({
    index: z.number().int(),
    message: z.object({
      role: z.literal("assistant"),
      content: z.string(),
      reasoning_content: z.string().optional(),
    }),
    finish_reason: z.enum(["stop", "length"]),
    logprobs: z.null(),
  })),
  usage: UsageSchema,
  session_id: z.string().optional(),
  kv: KvReportSchema,
}).openapi("ChatCompletion");

export const CompletionResponseSchema = z.object({
  id: z.string(),
  object: z.literal("text_completion"),
  created: z.number().int(),
  model: z.string(),
  choices: z.array(z.object({
    index: z.number().int(),
    text: z.string(),
    finish_reason: z.enum(["stop", "length"]),
    logprobs: z.null(),
  })),
  usage: UsageSchema,
  session_id: z.string().optional(),
  kv: KvReportSchema,
}).openapi("Completion");

export const AuthHeaderSchema = z.object({
  authorization: z.string().optional().openapi({
    description: "Bearer <API key> (when keys are configured)",
  }),
});
