/**
 * Server configuration, built from the option table (options.ts): command-line flags override environment
 * variables override defaults; everything is validated with the table's zod schemas, and a bad value is
 * reported as one line (`main.ts` exits with code 2).
 *
 * `kvPrecision` sets both the stored snapshot precision and the live cache's (`liveKVPrecision`): f32 → an
 * f32 cache, f16 → an f16 cache (K/V rounded to f16 as they enter it), so a stored snapshot is bit-exact and a
 * resumed session decodes exactly like an uninterrupted one. int8 storage uses an f16 cache and is lossy:
 * resumes are then approximate.
 */
import { parseArgs } from "node:util";
import { isAbsolute, resolve } from "node:path";
import { z } from "zod";
import { parsePolicySpec } from "../kv/registry.ts";
import { REPO_ROOT } from "../model/loader.ts";
import type { KVPrecision as LiveKVPrecision } from "../engine/backend.ts";
import { type OptionDef, type OptionKey, SERVER_OPTIONS } from "./options.ts";

const OPTIONS = Object.entries(SERVER_OPTIONS) as [OptionKey, OptionDef][];

export const configSchema = z.object(
  Object.fromEntries(OPTIONS.map(([k, o]) => [k, o.schema])) as {
    [K in OptionKey]: (typeof SERVER_OPTIONS)[K]["schema"];
  },
);

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

export function defaultConfigValues(): Record<string, unknown> {
  return Object.fromEntries(OPTIONS.filter(([, o]) => o.default).map(([k, o]) => [k, o.default!()]));
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
  let flags: Record<string, string | undefined>;
  try {
    flags = parseArgs({
      args,
      options: Object.fromEntries(OPTIONS.map(([, o]) => [o.flag, { type: "string" as const }])),
      strict: true,
      allowPositionals: false,
    }).values as Record<string, string | undefined>;
  } catch (e) {
    throw new ConfigError((e as Error).message.split("\n")[0]);
  }
  const overrides: Record<string, unknown> = {};
  for (const [key, o] of OPTIONS) {
    const from = flags[o.flag] !== undefined ? "flag" : "env";
    const raw = flags[o.flag] ?? env[o.env];
    if (raw === undefined || raw === "") continue;
    try {
      overrides[key] = o.parse ? o.parse(raw, from) : raw;
    } catch (e) {
      throw new ConfigError(`${from === "flag" ? `--${o.flag}` : o.env}: ${(e as Error).message}`);
    }
  }
  return buildConfig(overrides);
}
