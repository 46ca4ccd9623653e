// Shared by the k6 scripts (chat_stream.js, multiturn_sessions.js, mixed.js) and the Deno driver
// (loadtest/driver.ts): scenario parameters, request bodies and the check predicates; the wire format
// (headers, SSE parsing) is src/client/wire.js, which every client of the service shares. Plain ES modules
// with no k6 imports, so both runtimes load the very same definitions: a scenario run by `k6 run` and by
// `deno task load` sends the same requests and applies the same checks.
// (Written in conservative ES2017 so every k6 version's JavaScript engine runs it.)
import { headers, parseSSE } from "../../src/client/wire.js";

export { headers, parseSSE };

/** First-turn prompts (story openings); VU v, iteration i uses PROMPTS[(v + i) % length]. */
export const PROMPTS = [
  "Once upon a time",
  "One day, a little girl named Lily",
  "Tom and his dog went to the park",
  "There was a big red ball in the garden",
  "The sun was shining and the birds",
  "Sam had a small boat",
];

/** Later-turn user messages of a multi-turn session (turn t ≥ 1 uses FOLLOWUPS[(t - 1) % length]). */
export const FOLLOWUPS = [
  "Then the friends played together.",
  "But then it started to rain.",
  "The mom said they could go home.",
  "At the end of the day, they were happy.",
];

/**
 * Scenario parameters. Every run is bounded twice: `iterations` per VU (k6 executor "per-vu-iterations")
 * and `duration` (the executor's maxDuration). Thresholds use k6's syntax and metric names; the Deno driver
 * evaluates the same expressions.
 */
export const SCENARIOS = {
  chat_stream: {
    description: "N VUs doing streaming chat completions (stream_options.include_usage)",
    vus: 4,
    iterations: 8,
    duration: "60s",
    max_tokens: 32,
    temperature: 0,
    thresholds: {
      http_req_failed: ["rate<0.01"],
      checks: ["rate>0.99"],
    },
  },
  multiturn_sessions: {
    description: "each VU creates a session and runs several turns with session_id",
    vus: 4,
    iterations: 1,
    duration: "120s",
    turns: 4,
    max_tokens: 24,
    temperature: 0,
    // A resumed turn must prefill only its new message (+1 for the last sampled token of the previous
    // turn, which the cache does not hold yet): a followup is ~10 tokens, so 32 is a generous bound.
    max_prefill: 32,
    kv_policy: { name: "lethe" },
    thresholds: {
      http_req_failed: ["rate<0.01"],
      checks: ["rate>0.99"],
    },
  },
  mixed: {
    description: "streaming chat, plain completions and multi-turn sessions at once, with thresholds",
    duration: "90s",
    parts: {
      chat_stream: { vus: 2, iterations: 6, max_tokens: 32 },
      completions: { vus: 1, iterations: 6, max_tokens: 32 },
      multiturn_sessions: { vus: 1, iterations: 1, turns: 3, max_tokens: 24 },
    },
    thresholds: {
      http_req_failed: ["rate<0.01"],
      checks: ["rate>0.99"],
      http_req_duration: ["p(95)<20000"],
      ttft: ["p(95)<5000"],
    },
  },
};

/** "90s", "2m", "1500ms", "1h" or a number of seconds → milliseconds (NaN when malformed). */
export function parseDuration(d) {
  if (typeof d === "number") return d * 1000;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(String(d).trim());
  if (!m) return NaN;
  const v = parseFloat(m[1]);
  const unit = m[2] || "s";
  return unit === "ms" ? v : unit === "s" ? v * 1000 : unit === "m" ? v * 60000 : v * 3600000;
}

/**
 * The model every request names: `model` if given (MODEL / --model), else the first id of `GET /v1/models`
 * (`modelsBody`: that response's body), so the scripts run against whatever model the server serves.
 */
export function pickModel(model, modelsBody) {
  if (model) return model;
  let j = null;
  try {
    j = JSON.parse(modelsBody);
  } catch (_e) {
    j = null;
  }
  const id = j && j.data && j.data[0] && j.data[0].id;
  if (typeof id !== "string") {
    throw new Error(
      "cannot tell the model id: set MODEL, or let GET /v1/models answer (got " +
        String(modelsBody).slice(0, 80) + ")",
    );
  }
  return id;
}

