// The service's wire format as every client sees it: request headers and the SSE stream of a generation.
// Shared as it is by the HTTP client (src/client/http.ts: tests, bench:serve, the load driver) and the k6
// scripts (loadtest/k6/), so both parse a stream the same way. Plain ES2017 without imports: every k6
// version's JavaScript engine and Deno load this very file.

/**
 * Request headers (Bearer auth when an API key is given).
 * @param {string | undefined} apiKey
 * @returns {Record<string, string>}
 */
export function headers(apiKey) {
  const h = { "content-type": "application/json" };
  if (apiKey) h["authorization"] = "Bearer " + apiKey;
  return h;
}

/**
 * Splits a growing SSE text into the payloads of its complete `data: …` lines.
 * @returns {{ push: (chunk: string) => string[], end: () => string[] }}
 */
export function sseSplitter() {
  let pending = "";
  return {
    /** The payloads completed by `chunk`. */
    push: function (chunk) {
      pending += chunk;
      const lines = pending.split("\n");
      pending = lines.pop();
      return dataOf(lines);
    },
    /** The payload of a last line without its newline, if any. */
    end: function () {
      const rest = pending;
      pending = "";
      return dataOf([rest]);
    },
  };
}

/** @param {string[]} lines */
function dataOf(lines) {
  const out = [];
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].indexOf("data: ") === 0) out.push(lines[i].slice(6));
  }
  return out;
}

/**
 * @typedef {{ events: number, text: string, contentEvents: number, usage: any, kv: any, done: boolean,
 *   error: string | null, errorBody: any }} SSEResult
 */

/**
 * What a stream said so far: the text of its content deltas, the usage/kv objects of the include_usage
 * chunk, whether it ended with `data: [DONE]`, and any error event (its message, and its whole body).
 * @returns {SSEResult}
 */
export function sseResult() {
  return {
    events: 0,
    text: "",
    contentEvents: 0,
    usage: null,
    kv: null,
    done: false,
    error: null,
    errorBody: null,
  };
}

/**
 * Fold one event's payload into `out`; returns the generated text it carried ("" if none).
 * @param {SSEResult} out
 * @param {string} data
 * @returns {string}
 */
export function foldEvent(out, data) {
  out.events++;
  if (data === "[DONE]") {
    out.done = true;
    return "";
  }
  out.done = false; // [DONE] must be the last event
  let ev;
  try {
    ev = JSON.parse(data);
  } catch (_e) {
    out.error = "malformed event";
    return "";
  }
  if (ev.error) {
    out.error = ev.error.message || "error event";
    out.errorBody = ev;
  }
  if (ev.usage) out.usage = ev.usage;
  if (ev.kv) out.kv = ev.kv;
  const ch = ev.choices && ev.choices[0];
  const piece = ch ? (ch.delta ? ch.delta.content : ch.text) : "";
  if (!piece) return "";
  out.text += piece;
  out.contentEvents++;
  return piece;
}

/**
 * A whole SSE body at once.
 * @param {unknown} body
 * @returns {SSEResult}
 */
export function parseSSE(body) {
  const out = sseResult();
  const s = sseSplitter();
  const all = s.push(String(body || "")).concat(s.end());
  for (let i = 0; i < all.length; i++) foldEvent(out, all[i]);
  return out;
}
