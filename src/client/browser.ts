/**
 * Debian's headless chromium driven by playwright-core, for the browser tests and `deno task screenshot`:
 * a fresh profile directory every launch, no background networking, and every request the page makes
 * outside loopback refused (and recorded: a test can assert there were none).
 */
import { type BrowserContext, chromium } from "playwright-core";

export const CHROMIUM = Deno.env.get("LETHE_CHROMIUM") ?? "/usr/bin/chromium";

export interface Browser {
  context: BrowserContext;
  /** URLs the page tried to reach outside loopback (refused). */
  external: string[];
  close(): Promise<void>;
}

const LOOPBACK = /^(https?|wss?):\/\/(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?\//;

export async function launchBrowser(viewport = { width: 1440, height: 1000 }): Promise<Browser> {
  try {
    await Deno.stat(CHROMIUM);
  } catch {
    throw new Error(
      `no chromium at ${CHROMIUM}: scripts/setup.sh installs Debian's chromium (or set LETHE_CHROMIUM)`,
    );
  }
  const profile = await Deno.makeTempDir({ prefix: "lethe-chromium-" });
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport,
    args: [
      "--no-sandbox",
      "--headless",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
  const external: string[] = [];
  await context.route(
    (url) => !LOOPBACK.test(url.href) && url.protocol !== "data:" && url.protocol !== "about:",
    (route) => {
      external.push(route.request().url());
      return route.abort("blockedbyclient");
    },
  );
  return {
    context,
    external,
    close: async () => {
      await context.close();
      await Deno.remove(profile, { recursive: true }).catch(() => {});
    },
  };
}
