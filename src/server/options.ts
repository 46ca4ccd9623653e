/**
 * Every knob, declared once. `SERVER_OPTIONS` are the server's: each has its flag, its environment variable,
 * its default, its zod schema and its documentation, and config.ts builds the flag parser, the defaults and
 * the config schema from this table alone. `ENV_KNOBS` are read by the part that uses them (where the native
 * libraries are, OpenMP's settings: process-wide by nature). The README's configuration tables are generated
 * from both (`deno task docs:options`; tests/server_config_test.ts keeps the README equal to the table).
 */
import { resolve } from "node:path";
import { z } from "zod";
import { parsePolicyText, PolicySpecSyntaxError } from "../kv/policy_spec.ts";
import { REPO_ROOT, SHARED_MODELS } from "../model/loader.ts";

const intFrom = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  z.coerce.number().int(`must be an integer`).min(min).max(max);

/** Turns an option's text (flag or environment) into its value, or throws with a one-line reason. */
export type TextParser = (raw: string, from: "flag" | "env") => unknown;

export interface OptionDef {
  flag: string;
  env: string;
  schema: z.ZodType;
  /** The value when neither flag nor environment sets it (absent: the option is optional). */
  default?: () => unknown;
  /** How the default reads in the README. */
  defaultDoc: string;
  doc: string;
  /** Text → value (default: the text itself, coerced by the schema). */
  parse?: TextParser;
}

const policyText: TextParser = (raw) => {
  try {
    return parsePolicyText(raw);
  } catch (e) {
    if (e instanceof PolicySpecSyntaxError) throw new Error(e.message);
    throw e;
  }
};

