/**
 * Slow and vanishing streaming clients against a server process (raw TCP on loopback): clients that stop
 * reading mid-stream and clients that drop the connection do not stall the batch for the others. Four
 * well-behaved streams are measured (gaps between their SSE events) three times: alone, beside eight
 * well-behaved extra streams (the same batch size), and beside four clients that stop reading and four that
 * vanish. The well-behaved streams finish while the slow ones still hold their connections, and once the
 * misbehaving clients are gone the server is idle at once — their sequences were cancelled, not left to
 * decode 1,900 tokens nobody reads.
 */
import assert from "node:assert/strict";
import { quantile } from "../src/client/stats.ts";
import { startServerProcess } from "../src/client/server_process.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const enc = new TextEncoder(), dec = new TextDecoder();
const LONG = 1900;

/** A streamed completion over a raw TCP connection, read until its first generated text arrives. */
async function rawStream(port: number, model: string, maxTokens: number): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const body = JSON.stringify({ model, prompt: "Once upon a time", max_tokens: maxTokens, stream: true });
  await conn.write(enc.encode(
    `POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n` +
      `content-length: ${enc.encode(body).length}\r\n\r\n${body}`,
  ));
  const buf = new Uint8Array(4096);
  let seen = "";
  while (!/"text":"[^"]/.test(seen)) {
    const n = await conn.read(buf);
    assert.ok(n !== null, "closed before any text");
    seen += dec.decode(buf.subarray(0, n));
  }
  assert.match(seen, /^HTTP\/1\.1 200/);
  return conn;
}

/** A well-behaved stream: the gaps (ms) between its events carrying text. */
async function measured(url: string, model: string, maxTokens: number): Promise<number[]> {
  const res = await fetch(url + "/v1/completions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, prompt: "Once upon a time", max_tokens: maxTokens, stream: true }),
  });
  assert.equal(res.status, 200);
  const gaps: number[] = [];
  let last = 0, pending = "", done = false;
  for await (const chunk of res.body!) {
    pending += dec.decode(chunk, { stream: true });
    const events = pending.split("\n\n");
    pending = events.pop()!;
    for (const e of events) {
      if (e === "data: [DONE]") done = true;
      else if (/"text":"[^"]/.test(e)) {
        const now = performance.now();
        if (last) gaps.push(now - last);
        last = now;
      } else assert.doesNotMatch(e, /"error"/);
    }
  }
  assert.ok(done, "ended with [DONE]");
  return gaps;
}

const summary = (gaps: number[]) => ({
  p50: quantile(gaps, 0.5),
  p95: quantile(gaps, 0.95),
  max: Math.max(...gaps),
});
const fmt = (s: ReturnType<typeof summary>) =>
  `p50 ${s.p50.toFixed(2)} / p95 ${s.p95.toFixed(2)} / max ${s.max.toFixed(1)} ms`;

async function activeSequences(url: string): Promise<number> {
  return (await (await fetch(url + "/ready")).json()).active;
}

Deno.test({
  name: "slow and vanishing streaming clients do not stall the batch for the others",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const srv = await startServerProcess({
      args: ["--backend", "ts", "--store", "memory:", "--log-level", "warn"],
    });
    const slow: Deno.TcpConn[] = [];
    try {
      const model = (await (await fetch(srv.url + "/v1/models")).json()).data[0].id;
      const N = 4, MAX = 96;
      const normal = async () =>
        (await Promise.all(Array.from({ length: N }, () => measured(srv.url, model, MAX))))
          .flat();

      const alone = summary(await normal());
      const extras = Array.from({ length: 8 }, () => measured(srv.url, model, MAX));
      const beside = summary(await normal());
      await Promise.all(extras);
      assert.equal(await activeSequences(srv.url), 0);

      // Four clients that read their first text, then stop reading; four that drop the connection.
      for (let i = 0; i < 4; i++) slow.push(await rawStream(srv.port, model, LONG));
      const vanishing = await Promise.all(Array.from({ length: 4 }, () => rawStream(srv.port, model, LONG)));
      const running = normal();
      for (const c of vanishing) {
        await sleep(50);
        c.close();
      }
      const misbehaving = summary(await running);
      // The well-behaved streams are done while the slow clients still hold their connections unread.
      for (const c of slow) c.close();
      slow.length = 0;
      const t0 = performance.now();
      while (await activeSequences(srv.url) > 0) {
        assert.ok(performance.now() - t0 < 3000, "the misbehaving clients' sequences keep decoding");
        await sleep(50);
      }
      assert.ok(misbehaving.max < 2000, `a well-behaved stream stalled for ${misbehaving.max} ms`);
      console.log(
        `fault slow clients: inter-token gaps of ${N} streams alone ${fmt(alone)}; beside 8 well-behaved ` +
          `streams ${fmt(beside)}; beside 4 stalled + 4 vanished clients ${fmt(misbehaving)}`,
      );
    } finally {
      for (const c of slow) c.close();
      await srv.stop();
    }
  },
});
