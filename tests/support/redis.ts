/**
 * A real redis-server for the tests on a free loopback port; fails clearly if not installed. By default
 * nothing is persisted; with `persist` every write is in an append-only file (fsync always) in a temp
 * directory, so `kill()` (SIGKILL) and `restart()` lose nothing that was acknowledged.
 */
import { freePort, waitForPort } from "../../src/client/net.ts";

export interface RedisProcess {
  url: string;
  port: number;
  /** SIGKILL; resolves once it exited. */
  kill(): Promise<void>;
  /** Start it again on the same port (and files). */
  restart(): Promise<void>;
  /** Kill it and remove its files. */
  stop(): Promise<void>;
}

export async function startRedis(opts: { persist?: boolean } = {}): Promise<RedisProcess> {
  const port = freePort();
  const dir = opts.persist ? await Deno.makeTempDir({ prefix: "lethe-redis-" }) : null;
  const args = ["--port", String(port), "--bind", "127.0.0.1", "--save", ""];
  args.push(
    ...(dir ? ["--dir", dir, "--appendonly", "yes", "--appendfsync", "always"] : ["--appendonly", "no"]),
  );
  let child: Deno.ChildProcess | null = null;
  const kill = async () => {
    if (!child) return;
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
    await child.status;
    child = null;
  };
  const spawn = async () => {
    try {
      child = new Deno.Command("redis-server", { args, stdout: "null", stderr: "null" }).spawn();
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new Error(
          "redis-server is not installed: run `bash scripts/setup.sh` (installs redis-server) and retry",
        );
      }
      throw e;
    }
    try {
      await waitForPort(port);
    } catch (e) {
      await kill();
      throw new Error(`redis-server did not start: ${(e as Error).message}`);
    }
  };
  await spawn();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    kill,
    restart: spawn,
    stop: async () => {
      await kill();
      if (dir) await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}
