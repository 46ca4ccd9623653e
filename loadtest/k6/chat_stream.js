// k6: N VUs doing streaming chat completions (stream: true, stream_options.include_usage) against Lethe Edge,
// checking the status, the content type, generated text, the usage chunk and the final `data: [DONE]`.
//
//   k6 run loadtest/k6/chat_stream.js
//   BASE_URL=http://127.0.0.1:8080 API_KEY=sk-... MODEL=stories260K VUS=8 ITERATIONS=20 DURATION=2m k6 run loadtest/k6/chat_stream.js
// (MODEL defaults to the first model of the server's GET /v1/models.)
//
// Same scenario (parameters, requests, checks) as `deno task load --scenario chat_stream`.
// Custom metrics: `ttft` (Trend, time), `tokens_per_second` (Trend, per request), `generated_tokens`.
// k6's http module buffers the whole body, so `ttft` here is the time to the first byte of the SSE stream
// (timings.waiting). Lethe Edge answers with the headers and the role chunk as soon as the request is
// admitted to the scheduler, so under k6 this is a lower bound of the time to the first generated token;
// the Deno driver times the first content delta itself, and the server exports its own histogram
// (lethe_time_to_first_token_seconds on /metrics).
import { chatStream } from "./requests.js";
export { setup } from "./requests.js";
import { PROMPTS, SCENARIOS } from "./scenarios.js";

const S = SCENARIOS.chat_stream;
const P = { max_tokens: Number(__ENV.MAX_TOKENS || S.max_tokens), temperature: S.temperature };

export const options = {
  scenarios: {
    chat_stream: {
      executor: "per-vu-iterations",
      vus: Number(__ENV.VUS || S.vus),
      iterations: Number(__ENV.ITERATIONS || S.iterations),
      maxDuration: __ENV.DURATION || S.duration,
    },
  },
  thresholds: S.thresholds,
};

export default function (data) {
  chatStream(PROMPTS[(__VU + __ITER) % PROMPTS.length], Object.assign({ model: data.model }, P));
}
