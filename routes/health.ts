/** `GET /health` (process is up), `GET /ready` (model loaded and accepting work; 503 while shutting down),
 * `GET /metrics` (Prometheus text format). None of them needs an API key. */
import { createRoute, type OpenAPIHono, z } from "@hono/zod-openapi";
import type { AppEnv } from "../src/server/http/app.ts";
import { errorResponses } from "../src/server/http/schemas.ts";
import { shuttingDown, unavailable } from "../src/server/errors.ts";
import { modelId } from "../src/server/http/openai.ts";

const health = createRoute({
  method: "get",
  path: "/health",
  tags: ["health"],
  summary: "Liveness",
  responses: {
    200: {
      description: "Alive",
      content: { "application/json": { schema: z.object({ status: z.literal("ok") }) } },
    },
  },
});

const ready = createRoute({
  method: "get",
  path: "/ready",
  tags: ["health"],
  summary: "Readiness",
  responses: {
    200: {
      description: "Ready",
      content: {
        "application/json": {
          schema: z.object({
            status: z.literal("ready"),
            model: z.string(),
            backend: z.string(),
            queued: z.number().int(),
            active: z.number().int(),
          }),
        },
      },
    },
    503: errorResponses[503],
  },
});

const metrics = createRoute({
  method: "get",
  path: "/metrics",
  tags: ["health"],
  summary: "Prometheus metrics",
  responses: { 200: { description: "Metrics", content: { "text/plain": { schema: z.string() } } } },
});

export function registerHealth(app: OpenAPIHono<AppEnv>): void {
  app.openapi(health, (c) => c.json({ status: "ok" as const }, 200));
  app.openapi(ready, (c) => {
    const d = c.get("deps");
    if (d.state.shuttingDown) throw shuttingDown();
    if (!d.state.ready) throw unavailable("The server is not ready yet.");
    return c.json({
      status: "ready" as const,
      model: modelId(d.model.name),
      backend: d.backend.name,
      queued: d.scheduler.queued,
      active: d.scheduler.active,
    }, 200);
  });
  app.openapi(metrics, async (c) => {
    const d = c.get("deps");
    d.metrics.queueDepth.set(d.scheduler.queued);
    d.metrics.activeSequences.set(d.scheduler.active);
    d.metrics.kvBytes.set(d.scheduler.kvBytes());
    d.metrics.activeSessions.set(d.sessions.leasesHeld);
    const text = await d.metrics.registry.metrics();
    return c.text(text, 200, { "content-type": d.metrics.registry.contentType });
  });
}
