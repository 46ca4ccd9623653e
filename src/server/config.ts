/**
 * Server configuration: command-line flags override environment variables override defaults. Everything is
 * validated with zod; a bad value is reported as one line and `main.ts` exits with code 2.
 *
 * | flag                  | env                        | default                                   |
 * |-----------------------|----------------------------|-------------------------------------------|
 * | --model               | LETHE_MODEL                | ../shared/models/stories260K.gguf (repo-relative) |
 * | --backend             | LETHE_BACKEND              | auto (auto, ts, native, webgpu, cuda)      |
 * | --port                | PORT                       | 8080 (0 = any free port)                  |
 * | --host                | HOST                       | 127.0.0.1                                 |
 * | --store               | LETHE_STORE                | denokv:./data/sessions.sqlite (memory:, redis://…) |
 * | --api-keys            | LETHE_API_KEYS             | none (comma-separated; empty = auth off)  |
 * | --kv-policy           | LETHE_KV_POLICY            | lethe (a name or a JSON spec `{"name":…}`) |
 * | --kv-precision        | LETHE_KV_PRECISION         | f16 (f32, f16, int8: stored cache precision) |
 * | --queue-size          | LETHE_QUEUE_SIZE           | 64                                        |
 * | --max-batch           | LETHE_MAX_BATCH            | 16                                        |
 * | --prefill-per-step    | LETHE_PREFILL_PER_STEP     | 256 (prompt tokens per scheduler step)    |
 * | --max-body-bytes      | LETHE_MAX_BODY_BYTES       | 1048576                                   |
 * | --max-prompt-tokens   | LETHE_MAX_PROMPT_TOKENS    | model context length                      |
 * | --default-max-tokens  | LETHE_DEFAULT_MAX_TOKENS   | 256                                       |
 * | --request-timeout-ms  | LETHE_REQUEST_TIMEOUT_MS   | 120000                                    |
 * | --rate-limit-rps      | LETHE_RATE_LIMIT_RPS       | 0 (off; per API key token bucket)         |
 * | --rate-limit-burst    | LETHE_RATE_LIMIT_BURST     | 20                                        |
 * | --shutdown-deadline-ms| LETHE_SHUTDOWN_DEADLINE_MS | 10000                                     |
 * | --log-level           | LETHE_LOG_LEVEL            | info                                      |
 *
 * `--kv-precision` sets both the stored snapshot precision and the live cache's (`liveKVPrecision`): f32 → an
 * f32 cache, f16 → an f16 cache (K/V rounded to f16 as they enter it), so a stored snapshot is bit-exact and a
 * resumed session decodes exactly like an uninterrupted one. int8 storage uses an f16 cache and is lossy:
 * resumes are then approximate.
 */
import { parseArgs } from "node:util";
import { isAbsolute, resolve } from "node:path";
import { z } from "zod";
import { parsePolicySpec } from "../kv/policy.ts";
import { REPO_ROOT, SHARED_MODELS } from "../model/loader.ts";
import type { KVPrecision as LiveKVPrecision } from "../engine/backend.ts";

const intFrom = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  z.coerce.number().int(`must be an integer`).min(min).max(max);

const policySpec = z.object({ name: z.string().min(1) }).catchall(z.unknown());

export const configSchema = z.object({
  model: z.string().min(1),
  backend: z.enum(["auto", "ts", "native", "webgpu", "cuda"]),
  port: intFrom(0, 65535),
  host: z.string().min(1),
  store: z.string().regex(/^(memory:|denokv:.+|redis:\/\/.+|rediss:\/\/.+)$/, {
    message: "must be memory:, denokv:/path.sqlite or redis://host:port",
  }),
  apiKeys: z.array(z.string().min(8, "API keys must be at least 8 characters")),
  kvPolicy: policySpec,
  kvPrecision: z.enum(["f32", "f16", "int8"]),
  queueSize: intFrom(1, 100000),
  maxBatch: intFrom(1, 1024),
  prefillPerStep: intFrom(1, 1 << 20),
  maxBodyBytes: intFrom(1024, 1 << 30),
  maxPromptTokens: intFrom(1).optional(),
  defaultMaxTokens: intFrom(1),
  requestTimeoutMs: intFrom(100),
  leaseMs: intFrom(100, 600_000),
  rateLimitRps: z.coerce.number().min(0),
  rateLimitBurst: intFrom(1),
  shutdownDeadlineMs: intFrom(0),
  logLevel: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]),
});

export type ServerConfig = z.infer<typeof configSchema>;

/**
 * The live KV cache precision the backend must use for a stored (`--kv-precision`) precision: the same for
 * f32 and f16 (so a stored snapshot is exactly the live cache); f16 for int8 storage (lossy either way).
 */
