/**
 * The real server (`src/server/main.ts`) as a child process on a free loopback port, for tools and tests
 * that need a separate process (bench:serve, the kill -9 and load-driver tests): its output goes to a log
 * file, `ready` waits for `GET /ready`, `stop()` is SIGTERM (graceful), `kill()` is SIGKILL.
 */
import { resolve } from "node:path";
import { REPO_ROOT } from "../model/loader.ts";
import { freePort } from "./net.ts";

export interface ServerProcess {
  url: string;
  port: number;
  /** The backend the server reports on /ready. */
  backend: string;
  pid: number;
  logPath: string;
  /** Graceful stop (SIGTERM; SIGKILL after `graceMs`); resolves when the process has exited. */
  stop(graceMs?: number): Promise<void>;
  /** SIGKILL: no shutdown of any kind; resolves when the process has exited. */
  kill(): Promise<void>;
}

export interface ServerProcessOptions {
  /** Flags for main.ts (`--port` and `--host` are set here). */
  args?: string[];
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** Where the server's stdout/stderr go (default: a file in a new temp dir). */
  logPath?: string;
  /** Port to listen on (default: a free one). */
  port?: number;
  readyTimeoutMs?: number;
}

export async function startServerProcess(o: ServerProcessOptions = {}): Promise<ServerProcess> {
  const port = o.port ?? freePort();
  const logPath = o.logPath ?? resolve(await Deno.makeTempDir({ prefix: "lethe-server-" }), "server.log");
  const out = await Deno.open(logPath, { write: true, create: true, append: true });
  const err = await Deno.open(logPath, { write: true, append: true });
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      resolve(REPO_ROOT, "src/server/main.ts"),
      ...(o.args ?? []),
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
    ],
    cwd: REPO_ROOT,
    env: o.env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // Keep both pipes drained into the log file.
  const drain = Promise.all([
    child.stdout.pipeTo(out.writable).catch(() => {}),
    child.stderr.pipeTo(err.writable).catch(() => {}),
  ]);
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + (o.readyTimeoutMs ?? 60_000);
  let backend = "?";
  for (;;) {
    if (exited) {
      await drain;
      const tail = (await Deno.readTextFile(logPath)).trim().split("\n").slice(-3).join(" | ");
      throw new Error(`the server exited during startup: ${tail}`);
    }
    try {
      const r = await fetch(`${url}/ready`, { signal: AbortSignal.timeout(1000) });
      if (r.ok) {
        backend = (await r.json()).backend;
        break;
      }
      await r.body?.cancel();
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      await status;
      throw new Error(
        `the server did not become ready within ${o.readyTimeoutMs ?? 60_000} ms (log: ${logPath})`,
      );
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const signal = async (sig: Deno.Signal, graceMs: number) => {
    if (!exited) {
      try {
        child.kill(sig);
      } catch { /* gone */ }
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch { /* gone */ }
      }, graceMs);
      await status;
      clearTimeout(timer);
    }
    await drain;
  };
  return {
    url,
    port,
    backend,
    pid: child.pid,
    logPath,
    stop: (graceMs = 15_000) => signal("SIGTERM", graceMs),
    kill: () => signal("SIGKILL", 0),
  };
}
