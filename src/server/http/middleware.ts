/**
 * The app's middleware, one small named function each (written like Hono's own: a factory taking what the
 * middleware needs, returning `async function name(c, next)`). Order in app.ts: requestContext →
 * requestId → accessLog → httpMetrics → bodyLimit (Hono's) → on /v1/*: auth → rateLimit → drainGate.
 *
 * accessLog and httpMetrics observe a response when it ends: for an SSE stream that is when the last event
 * was sent or the client went away, not when the headers left.
 */
import type { Context, MiddlewareHandler } from "hono";
import type { AppDeps, AppEnv } from "./app.ts";
import type { Metrics } from "../metrics.ts";
import type { ApiKeys } from "./auth.ts";
import type { RateLimiter } from "./rate_limit.ts";
import { shuttingDown } from "../errors.ts";

type Middleware = MiddlewareHandler<AppEnv>;

/** Request-scoped dependencies: the app's deps, the arrival time, the anonymous owner until auth says. */
export function requestContext(deps: AppDeps): Middleware {
  return async function requestContext(c, next) {
    c.set("deps", deps);
    c.set("startedAt", performance.now());
    c.set("owner", "anonymous");
    c.set("log", deps.logger);
    await next();
  };
}

const REQUEST_ID_RE = /^[A-Za-z0-9._:\-]{1,128}$/;

/** The client's `x-request-id` (when well-formed) or a fresh UUID: echoed, and carried by the request's log. */
export function requestId(): Middleware {
  return async function requestId(c, next) {
    const given = c.req.header("x-request-id");
    const id = given && REQUEST_ID_RE.test(given) ? given : crypto.randomUUID();
    c.set("requestId", id);
    c.set("log", c.get("log").child({ reqId: id }));
    await next();
    c.header("x-request-id", id);
  };
}

/**
 * Call `done(status)` when the response has ended. A streamed (SSE) body is wrapped so that its end — the
 * last chunk read, an error, or the client cancelling — is seen; any other response has ended already.
 */
export function onResponseEnd(c: Context, done: (status: number) => void): void {
  const res = c.res;
  if (!res.body || !(res.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
    return done(res.status);
  }
  const reader = res.body.getReader();
  let ended = false;
  const end = () => {
    if (!ended) {
      ended = true;
      done(res.status);
    }
  };
  const body = new ReadableStream<Uint8Array>({
    async pull(ctrl) {
      try {
        const r = await reader.read();
        if (r.done) {
          ctrl.close();
          end();
        } else ctrl.enqueue(r.value);
      } catch (e) {
        end();
        ctrl.error(e);
      }
    },
    cancel(reason) {
      end();
      return reader.cancel(reason);
    },
  });
  c.res = new Response(body, { status: res.status, statusText: res.statusText, headers: res.headers });
}

/** The matched route's path (after `next()`), "unmatched" for the not-found handler. */
function routeOf(c: Context): string {
  const r = c.req.routePath;
  return r && r !== "/*" && r !== "*" ? r : "unmatched";
}

/** One structured log line per request, when it ends (5xx as errors; /metrics and /health at debug). */
export function accessLog(): Middleware {
  return async function accessLog(c, next) {
    await next();
    const route = routeOf(c);
    const { method, path } = c.req;
    const t0 = c.get("startedAt");
    const log = c.get("log");
    onResponseEnd(c, (status) => {
      const line = { method, path, status, ms: Math.round((performance.now() - t0) * 10) / 10 };
      if (status >= 500) log.error(line, "request");
      else if (route === "/metrics" || route === "/health") log.debug(line, "request");
      else log.info(line, "request");
    });
  };
}

/** Requests and their duration (whole stream) by route, method and status. */
export function httpMetrics(metrics: Metrics): Middleware {
  return async function httpMetrics(c, next) {
    await next();
    const route = routeOf(c);
    const method = c.req.method;
    const t0 = c.get("startedAt");
    onResponseEnd(c, (status) => {
      const labels = { route, method, status: String(status) };
      metrics.requests.inc(labels);
      metrics.requestSeconds.observe(labels, (performance.now() - t0) / 1000);
    });
  };
}

/** `Authorization: Bearer <key>` → the request's owner (unauthenticated error when keys are set and it fails). */
export function auth(keys: ApiKeys): Middleware {
  return async function auth(c, next) {
    c.set("owner", keys.authenticate(c.req.header("authorization")));
    await next();
  };
}

/** One token of the owner's bucket per request (rate_limited error with Retry-After when empty). */
export function rateLimit(limiter: RateLimiter): Middleware {
  return async function rateLimit(c, next) {
    limiter.take(c.get("owner"));
    await next();
  };
}

/** While draining for shutdown, refuse new work (anything but GET) with unavailable `shutting_down`. */
export function drainGate(state: { shuttingDown: boolean }): Middleware {
  return async function drainGate(c, next) {
    if (state.shuttingDown && c.req.method !== "GET") throw shuttingDown();
    await next();
  };
}