/** The server's options, in the order the README lists them. */
export const SERVER_OPTIONS = {
  model: {
    flag: "model",
    env: "LETHE_MODEL",
    schema: z.string().min(1),
    default: () => SHARED_MODELS.stories260K,
    defaultDoc: "`../shared/models/stories260K.gguf`",
    doc: "GGUF file or Hugging Face directory (a relative flag is from the working directory, " +
      "a relative env value from the repository)",
    parse: (raw, from) => resolve(from === "flag" ? Deno.cwd() : REPO_ROOT, raw),
  },
  backend: {
    flag: "backend",
    env: "LETHE_BACKEND",
    schema: z.enum(["auto", "ts", "native", "webgpu", "cuda"]),
    default: () => "auto",
    defaultDoc: "`auto`",
    doc: "`auto`, `ts`, `native`, `webgpu`, `cuda`; `auto` logs what it chose and why",
  },
  port: {
    flag: "port",
    env: "PORT",
    schema: intFrom(0, 65535),
    default: () => 8080,
    defaultDoc: "8080",
    doc: "TCP port (0: any free port)",
  },
  host: {
    flag: "host",
    env: "HOST",
    schema: z.string().min(1),
    default: () => "127.0.0.1",
    defaultDoc: "127.0.0.1",
    doc: "listen address",
  },
  store: {
    flag: "store",
    env: "LETHE_STORE",
    schema: z.string().regex(/^(memory:|denokv:.+|redis:\/\/.+|rediss:\/\/.+)$/, {
      message: "must be memory:, denokv:/path.sqlite or redis://host:port",
    }),
    default: () => `denokv:${resolve(REPO_ROOT, "data/sessions.sqlite")}`,
    defaultDoc: "`denokv:./data/sessions.sqlite`",
    doc: "session store: `denokv:PATH`, `redis://host:port` (many instances), `memory:`",
  },
  apiKeys: {
    flag: "api-keys",
    env: "LETHE_API_KEYS",
    schema: z.array(z.string().min(8, "API keys must be at least 8 characters")),
    default: () => [],
    defaultDoc: "none",
    doc: "comma-separated; when set, `Authorization: Bearer` is required",
    parse: (raw) => raw.split(",").map((k) => k.trim()).filter((k) => k),
  },
  kvPolicy: {
    flag: "kv-policy",
    env: "LETHE_KV_POLICY",
    schema: z.object({ name: z.string().min(1) }).catchall(z.unknown()),
    default: () => ({ name: "lethe" }),
    defaultDoc: "`lethe`",
    doc: "default KV policy: `name`, `name:key=value,…` or JSON (src/kv/policy_spec.ts)",
    parse: policyText,
  },
  kvPrecision: {
    flag: "kv-precision",
    env: "LETHE_KV_PRECISION",
    schema: z.enum(["f32", "f16", "int8"]),
    default: () => "f16",
    defaultDoc: "`f16`",
    doc: "KV cache and stored snapshot precision (`f32`, `f16`; `int8`: int8 storage of an f16 cache)",
  },
  reasoningFormat: {
    flag: "reasoning-format",
    env: "LETHE_REASONING_FORMAT",
    schema: z.enum(["deepseek", "none"]),
    default: () => "deepseek",
    defaultDoc: "`deepseek`",
    doc: "chat replies of `<think>` models: `deepseek` returns the thinking as `reasoning_content`, `none` " +
      "leaves it in `content` (a request's `reasoning_format` overrides)",
  },
  chatTemplateKwargs: {
    flag: "chat-template-kwargs",
    env: "LETHE_CHAT_TEMPLATE_KWARGS",
    schema: z.record(z.string(), z.unknown()),
    default: () => ({}),
    defaultDoc: "`{}`",
    doc: 'JSON object of chat template variables for every request, e.g. `{"enable_thinking":false}` ' +
      "(a request's `chat_template_kwargs` override them)",
    parse: (raw) => {
      let v: unknown;
      try {
        v = JSON.parse(raw);
      } catch (e) {
        throw new Error(`must be a JSON object (${(e as Error).message})`);
      }
      if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("must be a JSON object");
      return v;
    },
  },
  queueSize: {
    flag: "queue-size",
    env: "LETHE_QUEUE_SIZE",
    schema: intFrom(1, 100000),
    default: () => 64,
    defaultDoc: "64",
    doc: "sequences waiting for the batch before 429 `queue_full`",
  },
  maxBatch: {
    flag: "max-batch",
    env: "LETHE_MAX_BATCH",
    schema: intFrom(1, 1024),
    default: () => 16,
    defaultDoc: "16",
    doc: "sequences decoded together in one step",
  },
  prefillPerStep: {
    flag: "prefill-per-step",
    env: "LETHE_PREFILL_PER_STEP",
    schema: intFrom(1, 1 << 20),
    default: () => 256,
    defaultDoc: "256",
    doc: "prompt tokens per scheduler step (and per prefill chunk)",
  },
  maxBodyBytes: {
    flag: "max-body-bytes",
    env: "LETHE_MAX_BODY_BYTES",
    schema: intFrom(1024, 1 << 30),
    default: () => 1 << 20,
    defaultDoc: "1048576",
    doc: "request body limit (413 beyond)",
  },
  maxPromptTokens: {
    flag: "max-prompt-tokens",
    env: "LETHE_MAX_PROMPT_TOKENS",
    schema: intFrom(1).optional(),
    defaultDoc: "model context",
    doc: "new prompt tokens per request",
  },
  defaultMaxTokens: {
    flag: "default-max-tokens",
    env: "LETHE_DEFAULT_MAX_TOKENS",
    schema: intFrom(1),
    default: () => 256,
    defaultDoc: "256",
    doc: "`max_tokens` when a request has none (clamped to the context)",
  },
  requestTimeoutMs: {
    flag: "request-timeout-ms",
    env: "LETHE_REQUEST_TIMEOUT_MS",
    schema: intFrom(100),
    default: () => 120_000,
    defaultDoc: "120000",
    doc: "a generation running longer is cancelled (504)",
  },
  leaseMs: {
    flag: "lease-ms",
    env: "LETHE_LEASE_MS",
    schema: intFrom(100, 600_000),
    default: () => 5_000,
    defaultDoc: "5000",
    doc: "session lease time: renewed every third of it while a turn runs (keep it above the longest " +
      "decoding step); after a crash the session takes turns again within it",
  },
  rateLimitRps: {
    flag: "rate-limit-rps",
    env: "LETHE_RATE_LIMIT_RPS",
    schema: z.coerce.number().min(0),
    default: () => 0,
    defaultDoc: "0 (off)",
    doc: "requests per second per API key (token bucket)",
  },
  rateLimitBurst: {
    flag: "rate-limit-burst",
    env: "LETHE_RATE_LIMIT_BURST",
    schema: intFrom(1),
    default: () => 20,
    defaultDoc: "20",
    doc: "the bucket's size",
  },
  shutdownDeadlineMs: {
    flag: "shutdown-deadline-ms",
    env: "LETHE_SHUTDOWN_DEADLINE_MS",
    schema: intFrom(0),
    default: () => 10_000,
    defaultDoc: "10000",
    doc: "on SIGTERM/SIGINT, running turns get this long to finish (then they are cancelled)",
  },
  parallelWork: {
    flag: "parallel-work",
    env: "LETHE_PARALLEL_WORK",
    schema: intFrom(0, 0x7fffffff).optional(),
    defaultDoc: "library default (8388608)",
    doc: "native CPU backend: multiply-adds below which a matmul or attention runs on one thread (per model)",
  },
  logLevel: {
    flag: "log-level",
    env: "LETHE_LOG_LEVEL",
    schema: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]),
    default: () => "info",
    defaultDoc: "`info`",
    doc: "`fatal` … `trace`, `silent`",
  },
} satisfies Record<string, OptionDef>;

export type OptionKey = keyof typeof SERVER_OPTIONS;

