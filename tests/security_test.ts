// deno-lint-ignore-file no-explicit-any
/**
 * Security, against real servers on loopback: one API key's sessions are invisible to another on every
 * endpoint (and indistinguishable from ids that do not exist); session ids cannot inject paths or store
 * keys; oversize and deeply nested bodies are refused cleanly; abusive headers do not authenticate or take
 * the server down; request smuggling attempts over raw TCP (conflicting or malformed framing) are refused
 * and never run a hidden request; API keys never reach the logs, and prompt text never reaches the logs,
 * the metrics or an error body.
 */
import assert from "node:assert/strict";
import { get, post, start } from "./support/server_harness.ts";
import { startServerProcess } from "../src/client/server_process.ts";
import { Client } from "../src/client/http.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };
const M = "stories260K";
const enc = new TextEncoder(), dec = new TextDecoder();

function assertErrorBody(r: { status: number; json: any; text: string }, status: number, code?: string) {
  assert.equal(r.status, status, r.text);
  assert.deepEqual(Object.keys(r.json?.error ?? {}).sort(), ["code", "message", "param", "type"], r.text);
  if (code) assert.equal(r.json.error.code, code, r.text);
}

/** Send raw bytes on a new connection; the whole reply (until the server closes or goes quiet). */
async function raw(port: number, request: string, quietMs = 700): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(enc.encode(request));
    let out = "";
    const buf = new Uint8Array(65536);
    for (;;) {
      const timer = setTimeout(() => conn.close(), quietMs);
      let n: number | null = null;
      try {
        n = await conn.read(buf);
      } catch {
        n = null;
      } finally {
        clearTimeout(timer);
      }
      if (n === null) return out;
      out += dec.decode(buf.subarray(0, n));
    }
  } finally {
    try {
      conn.close();
    } catch { /* closed */ }
  }
}

const statusLines = (reply: string) => [...reply.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));

Deno.test(
  "API keys: another key's session is invisible on every endpoint, like an id that does not exist",
  opts,
  async () => {
    const k1 = "key-one-0123456789", k2 = "key-two-9876543210";
    const srv = await start({ apiKeys: [k1, k2] });
    const u = srv.url;
    const h1 = { authorization: `Bearer ${k1}` }, h2 = { authorization: `Bearer ${k2}` };
    try {
      const id = (await post(u, "/v1/sessions", {}, h1)).json.id;
      const t1 = await post(
        u,
        "/v1/completions",
        { model: M, prompt: "Once", max_tokens: 4, session_id: id },
        h1,
      );
      assert.equal(t1.status, 200, t1.text);
      const ghost = "sess_" + "Z".repeat(24);
      const attempts = (sid: string, h: Record<string, string>) => [
        get(u, `/v1/sessions/${sid}`, h),
        get(u, `/v1/sessions/${sid}`, h, "DELETE"),
        post(u, "/v1/completions", { model: M, prompt: "x", max_tokens: 2, session_id: sid }, h),
        post(
          u,
          "/v1/completions",
          { model: M, prompt: "x", max_tokens: 2, session_id: sid, stream: true },
          h,
        ),
        post(u, "/v1/chat/completions", {
          model: M,
          messages: [{ role: "user", content: "x" }],
          session_id: sid,
        }, h),
        post(u, "/v1/chat/completions", {
          model: M,
          messages: [{ role: "user", content: "x" }],
          session_id: sid,
          stream: true,
        }, h),
      ];
      const theirs = await Promise.all(attempts(id, h2));
      const none = await Promise.all(attempts(ghost, h2));
      for (let i = 0; i < theirs.length; i++) {
        assertErrorBody(theirs[i], 404, "session_not_found");
        // The same answer as for an id that does not exist: no existence oracle.
        assert.equal(theirs[i].text.replaceAll(id, "ID"), none[i].text.replaceAll(ghost, "ID"));
      }
      // Without a key, every /v1 endpoint is 401, whatever the session.
      for (const r of await Promise.all(attempts(id, {}))) assertErrorBody(r, 401, "invalid_api_key");
      // The owner still has it, untouched.
      const info = await get(u, `/v1/sessions/${id}`, h1);
      assert.equal(info.json.turns, 1);
      assert.equal(info.json.tokens, t1.json.usage.total_tokens);
    } finally {
      await srv.shutdown();
    }
  },
);

