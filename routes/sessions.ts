/**
 * Sessions: `POST /v1/sessions` (optional `kv_policy`; returns the id), `GET /v1/sessions/{id}` (turns,
 * tokens, per-layer kept counts, stored bytes, policy, created/updated), `DELETE /v1/sessions/{id}`.
 * A session belongs to the API key that created it; other keys get 404.
 */
import { createRoute, type OpenAPIHono, z } from "@hono/zod-openapi";
import type { AppEnv } from "../src/server/http/app.ts";
import { AuthHeaderSchema, errorResponses, KvPolicySchema } from "../src/server/http/schemas.ts";

const SessionSchema = z.object({
  id: z.string(),
  object: z.literal("session"),
  created: z.number().int(),
  updated: z.number().int(),
  turns: z.number().int(),
  tokens: z.number().int(),
  kv_policy: z.record(z.string(), z.unknown()),
  kv: z.object({
    kept_per_layer: z.array(z.number().int()),
    kv_bytes: z.number().int(),
    stored_bytes: z.number().int(),
    pruning_rounds: z.number().int(),
    precision: z.string(),
  }),
}).openapi("Session");

const IdParam = z.object({
  id: z.string().max(200).openapi({
    param: { name: "id", in: "path" },
    example: "sess_AbCdEfGhIjKlMnOpQrStUvWx",
  }),
});

const createRouteDef = createRoute({
  method: "post",
  path: "/v1/sessions",
  tags: ["sessions"],
  summary: "Create a session",
  request: {
    headers: AuthHeaderSchema,
    body: {
      required: false,
      content: { "application/json": { schema: z.object({ kv_policy: KvPolicySchema.nullish() }) } },
    },
  },
  responses: {
    201: { description: "Created", content: { "application/json": { schema: SessionSchema } } },
    ...errorResponses,
  },
});

const getRoute = createRoute({
  method: "get",
  path: "/v1/sessions/{id}",
  tags: ["sessions"],
  summary: "Inspect a session",
  request: { headers: AuthHeaderSchema, params: IdParam },
  responses: {
    200: { description: "The session", content: { "application/json": { schema: SessionSchema } } },
    ...errorResponses,
  },
});

const deleteRoute = createRoute({
  method: "delete",
  path: "/v1/sessions/{id}",
  tags: ["sessions"],
  summary: "Delete a session",
  request: { headers: AuthHeaderSchema, params: IdParam },
  responses: {
    200: {
      description: "Deleted",
      content: {
        "application/json": {
          schema: z.object({ id: z.string(), object: z.literal("session"), deleted: z.literal(true) }),
        },
      },
    },
    ...errorResponses,
  },
});

export function registerSessions(app: OpenAPIHono<AppEnv>): void {
  app.openapi(createRouteDef, async (c) => {
    let policy: unknown = undefined;
    if ((c.req.header("content-type") ?? "").includes("json")) policy = c.req.valid("json")?.kv_policy;
    const info = await c.get("deps").sessions.create(c.get("owner"), policy ?? undefined);
    c.get("log").info({ session: info.id, policy: info.kv_policy.name }, "session created");
    return c.json(info, 201);
  });
  app.openapi(getRoute, async (c) => {
    const { id } = c.req.valid("param");
    return c.json(await c.get("deps").sessions.info(c.get("owner"), id), 200);
  });
  app.openapi(deleteRoute, async (c) => {
    const { id } = c.req.valid("param");
    await c.get("deps").sessions.delete(c.get("owner"), id);
    c.get("log").info({ session: id }, "session deleted");
    return c.json({ id, object: "session" as const, deleted: true as const }, 200);
  });
}
