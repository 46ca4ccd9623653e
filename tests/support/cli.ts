/** The repository's command-line tools run as `deno run -A` runs them, for the CLI tests. */
import { resolve } from "node:path";
import { REPO_ROOT } from "../../src/model/loader.ts";

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Run `script` (a path from the repository root, e.g. "src/cli/chat.ts") with `args` from the repository root:
 * `stdin` is written and closed (none: the tool reads /dev/null), `env` adds to this process's environment.
 */
export async function runCli(
  script: string,
  args: string[],
  opts: { stdin?: string; env?: Record<string, string> } = {},
): Promise<CliResult> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", resolve(REPO_ROOT, script), ...args],
    cwd: REPO_ROOT,
    env: opts.env,
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(opts.stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}