Deno.test("session ids cannot inject paths or store keys", opts, async () => {
  const srv = await start();
  const u = srv.url;
  try {
    const id = (await post(u, "/v1/sessions", {})).json.id;
    const bad = [
      "../" + id,
      `${id}/../../v1/models`,
      `${id}%2F..%2F..%2Fhealth`,
      "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
      `sess_${"A".repeat(23)}%00`,
      `sess_{${"A".repeat(22)}}`,
      `sess_${"A".repeat(20)}:lea`,
      `${id}%0d%0aX-Injected:%201`,
      `\u0455ess_${"A".repeat(24)}`, // Cyrillic dze for the s
      "x".repeat(5000),
    ];
    for (const b of bad) {
      const r = await get(u, `/v1/sessions/${b}`);
      assert.ok([400, 404].includes(r.status), `${b.slice(0, 40)}: ${r.status} ${r.text.slice(0, 200)}`);
      assert.ok(r.json?.error, r.text);
      assert.equal(r.headers.get("x-injected"), null);
      for (const body of [{ model: M, prompt: "x", session_id: decodeURIComponent(b) }]) {
        const p = await post(u, "/v1/completions", body);
        assertErrorBody(p, 400);
      }
    }
    assert.equal((await get(u, `/v1/sessions/${id}`)).status, 200, "the real session is untouched");
  } finally {
    await srv.shutdown();
  }
});

Deno.test(
  "oversize and deeply nested JSON bodies are refused cleanly; the server carries on",
  opts,
  async () => {
    const srv = await start({ maxBodyBytes: 256 * 1024 });
    const u = srv.url;
    try {
      const big = JSON.stringify({ model: M, prompt: "x".repeat(300 * 1024) });
      assertErrorBody(await post(u, "/v1/completions", big), 413, "body_too_large");
      // The same without a Content-Length (chunked): counted as it streams.
      const chunked = await fetch(u + "/v1/completions", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: new Blob([big]).stream(),
      });
      assert.equal(chunked.status, 413);
      await chunked.body?.cancel();
      for (
        const body of [
          `{"model":"${M}","messages":${"[".repeat(60_000)}${"]".repeat(60_000)}}`,
          `{"model":"${M}","prompt":"x","kv_policy":{"name":"lethe","x":${'{"a":'.repeat(10_000)}1${
            "}".repeat(10_000)
          }}}`,
          `{"model":"${M}","prompt":"x","stop":${"[".repeat(30_000)}`,
          `{"model":"${M}","prompt":"x","max_tokens":1e999}`,
          `{"model":"${M}","prompt":"x","seed":123456789012345678901234567890}`,
          `{"model":"${M}","prompt":"\\ud800\\udfff\\u0000"}`.replace("}", ',"max_tokens":2}'),
        ]
      ) {
        const r = await post(u, "/v1/completions", body);
        if (r.status === 200) continue; // the odd unicode prompt is valid input
        assertErrorBody(r, 400);
      }
      const nested = await post(
        u,
        "/v1/sessions",
        `{"kv_policy":${"[".repeat(20_000)}${"]".repeat(20_000)}}`,
      );
      assertErrorBody(nested, 400);
      assert.equal((await get(u, "/health")).status, 200);
    } finally {
      await srv.shutdown();
    }
  },
);

