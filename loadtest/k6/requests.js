// k6 helpers shared by chat_stream.js, multiturn_sessions.js and mixed.js: one streaming chat, one plain
// completion, one multi-turn session, each followed by the checks of loadtest/k6/scenarios.js.
import http from "k6/http";
import { check } from "k6";
import { Counter, Trend } from "k6/metrics";
import {
  CHAT_STREAM_CHECKS,
  chatStreamBody,
  COMPLETION_CHECKS,
  completionBody,
  headers,
  parseSSE,
  pickModel,
  responseView,
  SESSION_CREATE_CHECKS,
  SESSION_DELETE_CHECKS,
  sessionIdOf,
  sessionTurnBody,
  sessionTurnChecks,
  usageOf,
} from "./scenarios.js";

export const BASE_URL = (__ENV.BASE_URL || "http://127.0.0.1:8080").replace(/\/+$/, "");
export const API_KEY = __ENV.API_KEY || __ENV.LETHE_API_KEY || "";

/**
 * k6 `setup()` (re-exported by every script): the model id the requests name — MODEL, else the first id of
 * the server's `GET /v1/models` — handed to each iteration as `data.model`.
 */
export function setup() {
  if (__ENV.MODEL) return { model: __ENV.MODEL };
  const res = http.get(`${BASE_URL}/v1/models`, { headers: headers(API_KEY), tags: { name: "models" } });
  return { model: pickModel("", res.body) };
}

// Custom metrics (created in the init context of every script importing this module).
const ttft = new Trend("ttft", true);
const tokensPerSecond = new Trend("tokens_per_second");
const generatedTokens = new Counter("generated_tokens");
const turnPrefilled = new Trend("turn_prefilled_tokens");
const turnCached = new Trend("turn_cached_tokens");

function view(res) {
  return responseView(res.status, res.headers, res.body);
}

function recordTokens(res, completionTokens) {
  generatedTokens.add(completionTokens);
  if (res.timings.duration > 0) tokensPerSecond.add(completionTokens / (res.timings.duration / 1000));
}

/** One streaming chat completion (see chat_stream.js about what `ttft` means under k6). */
export function chatStream(prompt, p) {
  const res = http.post(`${BASE_URL}/v1/chat/completions`, JSON.stringify(chatStreamBody(prompt, p)), {
    headers: headers(API_KEY),
    tags: { name: "chat_stream" },
    timeout: "120s",
  });
  const r = view(res);
  check(r, CHAT_STREAM_CHECKS);
  if (res.status === 200) {
    ttft.add(res.timings.waiting);
    const sse = parseSSE(r.body);
    if (sse.usage) recordTokens(res, sse.usage.completion_tokens);
  }
}

/** One non-streaming completion. */
export function completion(prompt, p) {
  const res = http.post(`${BASE_URL}/v1/completions`, JSON.stringify(completionBody(prompt, p)), {
    headers: headers(API_KEY),
    tags: { name: "completions" },
    timeout: "120s",
  });
  const r = view(res);
  check(r, COMPLETION_CHECKS);
  const u = usageOf(r);
  if (u) recordTokens(res, u.completion_tokens);
}

/** Create a session, run `p.turns` turns with session_id (only the new message each turn), delete it. */
export function multiturnSession(vu, p) {
  const created = http.post(
    `${BASE_URL}/v1/sessions`,
    JSON.stringify(p.kv_policy ? { kv_policy: p.kv_policy } : {}),
    { headers: headers(API_KEY), tags: { name: "session_create" } },
  );
  const cr = view(created);
  if (!check(cr, SESSION_CREATE_CHECKS)) return;
  const id = sessionIdOf(cr);
  let prev = null;
  for (let t = 0; t < p.turns; t++) {
    const res = http.post(`${BASE_URL}/v1/chat/completions`, JSON.stringify(sessionTurnBody(id, t, vu, p)), {
      headers: headers(API_KEY),
      tags: { name: "session_turn" },
      timeout: "120s",
    });
    const r = view(res);
    check(r, sessionTurnChecks(t, prev, p.max_prefill));
    const u = usageOf(r);
    if (!u) break;
    recordTokens(res, u.completion_tokens);
    turnCached.add(u.prompt_tokens_details.cached_tokens);
    if (t > 0) turnPrefilled.add(u.prompt_tokens - u.prompt_tokens_details.cached_tokens);
    prev = u;
  }
  const del = http.del(`${BASE_URL}/v1/sessions/${id}`, null, {
    headers: headers(API_KEY),
    tags: { name: "session_delete" },
  });
  check(view(del), SESSION_DELETE_CHECKS);
}