/** Knobs read from the environment by the part that uses them, not by the server's config. */
export const ENV_KNOBS: { env: string; where: string; doc: string }[] = [
  {
    env: "LETHE_NATIVE_LIB_DIR",
    where: "src/engine/native.ts",
    doc: "directory of `liblethe_cpu.so` / `liblethe_cuda.so` (default `native/build/`)",
  },
  { env: "LETHE_NATIVE_LIB", where: "src/engine/native.ts", doc: "path of the CPU library itself" },
  { env: "LETHE_CUDA_LIB", where: "src/engine/cuda.ts", doc: "path of `liblethe_cuda.so` itself" },
  {
    env: "OMP_NUM_THREADS, OMP_WAIT_POLICY, GOMP_SPINCOUNT",
    where: "libgomp, when the native library loads",
    doc: "OpenMP threads and idle spinning; unless one of the last two is set, the native backend sets " +
      "`GOMP_SPINCOUNT=20000` so idle workers do not steal the core the server needs",
  },
  {
    env: "LETHE_CPU_ARCH",
    where: "native/build.ts",
    doc:
      "`-march` of the CPU library (default `native`; the Dockerfile builds `x86-64-v3` so the image runs on any AVX2 machine)",
  },
  {
    env: "LETHE_CUDA_ARCH",
    where: "native/build.ts",
    doc: "CUDA architectures to build for, e.g. `80,90` (default: every one from sm_75)",
  },
  { env: "LETHE_DEBUG", where: "src/cli/", doc: "command-line tools print the stack of an error" },
  {
    env: "BASE_URL, API_KEY, LETHE_API_KEY, MODEL",
    where: "loadtest/ (driver, k6)",
    doc: "the load tools' target, API key and model id (default: the server's first `GET /v1/models`)",
  },
  {
    env: "LETHE_CHAT_SESSIONS, XDG_CONFIG_HOME, NO_COLOR",
    where: "src/cli/chat.ts",
    doc:
      "the terminal chat's name → session id file (default `$XDG_CONFIG_HOME/lethe-edge/chat-sessions.json`, " +
      "`~/.config/…` without it); no colours",
  },
  {
    env: "LETHE_CHROMIUM",
    where: "src/client/browser.ts",
    doc: "the chromium of the browser tests and `deno task screenshot` (default `/usr/bin/chromium`)",
  },
  {
    env: "LETHE_TEST_LOG, LETHE_MODEL_GGUF, LETHE_MODEL_HF, LETHE_VOCAB_DIR",
    where: "tests/",
    doc: "the test servers' log level; the models the tokenizer and loader tests read; the vocabulary " +
      "fixtures (default `../shared/fixtures/vocab`)",
  },
  {
    env: "LETHE_CONFORMANCE_REPORT",
    where: "tests/support/conformance.ts",
    doc: "set: the backend conformance suite prints each check's worst deviation as a share of its tolerance",
  },
  {
    env: "LETHE_FIXTURES_DIR",
    where: "tests/",
    doc: "the reference fixtures the tests compare with, e.g. `kquant/` (default `../shared/fixtures`)",
  },
  {
    env: "LETHE_E2E_SHAPES, LETHE_E2E_TYPE, LETHE_E2E_QUANT, LETHE_E2E_DIR",
    where: "tests/e2e_models_test.ts",
    doc: "the end-to-end test's make-model shapes (a plain one, a reasoning one), weight type, quantize " +
      "type and a folder keeping the files (`deno task e2e:real` sets them for the real-size run)",
  },
];

// ---------------------------------------------------------------------------------------------------------
// The README's tables

function table(header: string[], rows: string[][]): string {
  const all = [header, ...rows];
  const w = header.map((_, i) => Math.max(3, ...all.map((r) => r[i].length)));
  const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(w[i])).join(" | ")} |`;
  return [line(header), `| ${w.map((n) => "-".repeat(n)).join(" | ")} |`, ...rows.map(line)].join("\n");
}

/** The README's configuration tables (server options, then the environment-only knobs). */
export function optionsMarkdown(): string {
  const server = table(
    ["flag", "env", "default", "what"],
    Object.values(SERVER_OPTIONS).map((
      o: OptionDef,
    ) => [`\`--${o.flag}\``, `\`${o.env}\``, o.defaultDoc, o.doc]),
  );
  const env = table(
    ["env", "read by", "what"],
    ENV_KNOBS.map((k) => [k.env.split(", ").map((e) => `\`${e}\``).join(", "), k.where, k.doc]),
  );
  return `${server}\n\nRead from the environment where they are used:\n\n${env}`;
}

export const README_BEGIN =
  "<!-- options:begin (generated from src/server/options.ts: deno task docs:options) -->";
export const README_END = "<!-- options:end -->";

/** `readme` with its options section replaced by `optionsMarkdown()`. */
export function withOptions(readme: string): string {
  const a = readme.indexOf(README_BEGIN), b = readme.indexOf(README_END);
  if (a < 0 || b < a) throw new Error(`README has no ${README_BEGIN} … ${README_END} section`);
  return readme.slice(0, a + README_BEGIN.length) + "\n\n" + optionsMarkdown() + "\n\n" + readme.slice(b);
}

if (import.meta.main) {
  // deno task docs:options: rewrite the README's options section.
  const path = resolve(REPO_ROOT, "README.md");
  await Deno.writeTextFile(path, withOptions(await Deno.readTextFile(path)));
  console.log(`docs:options: ${path} updated`);
}
