/**
 * The container's healthcheck (Dockerfile HEALTHCHECK): exit 0 when the server on this host answers
 * `GET /ready` with 200 within 3 s (it answers 503 while loading or draining for shutdown), 1 otherwise.
 *   deno run --allow-net=127.0.0.1 --allow-env=PORT scripts/healthcheck.ts
 */
const port = Deno.env.get("PORT") ?? "8080";
try {
  const r = await fetch(`http://127.0.0.1:${port}/ready`, { signal: AbortSignal.timeout(3000) });
  await r.body?.cancel();
  Deno.exit(r.status === 200 ? 0 : 1);
} catch {
  Deno.exit(1);
}
