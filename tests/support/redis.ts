/** A real redis-server for the tests (no persistence, a free loopback port); fails clearly if not installed. */
import { freePort, waitForPort } from "../../src/client/net.ts";

export async function startRedis(): Promise<{ url: string; stop(): Promise<void> }> {
  const port = freePort();
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("redis-server", {
      args: ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
      stdout: "null",
      stderr: "null",
    }).spawn();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(
        "redis-server is not installed: run `bash scripts/setup.sh` (installs redis-server) and retry",
      );
    }
    throw e;
  }
  const stop = async () => {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
    await child.status;
  };
  try {
    await waitForPort(port);
  } catch (e) {
    await stop();
    throw new Error(`redis-server did not start: ${(e as Error).message}`);
  }
  return { url: `redis://127.0.0.1:${port}`, stop };
}
