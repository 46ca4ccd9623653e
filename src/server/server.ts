/**
 * Wire a running server from a config: load the model, open the backend and the session store, start the
 * scheduler, build the app and serve it with `Deno.serve`. `shutdown()` is the graceful stop used on
 * SIGINT/SIGTERM: readiness goes 503 and new work is refused, running turns get until the deadline to finish
 * (then they are cancelled: their sessions keep the last committed turn), then the listener and store close.
 */
import { type LoadedModel, loadModel } from "../model/loader.ts";
import { openBackend } from "../engine/select.ts";
import type { Backend } from "../engine/backend.ts";
import { Scheduler } from "../engine/scheduler.ts";
import { openStore, type SessionStore } from "../session/store.ts";
import { liveKVPrecision, type ServerConfig } from "./config.ts";
import { type AppDeps, createApp } from "./http/app.ts";
import { ApiKeys } from "./http/auth.ts";
import { ChatRenderer } from "./chat_prompt.ts";
import { Inference } from "./inference.ts";
import { RateLimiter } from "./http/rate_limit.ts";
import { createLogger, type Logger } from "./logger.ts";
import { Metrics } from "./metrics.ts";
import { SessionService } from "./session_service.ts";

export interface RunningServer {
  url: string;
  port: number;
  deps: AppDeps;
  /** Graceful stop; resolves when everything is closed. */
  shutdown(reason?: string): Promise<void>;
  finished: Promise<void>;
}

export interface StartOptions {
  logger?: Logger;
  /** Reuse an already loaded model (tests start several servers). */
  model?: LoadedModel;
  backend?: { backend: Backend; reason: string };
  store?: SessionStore;
}

export async function startServer(cfg: ServerConfig, opts: StartOptions = {}): Promise<RunningServer> {
  const logger = opts.logger ?? createLogger(cfg.logLevel);
  const model = opts.model ?? await loadModel(cfg.model);
  const kvPrecision = liveKVPrecision(cfg.kvPrecision);
  const opened = opts.backend ??
    await openBackend(model, cfg.backend, { kvPrecision, parallelWork: cfg.parallelWork });
  const backend = opened.backend;
  if (backend.kvPrecision !== kvPrecision) {
    // A live cache of another precision than the stored one would make resumed turns diverge silently.
    throw new Error(
      `kv precision ${cfg.kvPrecision} needs a backend with a ${kvPrecision} KV cache; the given ${backend.name} backend keeps ${backend.kvPrecision}`,
    );
  }
  const store = opts.store ?? await openStore(cfg.store);
  const metrics = new Metrics();
  const scheduler = new Scheduler(backend, {
    maxBatch: cfg.maxBatch,
    maxQueue: cfg.queueSize,
    maxPrefillPerStep: cfg.prefillPerStep,
  }, {
    onStep: (s, batch) => metrics.decodeStepSeconds.observe({ batch: String(batch) }, s),
    onLoad: (q, a) => {
      metrics.queueDepth.set(q);
      metrics.activeSequences.set(a);
    },
  });
  const sessions = new SessionService(
    store,
    model,
    backend,
    {
      precision: cfg.kvPrecision,
      defaultPolicy: cfg.kvPolicy,
      leaseMs: cfg.leaseMs,
    },
    metrics,
    logger,
  );
  const renderer = ChatRenderer.forModel(model, cfg.chatTemplateKwargs);
  const inference = new Inference(model, backend, scheduler, sessions, renderer, {
    maxPromptTokens: Math.min(cfg.maxPromptTokens ?? model.config.contextLength, model.config.contextLength),
    defaultMaxTokens: cfg.defaultMaxTokens,
    requestTimeoutMs: cfg.requestTimeoutMs,
    prefillChunk: cfg.prefillPerStep,
  }, metrics);
  const deps: AppDeps = {
    cfg,
    model,
    backend,
    backendReason: opened.reason,
    scheduler,
    sessions,
    inference,
    renderer,
    metrics,
    logger,
    keys: new ApiKeys(cfg.apiKeys),
    limiter: new RateLimiter(cfg.rateLimitRps, cfg.rateLimitBurst),
    startedAt: Date.now(),
    state: { ready: false, shuttingDown: false },
  };
  const app = createApp(deps);
  let listening!: (a: Deno.NetAddr) => void;
  const addr = new Promise<Deno.NetAddr>((r) => (listening = r));
  const server = Deno.serve({
    port: cfg.port,
    hostname: cfg.host,
    onListen: (a) => listening(a as Deno.NetAddr),
  }, app.fetch);
  const a = await addr;
  deps.state.ready = true;
  const host = a.hostname.includes(":") ? `[${a.hostname}]` : a.hostname;
  const url = `http://${host}:${a.port}`;
  logger.info(
    {
      url,
      model: model.name,
      fingerprint: model.fingerprint.slice(0, 16),
      backend: backend.name,
      backendReason: opened.reason,
      store: store.kind,
      kvPolicy: cfg.kvPolicy,
      kvPrecision: cfg.kvPrecision,
      liveKVPrecision: backend.kvPrecision,
      auth: deps.keys.enabled,
    },
    "lethe-edge listening",
  );

  let stopping: Promise<void> | null = null;
  const shutdown = (reason = "shutdown") => {
    if (stopping) return stopping;
    stopping = (async () => {
      logger.info({ reason, active: scheduler.active, queued: scheduler.queued }, "shutting down");
      deps.state.ready = false;
      deps.state.shuttingDown = true;
      scheduler.close();
      const deadline = new Promise<"deadline">((r) =>
        setTimeout(() => r("deadline"), cfg.shutdownDeadlineMs)
      );
      const outcome = await Promise.race([scheduler.idle().then(() => "idle" as const), deadline]);
      if (outcome === "deadline") {
        logger.warn({ active: scheduler.active }, "shutdown deadline reached; cancelling running turns");
        scheduler.cancelAll();
        await scheduler.idle();
      }
      inference.watch.close(); // watchers' event streams end: they would hold the listener open
      // Let in-flight responses (commits, final SSE events) complete, then close the listener.
      await server.shutdown();
      await sessions.close(); // leases of turns that never reached the scheduler
      await store.close();
      if (!opts.backend) backend.dispose();
      logger.info("stopped");
    })();
    return stopping;
  };
  return { url, port: a.port, deps, shutdown, finished: server.finished };
}