/** Body of a streaming chat completion. */
export function chatStreamBody(prompt, p) {
  return {
    model: p.model,
    messages: [{ role: "user", content: prompt }],
    max_tokens: p.max_tokens,
    temperature: p.temperature === undefined ? 0 : p.temperature,
    stream: true,
    stream_options: { include_usage: true },
  };
}

/** Body of a non-streaming legacy completion. */
export function completionBody(prompt, p) {
  return {
    model: p.model,
    prompt: prompt,
    max_tokens: p.max_tokens,
    temperature: p.temperature === undefined ? 0 : p.temperature,
  };
}

/** Body of one session turn (only the new message is sent; the server holds the history). */
export function sessionTurnBody(sessionId, turn, vu, p) {
  const content = turn === 0 ? PROMPTS[vu % PROMPTS.length] : FOLLOWUPS[(turn - 1) % FOLLOWUPS.length];
  return {
    model: p.model,
    session_id: sessionId,
    messages: [{ role: "user", content: content }],
    max_tokens: p.max_tokens,
    temperature: p.temperature === undefined ? 0 : p.temperature,
  };
}

function safeJson(body) {
  try {
    return JSON.parse(body);
  } catch (_e) {
    return null;
  }
}

/**
 * The checks, by name. Each takes a response-like `{status, headers (lower-case keys), body}` plus context
 * and returns a boolean. k6 passes them to `check()`; the driver counts them the same way.
 */
export const CHAT_STREAM_CHECKS = {
  "status is 200": (r) => r.status === 200,
  "content-type is text/event-stream": (r) =>
    String(r.headers["content-type"] || "").indexOf("text/event-stream") === 0,
  "stream ends with [DONE]": (r) => parseSSE(r.body).done,
  "no error event": (r) => parseSSE(r.body).error === null,
  "generated text": (r) => parseSSE(r.body).text.length > 0,
  "usage reported": (r) => {
    const u = parseSSE(r.body).usage;
    return !!u && u.completion_tokens > 0 && u.prompt_tokens > 0;
  },
};

export const COMPLETION_CHECKS = {
  "status is 200": (r) => r.status === 200,
  "completion has text": (r) => {
    const j = safeJson(r.body);
    return !!j && !!j.choices && typeof j.choices[0].text === "string" && j.choices[0].text.length > 0;
  },
};

export const SESSION_CREATE_CHECKS = {
  "session created": (r) => {
    const j = safeJson(r.body);
    return r.status === 201 && !!j && typeof j.id === "string";
  },
};

/**
 * Checks of session turn `turn` (0-based); `prev` is the previous turn's usage (null on the first turn).
 * - cached_tokens grows: turn 0 reuses nothing; a later turn reuses at least the whole previous context
 *   except its last sampled token (not yet in the cache when the turn ended).
 * - prefill stays small: a later turn prefills only its new message (prompt_tokens - cached_tokens).
 */
export function sessionTurnChecks(turn, prev, maxPrefill) {
  return {
    "turn status is 200": (r) => r.status === 200,
    "cached_tokens grows": (r) => {
      const u = usageOf(r);
      if (!u) return false;
      const cached = u.prompt_tokens_details.cached_tokens;
      if (turn === 0 || !prev) return cached === 0;
      return cached > prev.prompt_tokens_details.cached_tokens && cached >= prev.total_tokens - 1;
    },
    "prefill stays small": (r) => {
      const u = usageOf(r);
      if (!u) return false;
      if (turn === 0) return true;
      return u.prompt_tokens - u.prompt_tokens_details.cached_tokens <= maxPrefill;
    },
  };
}

export const SESSION_DELETE_CHECKS = {
  "session deleted": (r) => r.status === 200,
};

/** `{status, headers (lower-case keys), body}` from any response with status/headers/body fields. */
export function responseView(status, hdrs, body) {
  const h = {};
  const keys = Object.keys(hdrs || {});
  for (let i = 0; i < keys.length; i++) h[keys[i].toLowerCase()] = hdrs[keys[i]];
  return { status: status, headers: h, body: body === null || body === undefined ? "" : String(body) };
}

/** Usage of a JSON (non-streaming) response, or null. */
export function usageOf(r) {
  const j = safeJson(r.body);
  return j && j.usage && j.usage.prompt_tokens_details ? j.usage : null;
}

/** The session id of a POST /v1/sessions response, or null. */
export function sessionIdOf(r) {
  const j = safeJson(r.body);
  return j && typeof j.id === "string" ? j.id : null;
}
