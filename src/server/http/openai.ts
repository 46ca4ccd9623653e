/**
 * The OpenAI side of the chat and completions routes: request body → generation params, the model check, and
 * the SSE response of a streamed generation.
 */
import type { Context } from "hono";
import type { SamplingParams } from "../../engine/sampler.ts";
import { invalid, notFound } from "../errors.ts";
import type { AppEnv } from "./app.ts";
import { httpError } from "./errors.ts";
import type { GenerateParams, GenerateResult, Inference, TextDelta } from "../inference.ts";

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
    throw invalid(`Only n=1 is supported (got n=${b.n}).`, "n", "unsupported_value");
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
    throw notFound(
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
 * Run a generation as an SSE stream: `first()` (if any), then `chunk(delta)` for each piece of the reply, then
 * `final(result)` and `[DONE]`. Errors before generation starts are thrown (a proper HTTP status); errors
 * after are sent as an `error` event. The response pulls from the generation: a client that goes away
 * cancels it.
 */
export async function streamGeneration(
  c: Context<AppEnv>,
  inference: Inference,
  params: Omit<GenerateParams, "signal" | "stream">,
  events: {
    first?: () => unknown;
    chunk: (delta: TextDelta) => unknown;
    final: (r: GenerateResult) => unknown[];
  },
): Promise<Response> {
  const first = events.first?.();
  const gen = await inference.start({ ...params, stream: true, signal: c.req.raw.signal });
  const deltas = gen.deltas!.getReader();
  const log = params.log;
  const body = new ReadableStream<Uint8Array>({
    start(ctrl) {
      if (first !== undefined) ctrl.enqueue(sse(first));
    },
    async pull(ctrl) {
      const r = await deltas.read();
      if (!r.done) return ctrl.enqueue(sse(events.chunk(r.value)));
      try {
        for (const e of events.final(await gen.done)) ctrl.enqueue(sse(e));
      } catch (e) {
        const err = errorEvent(e, log);
        if (err) ctrl.enqueue(sse(err));
      }
      ctrl.enqueue(sse("[DONE]"));
      ctrl.close();
    },
    cancel: (reason) => deltas.cancel(reason),
  });
  return new Response(body, {
    status: 200,
    headers: {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      "connection": "keep-alive",
      "x-request-id": c.get("requestId"),
    },
  });
}

const encoder = new TextEncoder();

function sse(obj: unknown): Uint8Array {
  return encoder.encode(`data: ${typeof obj === "string" ? obj : JSON.stringify(obj)}\n\n`);
}

/** The `error` event of a generation that failed after it started (none for a cancelled one). */
function errorEvent(e: unknown, log: GenerateParams["log"]): unknown {
  const h = httpError(e);
  if (h.unknown) {
    log.error({ err: String(e), stack: (e as Error)?.stack }, "generation failed");
    return { error: { ...h.body.error, code: null } };
  }
  return h.body.error.code === "cancelled" ? null : h.body;
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
