/** Helpers shared by the chat and completions routes: body → sampling params, and the SSE response. */
import type { Context } from "hono";
import type { SamplingParams } from "../../engine/sampler.ts";
import { ApiError, badRequest } from "../errors.ts";
import type { AppEnv } from "./app.ts";
import type { GenerateParams, GenerateResult, Inference } from "../inference.ts";

export interface SamplingBody {
  max_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  min_p?: number | null;
  repetition_penalty?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  n?: number | null;
  model: string;
}

/** OpenAI's default temperature is 1; an omitted temperature means 1 here as well. */
export function samplingFrom(b: SamplingBody): SamplingParams {
  if (b.n !== undefined && b.n !== null && b.n !== 1) {
    throw badRequest(`Only n=1 is supported (got n=${b.n}).`, "n", "unsupported_value");
  }
  return {
    temperature: b.temperature ?? 1,
    topK: b.top_k ?? 0,
    topP: b.top_p ?? 1,
    minP: b.min_p ?? 0,
    repetitionPenalty: b.repetition_penalty ?? 1,
    repetitionWindow: 64,
    seed: b.seed ?? undefined,
  };
}

/** The part of a generation request that chat and completions map the same way. */
export function commonParams(
  c: Context<AppEnv>,
  body: SamplingBody & { session_id?: string | null; kv_policy?: unknown },
): Pick<GenerateParams, "owner" | "sessionId" | "stop" | "sampling" | "policy" | "log" | "startedAt"> {
  return {
    owner: c.get("owner"),
    sessionId: body.session_id ?? undefined,
    stop: stopFrom(body.stop),
    sampling: samplingFrom(body),
    policy: body.kv_policy ?? undefined,
    log: c.get("log"),
    startedAt: c.get("startedAt"),
  };
}

export function stopFrom(stop: string | string[] | null | undefined): string[] {
  if (stop === undefined || stop === null) return [];
  return (Array.isArray(stop) ? stop : [stop]).filter((s) => s.length > 0);
}

/** The model id clients use ("stories260K"; the file name "stories260K.gguf" is accepted too). */
export function modelId(name: string): string {
  return name.replace(/\.gguf$/i, "");
}

export function checkModel(c: Context<AppEnv>, requested: string): string {
  const m = c.get("deps").model;
  const id = modelId(m.name);
  if (requested !== id && requested !== m.name) {
    throw new ApiError(
      404,
      "not_found_error",
      `The model '${requested}' does not exist. This server serves '${id}'.`,
      "model",
      "model_not_found",
    );
  }
  return id;
}

export function randomId(prefix: string): string {
  return `${prefix}-${crypto.randomUUID().replaceAll("-", "").slice(0, 24)}`;
}

/**
 * Run a generation as an SSE stream. `chunk(text)` / `final(result)` build the event objects. Errors before
 * generation starts are thrown (proper HTTP status); errors after are sent as an `error` event.
 */
export async function streamGeneration(
  c: Context<AppEnv>,
  inference: Inference,
  params: Omit<GenerateParams, "signal" | "onText">,
  events: {
    first?: () => unknown;
    chunk: (text: string) => unknown;
    final: (r: GenerateResult) => unknown[];
  },
): Promise<Response> {
  const enc = new TextEncoder();
  const abort = new AbortController();
  let ctrl!: ReadableStreamDefaultController<Uint8Array>;
  let closed = false;
  const send = (obj: unknown) => {
    if (closed) return;
    ctrl.enqueue(enc.encode(`data: ${typeof obj === "string" ? obj : JSON.stringify(obj)}\n\n`));
  };
  const stream = new ReadableStream<Uint8Array>({
    start(cn) {
      ctrl = cn;
    },
    cancel() {
      closed = true;
      abort.abort();
    },
  });
  if (events.first) send(events.first());
  const signal = AbortSignal.any([c.req.raw.signal, abort.signal]);
  const started = await inference.start({ ...params, signal, onText: (t) => send(events.chunk(t)) });
  const log = params.log;
  started.done.then(
    (r) => {
      for (const e of events.final(r)) send(e);
      send("[DONE]");
    },
    (e) => {
      if (e instanceof ApiError) {
        if (e.code !== "cancelled") send(e.body());
      } else {
        log.error({ err: String(e), stack: (e as Error)?.stack }, "generation failed");
        send({ error: { message: "internal server error", type: "server_error", param: null, code: null } });
      }
      send("[DONE]");
    },
  ).finally(() => {
    if (!closed) {
      closed = true;
      try {
        ctrl.close();
      } catch { /* already closed */ }
    }
  });
  return new Response(stream, {
    status: 200,
    headers: {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      "connection": "keep-alive",
      "x-request-id": c.get("requestId"),
    },
  });
}

/**
 * The closing SSE chunks of a stream: the choice carrying the finish reason (and the session id), then, with
 * `stream_options.include_usage`, a chunk with no choices carrying usage and the KV stats (OpenAI's shape).
 */
export function finalChunks(
  base: Record<string, unknown>,
  r: GenerateResult,
  includeUsage: boolean,
  lastChoice: Record<string, unknown>,
): unknown[] {
  const out: unknown[] = [{
    ...base,
    ...(r.sessionId ? { session_id: r.sessionId } : {}),
    choices: [{ index: 0, ...lastChoice, finish_reason: r.finishReason, logprobs: null }],
  }];
  if (includeUsage) out.push({ ...base, choices: [], usage: r.usage, kv: r.kv });
  return out;
}
