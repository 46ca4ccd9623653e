/**
 * The app's middleware one by one (src/server/http/middleware.ts), each on a tiny Hono app with the same
 * error mapping as the real one, and the mapping itself (src/server/http/errors.ts).
 */
import assert from "node:assert/strict";
import { Hono, type MiddlewareHandler } from "hono";
import type { AppDeps, AppEnv } from "../src/server/http/app.ts";
import {
  accessLog,
  auth,
  drainGate,
  httpMetrics,
  rateLimit,
  requestContext,
  requestId,
} from "../src/server/http/middleware.ts";
import { errorResponse, HTTP_OF_KIND, httpError } from "../src/server/http/errors.ts";
import { type ErrorKind, ServiceError } from "../src/server/errors.ts";
import { createLogger } from "../src/server/logger.ts";
import { Metrics } from "../src/server/metrics.ts";
import { ApiKeys, hashKey } from "../src/server/http/auth.ts";
import { RateLimiter } from "../src/server/http/rate_limit.ts";

/** A logger whose JSON lines land in `lines`. */
function capture(level = "debug") {
  const lines: Record<string, unknown>[] = [];
  const logger = createLogger(level, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { logger, lines };
}

function app(logger = capture().logger, ...mw: MiddlewareHandler<AppEnv>[]) {
  const a = new Hono<AppEnv>();
  a.use("*", requestContext({ logger } as unknown as AppDeps), ...mw);
  a.onError((err) => errorResponse(err));
  return a;
}

/** An SSE body of `n` events, `gapMs` apart. */
function slowSSE(n: number, gapMs: number): Response {
  let i = 0;
  const enc = new TextEncoder();
  return new Response(
    new ReadableStream<Uint8Array>({
      async pull(ctrl) {
        await new Promise((r) => setTimeout(r, gapMs));
        ctrl.enqueue(enc.encode(`data: ${i}\n\n`));
        if (++i === n) ctrl.close();
      },
    }),
    { headers: { "content-type": "text/event-stream" } },
  );
}

async function errorOf(res: Response) {
  return { status: res.status, headers: res.headers, body: await res.json() };
}

Deno.test("requestId: echoes a well-formed x-request-id, replaces a malformed one; the request's log carries it", async () => {
  const { logger, lines } = capture();
  const a = app(logger, requestId());
  a.get("/x", (c) => {
    c.get("log").info("inside");
    return c.text(c.get("requestId"));
  });
  const ok = await a.request("/x", { headers: { "x-request-id": "req-1.2:3" } });
  assert.equal(ok.headers.get("x-request-id"), "req-1.2:3");
  assert.equal(await ok.text(), "req-1.2:3");
  assert.equal(lines.at(-1)!.reqId, "req-1.2:3");
  for (const bad of ["a b", "x".repeat(129), "<script>"]) {
    const r = await a.request("/x", { headers: { "x-request-id": bad } });
    const id = await r.text();
    assert.match(id, /^[0-9a-f-]{36}$/, bad);
    assert.equal(r.headers.get("x-request-id"), id);
  }
});

Deno.test("accessLog and httpMetrics observe an SSE response when its stream ends (or is cancelled), not at its headers", async () => {
  const { logger, lines } = capture();
  const metrics = new Metrics();
  const a = app(logger, requestId(), accessLog(), httpMetrics(metrics));
  a.get("/sse", () => slowSSE(4, 80));
  a.get("/json", (c) => c.json({ ok: true }));
  a.get("/health", (c) => c.json({ ok: true }));

  const t0 = performance.now();
  const res = await a.request("/sse");
  const headersAt = performance.now() - t0;
  assert.equal(lines.filter((l) => l.msg === "request").length, 0, "nothing logged at the headers");
  assert.equal(await res.text(), "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n");
  const line = lines.find((l) => l.msg === "request")!;
  assert.deepEqual([line.method, line.path, line.status, line.level], ["GET", "/sse", 200, 30]);
  assert.ok((line.ms as number) >= 4 * 80 - 10 && (line.ms as number) > headersAt, `logged ${line.ms} ms`);
  const sum = async (route: string) =>
    (await metrics.requestSeconds.get()).values.find((v) =>
      v.metricName?.endsWith("_sum") && v.labels.route === route
    )?.value;
  assert.ok((await sum("/sse"))! >= 0.31, `observed ${await sum("/sse")} s`);
  const count = (await metrics.requests.get()).values.find((v) => v.labels.route === "/sse");
  assert.deepEqual(count?.labels, { route: "/sse", method: "GET", status: "200" });
  assert.equal(count?.value, 1);

  // A client that goes away after the first event: observed when it cancels.
  const r2 = await a.request("/sse");
  const reader = r2.body!.getReader();
  await reader.read();
  await reader.cancel();
  assert.equal(lines.filter((l) => l.msg === "request").length, 2);
  assert.equal((await metrics.requests.get()).values.find((v) => v.labels.route === "/sse")?.value, 2);

  // Plain responses are observed at once; /health logs at debug.
  await (await a.request("/json")).text();
  await (await a.request("/health")).text();
  const [j, h] = lines.filter((l) => l.msg === "request").slice(2);
  assert.deepEqual([j.path, j.level, h.path, h.level], ["/json", 30, "/health", 20]);
  const un = await a.request("/nope");
  assert.equal(un.status, 404);
  assert.ok((await metrics.requests.get()).values.some((v) => v.labels.route === "unmatched"));
});

Deno.test("auth: no key configured = anonymous; with keys, 401 unless the Bearer key matches; owner = key hash", async () => {
  const open = app(undefined, auth(new ApiKeys([])));
  open.get("/v1/me", (c) => c.text(c.get("owner")));
  assert.equal(await (await open.request("/v1/me")).text(), "anonymous");

  const a = app(undefined, auth(new ApiKeys(["key-one-123456"])));
  a.get("/v1/me", (c) => c.text(c.get("owner")));
  for (
    const [h, msg] of [
      [undefined, /Missing API key/],
      ["Basic abc", /Malformed Authorization/],
      ["Bearer wrong-key-000", /Incorrect API key/],
    ] as const
  ) {
    const e = await errorOf(await a.request("/v1/me", { headers: h ? { authorization: h } : {} }));
    assert.equal(e.status, 401);
    assert.deepEqual(Object.keys(e.body.error).sort(), ["code", "message", "param", "type"]);
    assert.equal(e.body.error.type, "authentication_error");
    assert.equal(e.body.error.code, "invalid_api_key");
    assert.match(e.body.error.message, msg);
  }
  const ok = await a.request("/v1/me", { headers: { authorization: "Bearer key-one-123456" } });
  assert.equal(await ok.text(), hashKey("key-one-123456"));
});

Deno.test("rateLimit: a bucket per owner; empty = 429 rate_limit_exceeded with Retry-After", async () => {
  let now = 0;
  const limiter = new RateLimiter(0.5, 2, () => now);
  const a = app(undefined, rateLimit(limiter));
  a.get("/v1/x", (c) => c.text("ok"));
  assert.equal((await a.request("/v1/x")).status, 200);
  assert.equal((await a.request("/v1/x")).status, 200);
  const e = await errorOf(await a.request("/v1/x"));
  assert.equal(e.status, 429);
  assert.deepEqual(e.body.error, {
    message: "Rate limit exceeded for this API key; retry later.",
    type: "rate_limit_error",
    param: null,
    code: "rate_limit_exceeded",
  });
  assert.equal(e.headers.get("retry-after"), "2");
  now = 2000; // one token back at 0.5/s
  assert.equal((await a.request("/v1/x")).status, 200);
});

Deno.test("drainGate: while draining, new work gets 503 shutting_down with Retry-After 5; GETs still pass", async () => {
  const state = { shuttingDown: false };
  const a = app(undefined, drainGate(state));
  a.post("/v1/x", (c) => c.text("done"));
  a.get("/v1/x", (c) => c.text("read"));
  assert.equal(await (await a.request("/v1/x", { method: "POST" })).text(), "done");
  state.shuttingDown = true;
  const e = await errorOf(await a.request("/v1/x", { method: "POST" }));
  assert.equal(e.status, 503);
  assert.deepEqual(e.body.error, {
    message: "The server is shutting down.",
    type: "service_unavailable",
    param: null,
    code: "shutting_down",
  });
  assert.equal(e.headers.get("retry-after"), "5");
  assert.equal(await (await a.request("/v1/x")).text(), "read");
});

Deno.test("errors: each kind has its status and OpenAI type; unknown errors are a bare 500", () => {
  const expected: Record<ErrorKind, [number, string]> = {
    invalid: [400, "invalid_request_error"],
    unauthenticated: [401, "authentication_error"],
    not_found: [404, "not_found_error"],
    conflict: [409, "conflict_error"],
    too_large: [413, "invalid_request_error"],
    rate_limited: [429, "rate_limit_error"],
    cancelled: [499, "invalid_request_error"],
    internal: [500, "server_error"],
    unavailable: [503, "service_unavailable"],
    timeout: [504, "timeout_error"],
  };
  for (const [kind, [status, type]] of Object.entries(expected)) {
    assert.deepEqual(HTTP_OF_KIND[kind as ErrorKind], { status, type }, kind);
    const h = httpError(
      new ServiceError(kind as ErrorKind, "m", "p", "c", kind === "rate_limited" ? 0.2 : undefined),
    );
    assert.equal(h.status, status);
    assert.deepEqual(h.body, { error: { message: "m", type, param: "p", code: "c" } });
    assert.deepEqual(h.headers, kind === "rate_limited" ? { "retry-after": "1" } : {});
  }
  const u = httpError(new TypeError("secret detail"));
  assert.equal(u.unknown, true);
  assert.equal(u.status, 500);
  assert.deepEqual(u.body, {
    error: { message: "internal server error", type: "server_error", param: null, code: "internal_error" },
  });
});
