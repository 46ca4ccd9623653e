/**
 * Inspection tools with llama.cpp server's request and response shapes (its `/tokenize`, `/detokenize` and
 * `/apply-template`), behind the same API-key check as `/v1/*`:
 *
 * - `POST /tokenize` `{content, add_special = false, parse_special = true, with_pieces = false}` →
 *   `{tokens: [ids]}`, or with pieces `{tokens: [{id, piece}]}` where a piece is its text, or its bytes when
 *   they are not valid UTF-8 on their own (part of a character).
 * - `POST /detokenize` `{tokens}` → `{content}`: the tokens' pieces concatenated, special tokens as their text.
 * - `POST /apply-template` `{messages, tools, chat_template_kwargs, add_generation_prompt,
 *   continue_final_message}` (as chat completions) → `{prompt}`: the exact text a chat request would prefill.
 */
import { createRoute, type OpenAPIHono, z } from "@hono/zod-openapi";
import type { AppEnv } from "../src/server/http/app.ts";
import { AuthHeaderSchema, errorResponses, templateFields } from "../src/server/http/schemas.ts";
import { invalid } from "../src/server/errors.ts";
import { checkModel } from "../src/server/http/openai.ts";
import { chatOptions } from "./chat.ts";

const TokenizeRequestSchema = z.object({
  content: z.string(),
  add_special: z.boolean().nullish().openapi({
    description: "Add BOS/EOS as the model does (default false)",
  }),
  parse_special: z.boolean().nullish().openapi({
    description: "Turn special-token text (<|im_start|>) into those tokens (default true)",
  }),
  with_pieces: z.boolean().nullish().openapi({
    description: "Return {id, piece} for each token (default false)",
  }),
}).openapi("TokenizeRequest", { example: { content: "Once upon a time", with_pieces: true } });

const PieceSchema = z.object({
  id: z.number().int(),
  piece: z.union([z.string(), z.array(z.number().int())]).openapi({
    description: "The token's text, or its bytes when they are not valid UTF-8 on their own",
  }),
});

const TokenizeResponseSchema = z.object({
  tokens: z.union([z.array(z.number().int()), z.array(PieceSchema)]),
}).openapi("TokenizeResponse");

const DetokenizeRequestSchema = z.object({
  tokens: z.array(z.number().int()),
}).openapi("DetokenizeRequest", { example: { tokens: [1, 9038, 2501, 263, 931] } });

const ApplyTemplateRequestSchema = z.object({
  model: z.string().optional(),
  ...templateFields,
}).openapi("ApplyTemplateRequest", {
  example: { messages: [{ role: "user", content: "Hello!" }] },
});

const json = <T extends z.ZodType>(schema: T) => ({ content: { "application/json": { schema } } });

const tokenizeRoute = createRoute({
  method: "post",
  path: "/tokenize",
  tags: ["inspect"],
  summary: "Tokenize text with the model's tokenizer (llama.cpp server's shape)",
  request: { headers: AuthHeaderSchema, body: { required: true, ...json(TokenizeRequestSchema) } },
  responses: { 200: { description: "The tokens", ...json(TokenizeResponseSchema) }, ...errorResponses },
});

const detokenizeRoute = createRoute({
  method: "post",
  path: "/detokenize",
  tags: ["inspect"],
  summary: "Turn token ids back into text (special tokens as their text)",
  request: { headers: AuthHeaderSchema, body: { required: true, ...json(DetokenizeRequestSchema) } },
  responses: {
    200: {
      description: "The text",
      ...json(z.object({ content: z.string() }).openapi("DetokenizeResponse")),
    },
    ...errorResponses,
  },
});

const applyTemplateRoute = createRoute({
  method: "post",
  path: "/apply-template",
  tags: ["inspect"],
  summary: "Render a conversation with the model's chat template, without generating",
  request: { headers: AuthHeaderSchema, body: { required: true, ...json(ApplyTemplateRequestSchema) } },
  responses: {
    200: {
      description: "The prompt",
      ...json(z.object({ prompt: z.string() }).openapi("ApplyTemplateResponse")),
    },
    ...errorResponses,
  },
});

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** A token's piece: its text, or its bytes when they are not valid UTF-8 by themselves. */
function piece(bytes: Uint8Array): string | number[] {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return Array.from(bytes);
  }
}

export function registerInspect(app: OpenAPIHono<AppEnv>): void {
  app.openapi(tokenizeRoute, (c) => {
    const body = c.req.valid("json");
    const tok = c.get("deps").model.tokenizer;
    const ids = tok.encode(body.content, {
      addSpecial: body.add_special ?? false,
      parseSpecial: body.parse_special ?? true,
    });
    if (!body.with_pieces) return c.json({ tokens: ids }, 200);
    return c.json({ tokens: ids.map((id) => ({ id, piece: piece(tok.tokenBytes(id)) })) }, 200);
  });

  app.openapi(detokenizeRoute, (c) => {
    const { tokens } = c.req.valid("json");
    const tok = c.get("deps").model.tokenizer;
    const bad = tokens.findIndex((id) => id < 0 || id >= tok.vocabSize);
    if (bad >= 0) {
      throw invalid(
        `tokens[${bad}] = ${tokens[bad]} is not a token id of this model (0 … ${tok.vocabSize - 1}).`,
        "tokens",
        "invalid_token",
      );
    }
    const bytes = tokens.map((id) => tok.tokenBytes(id));
    const all = new Uint8Array(bytes.reduce((n, b) => n + b.length, 0));
    let at = 0;
    for (const b of bytes) {
      all.set(b, at);
      at += b.length;
    }
    return c.json({ content: new TextDecoder().decode(all) }, 200);
  });

  app.openapi(applyTemplateRoute, (c) => {
    const body = c.req.valid("json");
    if (body.model !== undefined) checkModel(c, body.model);
    const { messages, options } = chatOptions(body);
    return c.json({ prompt: c.get("deps").renderer.render(messages, options) }, 200);
  });
}
