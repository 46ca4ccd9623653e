/**
 * `deno task start`: parse the config (flags and env, see config.ts), start the server, stop gracefully on
 * SIGINT/SIGTERM. A bad config prints one line and exits with code 2.
 */
import { ConfigError, loadConfig, type ServerConfig } from "./config.ts";
import { startServer } from "./server.ts";

if (import.meta.main) {
  let cfg: ServerConfig;
  try {
    cfg = loadConfig();
  } catch (e) {
    if (e instanceof ConfigError) {
      console.error(`lethe-edge: ${e.message}`);
      Deno.exit(2);
    }
    throw e;
  }
  let srv;
  try {
    srv = await startServer(cfg);
  } catch (e) {
    console.error(`lethe-edge: cannot start: ${String((e as Error)?.message ?? e).split("\n")[0]}`);
    Deno.exit(1);
  }
  const stop = (sig: string) => {
    srv.shutdown(sig).then(() => Deno.exit(0), () => Deno.exit(1));
  };
  Deno.addSignalListener("SIGINT", () => stop("SIGINT"));
  Deno.addSignalListener("SIGTERM", () => stop("SIGTERM"));
}
