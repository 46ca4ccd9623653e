// deno-lint-ignore-file no-explicit-any
/** Test harness: real servers on loopback port 0 (in-process), a shared model/backend, a reference decoder. */
import { type LoadedModel, loadModel } from "../../src/model/loader.ts";
import { openBackend } from "../../src/engine/select.ts";
import type { Backend, KVPrecision } from "../../src/engine/backend.ts";
import { runSequence, Sequence } from "../../src/engine/sequence.ts";
import { GREEDY } from "../../src/engine/sampler.ts";
import type { PolicySpec } from "../../src/kv/contract.ts";
import { createPolicy } from "../../src/kv/registry.ts";
import {
  buildConfig,
  defaultConfigValues,
  liveKVPrecision,
  type ServerConfig,
} from "../../src/server/config.ts";
import { SHARED_MODELS } from "../../src/model/loader.ts";
import { type RunningServer, type StartOptions, startServer } from "../../src/server/server.ts";
import { createLogger } from "../../src/server/logger.ts";
import { Client } from "../../src/client/http.ts";

export { startRedis } from "./redis.ts";

export const MODEL_PATH = Deno.env.get("LETHE_MODEL") ?? SHARED_MODELS.stories260K;
export const PREFILL_CHUNK = 256;

/** The server's default stored KV precision (what `start()` and `referenceTurns` use unless told). */
export const DEFAULT_KV_PRECISION = defaultConfigValues().kvPrecision as ServerConfig["kvPrecision"];

type Shared = { model: LoadedModel; backend: Backend; reason: string };
let sharedLoaded: Promise<LoadedModel> | null = null;
const sharedBackends = new Map<KVPrecision, Promise<Shared>>();

/**
 * The shared model and a ts backend whose live KV cache has the precision a server with stored precision
 * `kvPrecision` uses (the same rule as the server: `liveKVPrecision`).
 */
export function sharedModel(
  kvPrecision: ServerConfig["kvPrecision"] = DEFAULT_KV_PRECISION,
): Promise<Shared> {
  const live = liveKVPrecision(kvPrecision);
  let s = sharedBackends.get(live);
  if (!s) {
    sharedLoaded ??= loadModel(MODEL_PATH);
    s = (async () => {
      const model = await sharedLoaded!;
      const { backend, reason } = await openBackend(model, "ts", { kvPrecision: live });
      return { model, backend, reason };
    })();
    sharedBackends.set(live, s);
  }
  return s;
}

/** A test server's config: the ts backend, any free loopback port, the memory store, no logs; then `over`. */
function testConfig(model: string, over: Partial<Record<keyof ServerConfig, unknown>>): ServerConfig {
  return buildConfig({
    model,
    backend: "ts",
    port: 0,
    host: "127.0.0.1",
    store: "memory:",
    logLevel: "silent",
    prefillPerStep: PREFILL_CHUNK,
    ...over,
  });
}

const testLogger = () => createLogger(Deno.env.get("LETHE_TEST_LOG") ?? "silent");

export async function start(
  over: Partial<Record<keyof ServerConfig, unknown>> = {},
  opts: Pick<StartOptions, "store"> = {},
): Promise<RunningServer> {
  const cfg = testConfig(MODEL_PATH, over);
  const { model, backend, reason } = await sharedModel(cfg.kvPrecision);
  return await startServer(cfg, { ...opts, model, backend: { backend, reason }, logger: testLogger() });
}

/**
 * What one uninterrupted sequence produces for the given turns (greedy): turn i feeds encode(turns[i]) (BOS on
 * the first) after everything before it, in one live cache with one policy instance. The cache has the live
 * precision of a server configured with stored precision `kvPrecision` (default: the server's default).
 */
export async function referenceTurns(
  policy: PolicySpec,
  turns: string[],
  maxTokens: number,
  kvPrecision: ServerConfig["kvPrecision"] = DEFAULT_KV_PRECISION,
): Promise<string[]> {
  const { model, backend } = await sharedModel(kvPrecision);
  const tok = model.tokenizer;
  const pol = createPolicy(policy, {
    nLayers: model.config.nLayers,
    contextLength: model.config.contextLength,
  });
  let prev: Sequence | null = null;
  const out: string[] = [];
  for (let i = 0; i < turns.length; i++) {
    const seq: Sequence = new Sequence(
      backend,
      tok,
      { maxTokens, stop: [], sampling: GREEDY, policy: pol, prefillChunk: PREFILL_CHUNK },
      prev ? { kv: prev.kv, tokens: prev.tokens } : undefined,
    );
    seq.feed(tok.encode(turns[i], { addBos: i === 0 }));
    seq.start();
    let text = "";
    for await (const ev of runSequence(backend, seq)) text += ev.text;
    out.push(text);
    prev = seq;
  }
  prev?.kv.free();
  return out;
}

/** One request to a test server (the shared client: src/client/http.ts); a string body is sent as it is. */
export async function post(base: string, path: string, body: unknown, headers: Record<string, string> = {}) {
  const r = await new Client(base).post(path, body, { headers });
  return { status: r.status, headers: r.headers, json: r.json as Record<string, any>, text: r.text };
}

export async function get(base: string, path: string, headers: Record<string, string> = {}, method = "GET") {
  const r = await new Client(base).request(method, path, undefined, { headers });
  return { status: r.status, headers: r.headers, json: r.json as Record<string, any>, text: r.text };
}

/** A server for another (already loaded) model, on a ts backend of its own; `over` as for `start`. */
export async function startWith(
  model: LoadedModel,
  over: Partial<Record<keyof ServerConfig, unknown>> = {},
  opts: Pick<StartOptions, "store"> = {},
): Promise<RunningServer> {
  return await startServer(testConfig(model.path, over), { ...opts, model, logger: testLogger() });
}