Deno.test(
  "header abuse: odd Authorization values never authenticate; huge or many headers do not hurt",
  opts,
  async () => {
    const key = "key-abcdef-123456";
    const srv = await start({ apiKeys: [key] });
    const u = srv.url;
    try {
      for (
        const a of [
          "Bearer",
          `Bearer ${key} extra`,
          `Basic ${btoa(`user:${key}`)}`,
          `Bearer ${key}\u0000`,
          `Token ${key}`,
          `Bearer ${key.toUpperCase()}`,
          `Bearer ${key}, Bearer ${key}`,
          `Bearer  ${"k".repeat(8000)}`,
        ]
      ) {
        let r;
        try {
          r = await get(u, "/v1/models", { authorization: a });
        } catch {
          continue; // a header value fetch itself refuses to send
        }
        assertErrorBody(r, 401, "invalid_api_key");
        assert.ok(!r.text.includes(key), "the key is not echoed");
      }
      assert.equal((await get(u, "/v1/models", { authorization: `bearer ${key}` })).status, 200);
      // Two Authorization headers (one right, one wrong) on the wire: not authenticated.
      const two = await raw(
        srv.port,
        `GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer wrong\r\nauthorization: Bearer ${key}\r\nconnection: close\r\n\r\n`,
      );
      assert.deepEqual(statusLines(two), [401]);
      // A request id that is not a plain token is replaced, not echoed.
      const rid = await get(u, "/health", { "x-request-id": "<script>alert(1)</script>" });
      assert.match(rid.headers.get("x-request-id")!, /^[0-9a-f-]{36}$/);
      // A 200 KB header and 3000 headers: refused at the HTTP layer; the server keeps serving.
      const huge = await raw(
        srv.port,
        `GET /health HTTP/1.1\r\nhost: x\r\nx-big: ${"a".repeat(200_000)}\r\n\r\n`,
      );
      assert.ok(statusLines(huge).every((s) => s >= 400), huge.slice(0, 80));
      const many = await raw(
        srv.port,
        `GET /health HTTP/1.1\r\nhost: x\r\n${
          Array.from({ length: 3000 }, (_, i) => `x-h${i}: 1\r\n`).join("")
        }\r\n`,
      );
      assert.ok(statusLines(many).every((s) => s >= 400), many.slice(0, 80));
      assert.equal((await get(u, "/health")).status, 200);
    } finally {
      await srv.shutdown();
    }
  },
);

Deno.test(
  "request smuggling over raw TCP: conflicting or malformed framing is refused, hidden requests never run",
  opts,
  async () => {
    const srv = await start();
    const u = srv.url;
    try {
      const id = (await post(u, "/v1/sessions", {})).json.id;
      const hidden = `DELETE /v1/sessions/${id} HTTP/1.1\r\nhost: x\r\n\r\n`;
      const body = `{"model":"${M}","prompt":"x","max_tokens":1}`;
      const head = (extra: string) =>
        `POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n${extra}`;
      const cases: [string, string][] = [
        // CL.TE: a front end that trusts Content-Length would forward the hidden request as body.
        [
          "CL.TE",
          head(`content-length: ${body.length}\r\ntransfer-encoding: chunked\r\n\r\n`) + `0\r\n\r\n${hidden}`,
        ],
        // TE.CL
        [
          "TE.CL",
          head(`transfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n`) +
          `${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n${hidden}`,
        ],
        [
          "two Content-Lengths",
          head(`content-length: ${body.length}\r\ncontent-length: 5\r\n\r\n`) + body + hidden,
        ],
        [
          "obfuscated TE",
          head(`transfer-encoding: xchunked\r\ncontent-length: ${body.length}\r\n\r\n`) + body + hidden,
        ],
        ["TE list", head(`transfer-encoding: chunked, identity\r\n\r\n`) + `0\r\n\r\n${hidden}`],
        ["obs-fold TE", head(`transfer-encoding:\r\n chunked\r\n\r\n`) + `0\r\n\r\n${hidden}`],
        [
          "bad chunk size",
          head(`transfer-encoding: chunked\r\n\r\n`) + `fffffffffffffffffff\r\n${body}\r\n0\r\n\r\n${hidden}`,
        ],
        ["NUL in request line", `GET /health\u0000 HTTP/1.1\r\nhost: x\r\n\r\n${hidden}`],
      ];
      const seen: Record<string, number[]> = {};
      for (const [name, req] of cases) {
        const reply = await raw(srv.port, req);
        const statuses = statusLines(reply);
        seen[name] = statuses;
        // Refused outright, or (TE.CL: a valid chunked request, then a pipelined second one) answered as framed.
        if (name === "TE.CL") assert.ok(statuses[0] === 200 || statuses[0] >= 400, `${name}: ${statuses}`);
        // (a connection closed without any answer is a refusal too)
        else assert.ok(statuses.length === 0 || statuses[0] >= 400, `${name}: ${JSON.stringify(statuses)}`);
        if (name !== "TE.CL") {
          assert.ok(!statuses.slice(1).includes(200), `${name}: the hidden request ran`);
          assert.equal((await get(u, `/v1/sessions/${id}`)).status, 200, `${name}: the session was deleted`);
        }
      }
      assert.equal((await get(u, "/health")).status, 200);
      console.log(`security smuggling: status lines per attempt ${JSON.stringify(seen)}`);
    } finally {
      await srv.shutdown();
    }
  },
);