export function liveKVPrecision(stored: ServerConfig["kvPrecision"]): LiveKVPrecision {
  return stored === "f32" ? "f32" : "f16";
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

const FLAGS: Record<string, { key: keyof ServerConfig; env: string }> = {
  model: { key: "model", env: "LETHE_MODEL" },
  backend: { key: "backend", env: "LETHE_BACKEND" },
  port: { key: "port", env: "PORT" },
  host: { key: "host", env: "HOST" },
  store: { key: "store", env: "LETHE_STORE" },
  "api-keys": { key: "apiKeys", env: "LETHE_API_KEYS" },
  "kv-policy": { key: "kvPolicy", env: "LETHE_KV_POLICY" },
  "kv-precision": { key: "kvPrecision", env: "LETHE_KV_PRECISION" },
  "queue-size": { key: "queueSize", env: "LETHE_QUEUE_SIZE" },
  "max-batch": { key: "maxBatch", env: "LETHE_MAX_BATCH" },
  "prefill-per-step": { key: "prefillPerStep", env: "LETHE_PREFILL_PER_STEP" },
  "max-body-bytes": { key: "maxBodyBytes", env: "LETHE_MAX_BODY_BYTES" },
  "max-prompt-tokens": { key: "maxPromptTokens", env: "LETHE_MAX_PROMPT_TOKENS" },
  "default-max-tokens": { key: "defaultMaxTokens", env: "LETHE_DEFAULT_MAX_TOKENS" },
  "request-timeout-ms": { key: "requestTimeoutMs", env: "LETHE_REQUEST_TIMEOUT_MS" },
  "lease-ms": { key: "leaseMs", env: "LETHE_LEASE_MS" },
  "rate-limit-rps": { key: "rateLimitRps", env: "LETHE_RATE_LIMIT_RPS" },
  "rate-limit-burst": { key: "rateLimitBurst", env: "LETHE_RATE_LIMIT_BURST" },
  "shutdown-deadline-ms": { key: "shutdownDeadlineMs", env: "LETHE_SHUTDOWN_DEADLINE_MS" },
  "log-level": { key: "logLevel", env: "LETHE_LOG_LEVEL" },
};

export function defaultConfigValues(): Record<string, unknown> {
  return {
    model: SHARED_MODELS.stories260K,
    backend: "auto",
    port: 8080,
    host: "127.0.0.1",
    store: `denokv:${resolve(REPO_ROOT, "data/sessions.sqlite")}`,
    apiKeys: [],
    kvPolicy: { name: "lethe" },
    kvPrecision: "f16",
    queueSize: 64,
    maxBatch: 16,
    prefillPerStep: 256,
    maxBodyBytes: 1 << 20,
    defaultMaxTokens: 256,
    requestTimeoutMs: 120_000,
    leaseMs: 5_000,
    rateLimitRps: 0,
    rateLimitBurst: 20,
    shutdownDeadlineMs: 10_000,
    logLevel: "info",
  };
}

function parsePolicy(raw: string): unknown {
  const s = raw.trim();
  if (s.startsWith("{")) {
    try {
      return JSON.parse(s);
    } catch {
      throw new ConfigError(`kv-policy: not valid JSON: ${s.slice(0, 80)}`);
    }
  }
  return { name: s };
}

/** Validate a partial config (programmatic use: tests, embedding) on top of the defaults. */
export function buildConfig(overrides: Partial<Record<keyof ServerConfig, unknown>> = {}): ServerConfig {
  const merged = { ...defaultConfigValues(), ...overrides };
  const r = configSchema.safeParse(merged);
  if (!r.success) {
    const iss = r.error.issues[0];
    throw new ConfigError(`invalid config '${iss.path.join(".")}': ${iss.message}`);
  }
  const cfg = r.data;
  try {
    parsePolicySpec(cfg.kvPolicy);
  } catch (e) {
    throw new ConfigError(`invalid config 'kvPolicy': ${(e as Error).message}`);
  }
  if (!isAbsolute(cfg.model)) cfg.model = resolve(REPO_ROOT, cfg.model);
  if (cfg.store.startsWith("denokv:")) {
    const p = cfg.store.slice("denokv:".length);
    if (!isAbsolute(p)) cfg.store = `denokv:${resolve(Deno.cwd(), p)}`;
  }
  return cfg;
}

/** Parse flags (`--port 9000`, `--port=9000`) and environment variables. Throws ConfigError. */
export function loadConfig(
  args: string[] = Deno.args,
  env: Record<string, string | undefined> = Deno.env.toObject(),
): ServerConfig {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: Object.fromEntries(Object.keys(FLAGS).map((f) => [f, { type: "string" as const }])),
      strict: true,
      allowPositionals: false,
    });
  } catch (e) {
    throw new ConfigError((e as Error).message.split("\n")[0]);
  }
  const overrides: Record<string, unknown> = {};
  for (const [flag, { key, env: envName }] of Object.entries(FLAGS)) {
    const raw = (parsed.values as Record<string, string | undefined>)[flag] ?? env[envName];
    if (raw === undefined || raw === "") continue;
    if (key === "apiKeys") overrides[key] = raw.split(",").map((k) => k.trim()).filter((k) => k);
    else if (key === "kvPolicy") overrides[key] = parsePolicy(raw);
    else if (key === "model") overrides[key] = resolve(flag in parsed.values ? Deno.cwd() : REPO_ROOT, raw);
    else overrides[key] = raw;
  }
  return buildConfig(overrides);
}
