/**
 * The one HTTP/SSE client of the service, used by the tests, `bench:serve` and the load driver: JSON
 * requests with API-key headers, and SSE responses read as they arrive (with the time to the first event
 * carrying generated text). The wire format itself (headers, SSE parsing) is wire.js, shared with k6.
 */
import { foldEvent, headers, type SSEResult, sseResult, sseSplitter } from "./wire.js";

export type { SSEResult };

export interface StreamResult extends SSEResult {
  /** The raw body. */
  raw: string;
  /** Milliseconds from `t0` to the first event with generated text (null if none came). */
  ttftMs: number | null;
}

export interface ClientResponse {
  status: number;
  headers: Headers;
  /** The body (for a stream: the raw SSE text). */
  text: string;
  // deno-lint-ignore no-explicit-any
  json: Record<string, any> | null;
  /** Milliseconds until the body was read. */
  ms: number;
  /** With `stream`: the parsed stream. */
  sse?: StreamResult;
}

export interface RequestOptions {
  /** Read the body as SSE, event by event. */
  stream?: boolean;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /** With `stream`: each event's payload (parsed JSON, or the raw text) as it arrives, with its generated text. */
  onEvent?: (data: unknown, piece: string) => void;
}

/** Read an SSE response to its end; `t0` is when the request was sent (for ttftMs). */
export async function readSSE(
  res: Response,
  t0 = performance.now(),
  onEvent?: RequestOptions["onEvent"],
): Promise<StreamResult> {
  const out: StreamResult = { ...sseResult(), raw: "", ttftMs: null };
  if (!res.body) return out;
  const split = sseSplitter();
  const dec = new TextDecoder();
  const fold = (events: string[]) => {
    for (const e of events) {
      const piece = foldEvent(out, e);
      if (piece && out.ttftMs === null) out.ttftMs = performance.now() - t0;
      if (onEvent) onEvent(parseData(e), piece);
    }
  };
  for await (const chunk of res.body) {
    const s = dec.decode(chunk, { stream: true });
    out.raw += s;
    fold(split.push(s));
  }
  const tail = dec.decode();
  out.raw += tail;
  fold([...split.push(tail), ...split.end()]);
  return out;
}

function parseData(data: string): unknown {
  try {
    return JSON.parse(data);
  } catch {
    return data; // "[DONE]"
  }
}

export class Client {
  readonly baseUrl: string;
  constructor(baseUrl: string, readonly opts: { apiKey?: string; timeoutMs?: number } = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
  }

  /**
   * One request. `body`: an object is sent as JSON, a string as it is (e.g. malformed JSON on purpose).
   * Network errors and timeouts are thrown.
   */
  async request(
    method: string,
    path: string,
    body?: unknown,
    o: RequestOptions = {},
  ): Promise<ClientResponse> {
    const t0 = performance.now();
    const signals = [o.signal, this.opts.timeoutMs ? AbortSignal.timeout(this.opts.timeoutMs) : undefined]
      .filter((s): s is AbortSignal => s !== undefined);
    const res = await fetch(this.baseUrl + path, {
      method,
      headers: { ...headers(this.opts.apiKey), ...o.headers },
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
      signal: signals.length ? AbortSignal.any(signals) : undefined,
    });
    let text: string;
    let sse: StreamResult | undefined;
    if (o.stream && res.ok) {
      sse = await readSSE(res, t0, o.onEvent);
      text = sse.raw;
    } else text = await res.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch { /* SSE, text or empty */ }
    return { status: res.status, headers: res.headers, text, json, ms: performance.now() - t0, sse };
  }

  get(path: string, o?: RequestOptions): Promise<ClientResponse> {
    return this.request("GET", path, undefined, o);
  }

  post(path: string, body: unknown, o?: RequestOptions): Promise<ClientResponse> {
    return this.request("POST", path, body, o);
  }

  delete(path: string, o?: RequestOptions): Promise<ClientResponse> {
    return this.request("DELETE", path, undefined, o);
  }

  /** The id of the (first) model the server serves (`GET /v1/models`). */
  async modelId(): Promise<string> {
    const r = await this.get("/v1/models");
    const id = r.json?.data?.[0]?.id;
    if (r.status !== 200 || typeof id !== "string") {
      throw new Error(`GET /v1/models: ${r.status} ${r.text.slice(0, 120)}`);
    }
    return id;
  }
}
