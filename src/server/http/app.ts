/**
 * The Hono app, built from injected dependencies (model, backend, scheduler, sessions, …) so tests and
 * `main.ts` wire it the same way. Cross-cutting concerns live here: request ids and structured request logs,
 * metrics by route and status, body-size limit, API-key auth and per-key rate limiting on `/v1/*`, zod
 * validation errors and every other error turned into the OpenAI error shape (never a stack trace),
 * `/openapi.json` and the swagger-ui page at `/docs`.
 */
import { OpenAPIHono } from "@hono/zod-openapi";
import { swaggerUI } from "@hono/swagger-ui";
import { bodyLimit } from "hono/body-limit";
import { HTTPException } from "hono/http-exception";
import type { Backend } from "../../engine/backend.ts";
import type { Scheduler } from "../../engine/scheduler.ts";
import type { LoadedModel } from "../../model/loader.ts";
import type { ServerConfig } from "../config.ts";
import { ApiError, badRequest, fromZodIssues, internal, notFound } from "../errors.ts";
import type { Inference } from "../inference.ts";
import type { Logger } from "../logger.ts";
import type { Metrics } from "../metrics.ts";
import type { SessionService } from "../session_service.ts";
import type { ApiKeys } from "./auth.ts";
import type { RateLimiter } from "./rate_limit.ts";
import { registerChat } from "../../../routes/chat.ts";
import { registerCompletions } from "../../../routes/completions.ts";
import { registerSessions } from "../../../routes/sessions.ts";
import { registerModels } from "../../../routes/models.ts";
import { registerHealth } from "../../../routes/health.ts";

export interface AppDeps {
  cfg: ServerConfig;
  model: LoadedModel;
  backend: Backend;
  backendReason: string;
  scheduler: Scheduler;
  sessions: SessionService;
  inference: Inference;
  metrics: Metrics;
  logger: Logger;
  keys: ApiKeys;
  limiter: RateLimiter;
  startedAt: number;
  state: { ready: boolean; shuttingDown: boolean };
}

export type AppEnv = {
  Variables: {
    deps: AppDeps;
    requestId: string;
    log: Logger;
    owner: string;
    startedAt: number;
  };
};

const REQUEST_ID_RE = /^[A-Za-z0-9._:\-]{1,128}$/;

function errorResponse(c: { get(k: "requestId"): string }, e: ApiError): Response {
  return e.toResponse({ "x-request-id": c.get("requestId") ?? "" });
}

export function createApp(deps: AppDeps): OpenAPIHono<AppEnv> {
  const app = new OpenAPIHono<AppEnv>({
    defaultHook: (result) => {
      if (!result.success) throw fromZodIssues(result.error.issues, result.target);
    },
  });

  // Request id, logging, metrics.
  app.use("*", async (c, next) => {
    const t0 = performance.now();
    const given = c.req.header("x-request-id");
    const requestId = given && REQUEST_ID_RE.test(given) ? given : crypto.randomUUID();
    const log = deps.logger.child({ reqId: requestId });
    c.set("deps", deps);
    c.set("requestId", requestId);
    c.set("log", log);
    c.set("startedAt", t0);
    c.set("owner", "anonymous");
    await next();
    c.header("x-request-id", requestId);
    const status = c.res.status;
    const route = c.req.routePath && c.req.routePath !== "/*" && c.req.routePath !== "*"
      ? c.req.routePath
      : "unmatched";
    const labels = { route, method: c.req.method, status: String(status) };
    const secs = (performance.now() - t0) / 1000;
    deps.metrics.requests.inc(labels);
    deps.metrics.requestSeconds.observe(labels, secs);
    const line = { method: c.req.method, path: c.req.path, status, ms: Math.round(secs * 10000) / 10 };
    if (status >= 500) log.error(line, "request");
    else if (route === "/metrics" || route === "/health") log.debug(line, "request");
    else log.info(line, "request");
  });

  app.onError((err, c) => {
    let e: ApiError;
    if (err instanceof ApiError) e = err;
    else if (err instanceof HTTPException) {
      if (err.status === 400) e = badRequest("Malformed JSON in request body.", null, "invalid_json");
      else if (err.status === 413) {
        e = new ApiError(413, "invalid_request_error", err.message, null, "body_too_large");
      } else e = new ApiError(err.status, "invalid_request_error", err.message);
    } else {
      c.get("log")?.error({ err: String(err), stack: (err as Error)?.stack }, "unhandled error");
      e = internal();
    }
    return errorResponse(c, e);
  });

  app.notFound((c) =>
    errorResponse(c, notFound(`Unknown route ${c.req.method} ${c.req.path}`, null, "unknown_route"))
  );

  // Body size limit for every request with a body.
  app.use(
    "*",
    bodyLimit({
      maxSize: deps.cfg.maxBodyBytes,
      onError: () => {
        throw new ApiError(
          413,
          "invalid_request_error",
          `Request body too large: the limit is ${deps.cfg.maxBodyBytes} bytes.`,
          null,
          "body_too_large",
        );
      },
    }),
  );

  // Auth, rate limit, readiness for the API proper.
  app.use("/v1/*", async (c, next) => {
    const owner = deps.keys.authenticate(c.req.header("authorization"));
    c.set("owner", owner);
    deps.limiter.take(owner);
    if (deps.state.shuttingDown && c.req.method !== "GET") {
      throw new ApiError(503, "service_unavailable", "The server is shutting down.", null, "shutting_down", {
        "retry-after": "5",
      });
    }
    await next();
  });

  registerHealth(app);
  registerModels(app);
  registerChat(app);
  registerCompletions(app);
  registerSessions(app);

  app.openAPIRegistry.registerComponent("securitySchemes", "bearer", { type: "http", scheme: "bearer" });
  app.doc31("/openapi.json", {
    openapi: "3.1.0",
    info: {
      title: "Lethe Edge",
      version: "0.1.0",
      description: "OpenAI-compatible LLM inference with Lethe KV-cache pruning and persistent sessions",
    },
    security: [{ bearer: [] }],
  });
  app.get("/docs", swaggerUI({ url: "/openapi.json" }));
  return app;
}
