// k6: each VU creates a session (POST /v1/sessions with kv_policy) and runs several chat turns with
// session_id, checking that cached_tokens grows turn after turn and that a resumed turn prefills only its
// new message (prompt_tokens - cached_tokens stays small); then deletes the session.
//
//   k6 run loadtest/k6/multiturn_sessions.js
//   BASE_URL=http://127.0.0.1:8080 API_KEY=sk-... MODEL=stories260K VUS=8 TURNS=6 KV_POLICY='{"name":"lethe"}' k6 run loadtest/k6/multiturn_sessions.js
// (MODEL defaults to the first model of the server's GET /v1/models; KV_POLICY is the API's JSON form.)
//
// Same scenario as `deno task load --scenario multiturn_sessions`.
import { multiturnSession } from "./requests.js";
export { setup } from "./requests.js";
import { SCENARIOS } from "./scenarios.js";

const S = SCENARIOS.multiturn_sessions;
const P = {
  turns: Number(__ENV.TURNS || S.turns),
  max_tokens: Number(__ENV.MAX_TOKENS || S.max_tokens),
  temperature: S.temperature,
  max_prefill: Number(__ENV.MAX_PREFILL || S.max_prefill),
  kv_policy: __ENV.KV_POLICY ? JSON.parse(__ENV.KV_POLICY) : S.kv_policy,
};

export const options = {
  scenarios: {
    multiturn_sessions: {
      executor: "per-vu-iterations",
      vus: Number(__ENV.VUS || S.vus),
      iterations: Number(__ENV.ITERATIONS || S.iterations),
      maxDuration: __ENV.DURATION || S.duration,
    },
  },
  thresholds: S.thresholds,
};

export default function (data) {
  multiturnSession(__VU, Object.assign({ model: data.model }, P));
}
