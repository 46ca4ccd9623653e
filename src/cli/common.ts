/**
 * Shared plumbing of the command-line tools: flag parsing with one-line errors, and a main() wrapper that
 * turns any thrown error into a one-line message on stderr and a non-zero exit code.
 */
import { parseArgs, type ParseArgsConfig } from "node:util";

export class UsageError extends Error {
  override name = "UsageError";
}

type Options = NonNullable<ParseArgsConfig["options"]>;

export function parseFlags<T extends Options>(args: string[], options: T, usage: string) {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(usage);
    Deno.exit(0);
  }
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false }).values;
  } catch (e) {
    throw new UsageError(`${(e as Error).message.split("\n")[0]}\n${usage}`);
  }
}

export function intFlag(name: string, v: string | undefined, def: number, min = 0): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) {
    throw new UsageError(`--${name} must be an integer ≥ ${min}, got "${v}"`);
  }
  return n;
}

export function numFlag(name: string, v: string | undefined, def: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (v.trim() === "" || !Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got "${v}"`);
  return n;
}

/** Run a CLI entry point: errors become one line on stderr and exit code 2 (usage) or 1 (anything else). */
export async function runMain(main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (e) {
    const err = e as Error;
    const first = String(err?.message ?? err).split("\n");
    if (err instanceof UsageError) {
      console.error(`error: ${first[0]}`);
      if (first.length > 1) console.error(first.slice(1).join("\n"));
      Deno.exit(2);
    }
    console.error(`error: ${first[0]}`);
    if (Deno.env.get("LETHE_DEBUG")) console.error(err?.stack);
    Deno.exit(1);
  }
}
