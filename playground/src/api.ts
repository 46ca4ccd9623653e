/// <reference lib="dom" />
/**
 * The page's side of the API, through the service's own HTTP/SSE client (src/client/http.ts): the same
 * request and stream parsing as the tests, the load tools and `deno task chat`.
 */
import { Client, type ClientResponse } from "../../src/client/http.ts";

// The server's own response types (type-only: nothing of the server goes into the page's bundle).
export type { KvView } from "../../src/server/session_view.ts";
export type { TurnRecord } from "../../src/session/bundle.ts";
export type { SessionInfo } from "../../src/server/session_service.ts";
export type { TranscriptMessage as Message } from "../../src/server/session_view.ts";
import type { KvView } from "../../src/server/session_view.ts";
import type { SessionInfo } from "../../src/server/session_service.ts";
import type { TranscriptMessage as Message } from "../../src/server/session_view.ts";

/** A failed request: the OpenAI error body's message, status and code. */
export class ApiError extends Error {
  constructor(readonly status: number, message: string, readonly code: string | null) {
    super(message);
  }
}

function check(r: ClientResponse, ok: number): ClientResponse {
  if (r.status === ok) return r;
  const e = r.json?.error;
  throw new ApiError(r.status, e?.message ?? `HTTP ${r.status}`, e?.code ?? null);
}

export class Api {
  #client: Client;

  constructor(apiKey: string | null) {
    this.#client = new Client(location.origin, { apiKey: apiKey ?? undefined });
  }

  async model(): Promise<{ id: string; context_length: number }> {
    return check(await this.#client.get("/v1/models"), 200).json!.data[0];
  }

  async createSession(policy: Record<string, unknown>): Promise<SessionInfo> {
    return check(await this.#client.post("/v1/sessions", { kv_policy: policy }), 201).json as SessionInfo;
  }

  async session(id: string): Promise<SessionInfo> {
    return check(await this.#client.get(`/v1/sessions/${encodeURIComponent(id)}`), 200).json as SessionInfo;
  }

  async messages(id: string): Promise<Message[]> {
    return check(await this.#client.get(`/v1/sessions/${encodeURIComponent(id)}/messages`), 200).json!.data;
  }

  async kv(id: string): Promise<KvView> {
    return check(await this.#client.get(`/v1/sessions/${encodeURIComponent(id)}/kv`), 200).json as KvView;
  }

  /** A streamed chat turn on session `id`; `onDelta` gets each content / reasoning piece. */
  async chat(
    body: Record<string, unknown>,
    onDelta: (content: string, reasoning: string) => void,
    signal: AbortSignal,
  ) {
    const r = await this.#client.post("/v1/chat/completions", {
      ...body,
      stream: true,
      stream_options: { include_usage: true },
    }, {
      stream: true,
      signal,
      onEvent: (ev) => {
        const d = (ev as { choices?: { delta?: Record<string, unknown> }[] })?.choices?.[0]?.delta;
        if (!d) return;
        const content = typeof d.content === "string" ? d.content : "";
        const reasoning = typeof d.reasoning_content === "string" ? d.reasoning_content : "";
        if (content || reasoning) onDelta(content, reasoning);
      },
    });
    check(r, 200);
    if (r.sse!.error) throw new ApiError(200, r.sse!.error, r.sse!.errorBody?.error?.code ?? null);
    return r.sse!;
  }

  /** Watch session `id` (SSE of its turns' KV events) until `signal` aborts; resolves when the stream ends. */
  async watch(
    id: string,
    onEvent: (ev: Record<string, unknown>) => void,
    signal: AbortSignal,
  ): Promise<void> {
    const r = await this.#client.get(`/v1/sessions/${encodeURIComponent(id)}/events`, {
      stream: true,
      signal,
      onEvent: (ev) => {
        if (typeof ev === "object" && ev !== null) onEvent(ev as Record<string, unknown>);
      },
    });
    check(r, 200);
  }
}