Deno.test(
  "keys never reach the logs; prompt text never reaches the logs, the metrics or an error body",
  opts,
  async () => {
    const key = "sk-lethe-SECRETKEY-0042", wrong = "sk-lethe-WRONGKEY-0043";
    const marker = "ZQXJ-PROMPT-MARKER";
    const dir = await Deno.makeTempDir({ prefix: "lethe-leak-" });
    const srv = await startServerProcess({
      args: ["--backend", "ts", "--store", "memory:", "--log-level", "trace", "--max-prompt-tokens", "64"],
      env: { LETHE_API_KEYS: `${key},another-key-xyz` },
      logPath: `${dir}/server.log`,
    });
    try {
      const c = new Client(srv.url, { apiKey: key });
      const bodies: string[] = [];
      const send = async (path: string, body: unknown, headers: Record<string, string> = {}) => {
        const r = await c.post(path, body, { headers });
        bodies.push(r.text);
        return r;
      };
      const id = (await send("/v1/sessions", {})).json!.id;
      assert.equal(
        (await send("/v1/completions", { model: M, prompt: `${marker} once`, max_tokens: 4, session_id: id }))
          .status,
        200,
      );
      assert.equal(
        (await send("/v1/chat/completions", {
          model: M,
          messages: [{ role: "user", content: `${marker} hi` }],
          max_tokens: 4,
          stream: true,
        }, {})).status,
        200,
      );
      // Errors caused by prompts carrying the marker.
      await send("/v1/completions", { model: M, prompt: `${marker} `.repeat(200) }); // too many prompt tokens
      await send("/v1/chat/completions", { model: M, messages: [{ role: marker, content: marker }] });
      await send("/v1/chat/completions", {
        model: M,
        messages: [{ role: "user", content: [{ type: marker, text: marker }] }],
      });
      await send("/v1/completions", { model: M, prompt: marker, max_tokens: 5000 });
      await send("/v1/completions", { model: M, prompt: marker, stop: [marker, 1] });
      await send("/v1/completions", `{"model":"${M}","prompt":"${marker}`); // malformed JSON
      // Keys: a wrong one, a malformed header, the key in the query string.
      for (const auth of [`Bearer ${wrong}`, `Token ${key}`, `${key}`]) {
        const r = await fetch(`${srv.url}/v1/models`, { headers: { authorization: auth } });
        bodies.push(await r.text());
      }
      bodies.push(await (await fetch(`${srv.url}/v1/models?api_key=${key}`)).text());
      const metrics = await (await fetch(`${srv.url}/metrics`)).text();
      await srv.stop();
      const log = await Deno.readTextFile(`${dir}/server.log`);
      assert.ok(log.includes('"msg":"request"'), "the log has request lines");
      for (const secret of [key, wrong, "another-key-xyz"]) {
        assert.ok(!log.includes(secret), `a key in the log: ${secret}`);
        assert.ok(!metrics.includes(secret));
        assert.ok(!bodies.some((b) => b.includes(secret)), `a key in a response: ${secret}`);
      }
      assert.ok(!log.includes(marker), "prompt text in the log");
      assert.ok(!metrics.includes(marker), "prompt text in the metrics");
      const errors = bodies.filter((b) => b.startsWith('{"error"'));
      assert.ok(errors.length >= 6, `${errors.length} error bodies`);
      for (const e of errors) assert.ok(!e.includes(marker), `prompt text in an error: ${e.slice(0, 200)}`);
    } finally {
      await srv.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
);
