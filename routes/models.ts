/** `GET /v1/models`: the one model this server serves. */
import { createRoute, type OpenAPIHono, z } from "@hono/zod-openapi";
import type { AppEnv } from "../src/server/http/app.ts";
import { AuthHeaderSchema, errorResponses } from "../src/server/http/schemas.ts";
import { modelId } from "../src/server/http/openai.ts";

const ModelSchema = z.object({
  id: z.string(),
  object: z.literal("model"),
  created: z.number().int(),
  owned_by: z.string(),
  context_length: z.number().int(),
  fingerprint: z.string(),
}).openapi("Model");

const route = createRoute({
  method: "get",
  path: "/v1/models",
  tags: ["models"],
  summary: "List models",
  request: { headers: AuthHeaderSchema },
  responses: {
    200: {
      description: "Models",
      content: {
        "application/json": { schema: z.object({ object: z.literal("list"), data: z.array(ModelSchema) }) },
      },
    },
    ...errorResponses,
  },
});

export function registerModels(app: OpenAPIHono<AppEnv>): void {
  app.openapi(route, (c) => {
    const d = c.get("deps");
    return c.json({
      object: "list" as const,
      data: [{
        id: modelId(d.model.name),
        object: "model" as const,
        created: Math.floor(d.startedAt / 1000),
        owned_by: "lethe-edge",
        context_length: d.model.config.contextLength,
        fingerprint: d.model.fingerprint,
      }],
    }, 200);
  });
}
