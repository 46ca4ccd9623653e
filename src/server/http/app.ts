/**
 * The Hono app, built from injected dependencies (model, backend, scheduler, sessions, …) so tests and
 * `main.ts` wire it the same way: the middleware chain (middleware.ts), the routes (routes/), the one
 * error mapping (errors.ts: every error becomes the OpenAI shape, never a stack trace), `/openapi.json` and
 * the swagger-ui page at `/docs`.
 */
import { OpenAPIHono } from "@hono/zod-openapi";
import { swaggerUI } from "@hono/swagger-ui";
import { bodyLimit } from "hono/body-limit";
import type { Backend } from "../../engine/backend.ts";
import type { Scheduler } from "../../engine/scheduler.ts";
import type { LoadedModel } from "../../model/loader.ts";
import type { ServerConfig } from "../config.ts";
import { notFound, ServiceError } from "../errors.ts";
import type { Inference } from "../inference.ts";
import type { ChatRenderer } from "../chat_prompt.ts";
import type { Logger } from "../logger.ts";
import type { Metrics } from "../metrics.ts";
import type { SessionService } from "../session_service.ts";
import type { ApiKeys } from "./auth.ts";
import type { RateLimiter } from "./rate_limit.ts";
import { errorResponse, fromZodIssues, httpError } from "./errors.ts";
import {
  accessLog,
  auth,
  drainGate,
  httpMetrics,
  rateLimit,
  requestContext,
  requestId,
} from "./middleware.ts";
import { registerChat } from "../../../routes/chat.ts";
import { registerCompletions } from "../../../routes/completions.ts";
import { registerSessions } from "../../../routes/sessions.ts";
import { registerSessionKv } from "../../../routes/session_kv.ts";
import { registerPlayground } from "../../../routes/playground.ts";
import { registerModels } from "../../../routes/models.ts";
import { registerHealth } from "../../../routes/health.ts";
import { registerInspect } from "../../../routes/inspect.ts";

/** The inspection tools at the root (llama.cpp's paths), guarded like `/v1/*`. */
const INSPECT_PATHS = ["/tokenize", "/detokenize", "/apply-template"];

export interface AppDeps {
  cfg: ServerConfig;
  model: LoadedModel;
  backend: Backend;
  backendReason: string;
  scheduler: Scheduler;
  sessions: SessionService;
  inference: Inference;
  /** The model's chat template and tokenizer (chat prompts, `/apply-template`). */
  renderer: ChatRenderer;
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

export function createApp(deps: AppDeps): OpenAPIHono<AppEnv> {
  const app = new OpenAPIHono<AppEnv>({
    defaultHook: (result) => {
      if (!result.success) throw fromZodIssues(result.error.issues, result.target);
    },
  });

  app.use("*", requestContext(deps), requestId(), accessLog(), httpMetrics(deps.metrics));
  app.use(
    "*",
    bodyLimit({
      maxSize: deps.cfg.maxBodyBytes,
      onError: () => {
        throw new ServiceError(
          "too_large",
          `Request body too large: the limit is ${deps.cfg.maxBodyBytes} bytes.`,
          null,
          "body_too_large",
        );
      },
    }),
  );
  for (const path of ["/v1/*", ...INSPECT_PATHS]) {
    app.use(path, auth(deps.keys), rateLimit(deps.limiter), drainGate(deps.state));
  }

  app.onError((err, c) => {
    if (httpError(err).unknown) {
      c.get("log")?.error({ err: String(err), stack: (err as Error)?.stack }, "unhandled error");
    }
    return errorResponse(err, { "x-request-id": c.get("requestId") ?? "" });
  });
  app.notFound((c) =>
    errorResponse(notFound(`Unknown route ${c.req.method} ${c.req.path}`, null, "unknown_route"), {
      "x-request-id": c.get("requestId") ?? "",
    })
  );

  registerHealth(app);
  registerModels(app);
  registerChat(app);
  registerCompletions(app);
  registerSessions(app);
  registerInspect(app);
  registerSessionKv(app);
  registerPlayground(app);

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
