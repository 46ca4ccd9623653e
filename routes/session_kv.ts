/**
 * Read-only views of a session, scoped to the API key like every session endpoint (another key's session is
 * 404): `GET /v1/sessions/{id}/kv` (what its stored KV cache keeps, per layer, with scores, budgets and the
 * turn-by-turn timeline), `GET /v1/sessions/{id}/messages` (its conversation) and
 * `GET /v1/sessions/{id}/events` (an SSE stream of what its running turns do to the cache: src/server/kv_watch.ts).
 * The playground page is built on these three.
 */
import { createRoute, type OpenAPIHono, z } from "@hono/zod-openapi";
import type { AppEnv } from "../src/server/http/app.ts";
import { AuthHeaderSchema, errorResponses } from "../src/server/http/schemas.ts";
import { kvView, transcript } from "../src/server/session_view.ts";

const IdParam = z.object({
  id: z.string().max(200).openapi({
    param: { name: "id", in: "path" },
    example: "sess_AbCdEfGhIjKlMnOpQrStUvWx",
  }),
});

const TurnRecordSchema = z.object({
  turn: z.number().int(),
  start: z.number().int().openapi({ description: "History tokens before the turn's prompt" }),
  end: z.number().int().openapi({ description: "History tokens after the turn's reply" }),
  prompt_tokens: z.number().int(),
  cached_tokens: z.number().int(),
  generated_tokens: z.number().int(),
  kept_per_layer: z.array(z.number().int()),
  kv_bytes: z.number().int(),
  stored_bytes: z.number().int().nullable(),
  pruning_rounds: z.number().int(),
  prune_spans: z.array(z.tuple([z.number().int(), z.number().int()])).openapi({
    description: "Token positions of the steps that pruned, runs of consecutive steps as [first, last]",
  }),
  at: z.number().int().openapi({ description: "Commit time, ms since the epoch" }),
}).openapi("TurnRecord");

const SessionKvSchema = z.object({
  id: z.string(),
  object: z.literal("session.kv"),
  turns: z.number().int(),
  policy: z.object({ name: z.string(), params: z.record(z.string(), z.unknown()) }).openapi({
    description: "The session's KV policy with every parameter (defaults filled in)",
  }),
  scored: z.boolean().openapi({ description: "Whether the policy scores rows (full and streaming do not)" }),
  limits: z.object({
    kind: z.enum(["budget", "trigger", "none"]),
    per_layer: z.array(z.number()).nullable(),
    total: z.number().nullable(),
    note: z.string(),
  }).openapi({
    description: "What the policy holds each layer to: a budget, Lethe's adaptive trigger, or none",
  }),
  n_layers: z.number().int(),
  tokens: z.array(z.number().int()).openapi({ description: "The conversation's token ids (all turns)" }),
  token_texts: z.array(z.string()).openapi({ description: "Each token's text (a control token's piece)" }),
  next_pos: z.number().int().openapi({
    description: "Tokens in the cache; the rest are pending (next turn)",
  }),
  layers: z.array(z.object({
    layer: z.number().int(),
    positions: z.array(z.number().int()).openapi({ description: "Positions of the kept tokens, ascending" }),
    scores: z.array(z.number()).openapi({ description: "The policy's score of each kept token" }),
  })),
  kv_bytes: z.number().int(),
  stored_bytes: z.number().int(),
  pruning_rounds: z.number().int(),
  precision: z.string(),
  timeline: z.array(TurnRecordSchema),
  snapshot_error: z.string().nullable().openapi({
    description: "Why the stored cache could not be read (the next turn rebuilds it)",
  }),
}).openapi("SessionKv");

const MessagesSchema = z.object({
  object: z.literal("list"),
  data: z.array(z.object({
    role: z.string(),
    content: z.string(),
    reasoning_content: z.string().optional(),
  })),
}).openapi("SessionMessages");

const WatchEventSchema = z.object({
  type: z.enum(["watch", "turn.start", "kv", "turn.end", "turn.error"]),
  turn: z.number().int().optional(),
  pos: z.number().int().optional().openapi({ description: "kv: tokens the cache has seen" }),
  generated: z.number().int().optional(),
  kept_per_layer: z.array(z.number().int()).optional(),
  kv_bytes: z.number().int().optional(),
  prunes: z.array(z.object({
    pos: z.number().int(),
    steps: z.number().int().openapi({
      description: "Consecutive steps (at pos, pos+1, …) that each pruned these layers the same way",
    }),
    layers: z.array(z.tuple([z.number().int(), z.number().int(), z.number().int()])).openapi({
      description: "[layer, rows before, rows after] of each layer the step pruned",
    }),
  })).optional(),
}).passthrough().openapi("SessionWatchEvent", {
  description:
    "One `data:` line of the events stream. watch {session, running} on connect; turn.start {turn, history_tokens, prompt_tokens, cached_tokens, max_tokens, policy, rebuilt}; kv {turn, pos, generated, kept_per_layer, kv_bytes, prunes: [{pos, steps, layers}]} at most every 50 ms while a turn runs; turn.end {turn, finish_reason, usage, kv, record}; turn.error {turn, error}",
});

const kvRoute = createRoute({
  method: "get",
  path: "/v1/sessions/{id}/kv",
  tags: ["sessions"],
  summary: "What a session's stored KV cache keeps, per layer",
  request: { headers: AuthHeaderSchema, params: IdParam },
  responses: {
    200: { description: "The cache view", content: { "application/json": { schema: SessionKvSchema } } },
    ...errorResponses,
  },
});

const messagesRoute = createRoute({
  method: "get",
  path: "/v1/sessions/{id}/messages",
  tags: ["sessions"],
  summary: "A session's conversation",
  request: { headers: AuthHeaderSchema, params: IdParam },
  responses: {
    200: {
      description: "The messages, oldest first",
      content: { "application/json": { schema: MessagesSchema } },
    },
    ...errorResponses,
  },
});

const eventsRoute = createRoute({
  method: "get",
  path: "/v1/sessions/{id}/events",
  tags: ["sessions"],
  summary: "Watch a session's turns: SSE of prune events and KV stats (read-only)",
  request: { headers: AuthHeaderSchema, params: IdParam },
  responses: {
    200: {
      description: "text/event-stream of SessionWatchEvent objects, until the client closes it",
      content: { "text/event-stream": { schema: WatchEventSchema } },
    },
    ...errorResponses,
  },
});

export function registerSessionKv(app: OpenAPIHono<AppEnv>): void {
  app.openapi(kvRoute, async (c) => {
    const { id } = c.req.valid("param");
    const deps = c.get("deps");
    const { meta, blob } = await deps.sessions.read(c.get("owner"), id);
    return c.json(kvView(deps.model, id, meta, blob), 200);
  });
  app.openapi(messagesRoute, async (c) => {
    const { id } = c.req.valid("param");
    const { meta, blob } = await c.get("deps").sessions.read(c.get("owner"), id);
    return c.json({ object: "list" as const, data: transcript(meta, blob) }, 200);
  });
  app.openapi(eventsRoute, async (c) => {
    const { id } = c.req.valid("param");
    const deps = c.get("deps");
    await deps.sessions.info(c.get("owner"), id); // 404 unless it is the caller's
    const body = deps.inference.watch.subscribe(id);
    return new Response(body, {
      status: 200,
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "x-request-id": c.get("requestId"),
      },
    }) as never;
  });
}
