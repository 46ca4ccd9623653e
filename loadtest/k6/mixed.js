// k6: streaming chat, plain completions and multi-turn sessions at the same time, with thresholds
// (failed-request rate, check pass rate, p95 request duration, p95 ttft). k6 exits 99 when one is crossed.
//
//   k6 run loadtest/k6/mixed.js
//   BASE_URL=http://127.0.0.1:8080 API_KEY=sk-... MODEL=stories260K DURATION=3m k6 run loadtest/k6/mixed.js
// (MODEL defaults to the first model of the server's GET /v1/models.)
//
// Same scenario as `deno task load --scenario mixed`.
import { chatStream, completion, multiturnSession } from "./requests.js";
export { setup } from "./requests.js";
import { PROMPTS, SCENARIOS } from "./scenarios.js";

const S = SCENARIOS.mixed;
const MT = SCENARIOS.multiturn_sessions;
const DURATION = __ENV.DURATION || S.duration;

function part(name, exec) {
  const p = S.parts[name];
  return {
    executor: "per-vu-iterations",
    exec: exec,
    vus: p.vus,
    iterations: p.iterations,
    maxDuration: DURATION,
  };
}

export const options = {
  scenarios: {
    chat_stream: part("chat_stream", "chatStreamPart"),
    completions: part("completions", "completionsPart"),
    multiturn_sessions: part("multiturn_sessions", "sessionsPart"),
  },
  thresholds: S.thresholds,
};

export function chatStreamPart(data) {
  chatStream(PROMPTS[(__VU + __ITER) % PROMPTS.length], {
    model: data.model,
    max_tokens: S.parts.chat_stream.max_tokens,
    temperature: 0,
  });
}

export function completionsPart(data) {
  completion(PROMPTS[(__VU + __ITER) % PROMPTS.length], {
    model: data.model,
    max_tokens: S.parts.completions.max_tokens,
    temperature: 0,
  });
}

export function sessionsPart(data) {
  multiturnSession(__VU, {
    model: data.model,
    turns: S.parts.multiturn_sessions.turns,
    max_tokens: S.parts.multiturn_sessions.max_tokens,
    temperature: 0,
    max_prefill: MT.max_prefill,
    kv_policy: MT.kv_policy,
  });
}
