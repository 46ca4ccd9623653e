/**
 * The playground's tooling:
 *   deno task build:playground   bundle playground/src (browser TypeScript + zod, for the page) into
 *                                playground/dist/app.js with Deno's own bundler (scripts/setup.sh runs it)
 *   deno task screenshot [--out docs/playground.png] [--phone-out docs/playground-phone.png]
 *                                build, start a server (native backend, memory store, loopback), hold a short
 *                                conversation on a pruning session in headless chromium, and save screenshots
 *                                of the page (the README's pictures: regenerate them when the page changes)
 */
import { resolve } from "node:path";
import { REPO_ROOT } from "../model/loader.ts";
import { launchBrowser } from "../client/browser.ts";
import { startServerProcess } from "../client/server_process.ts";
import { parseFlags, runMain, UsageError } from "./common.ts";

// The page's globals, used inside page.evaluate callbacks (they run in chromium, not in Deno).
// deno-lint-ignore no-explicit-any
declare const document: any;
// deno-lint-ignore no-explicit-any
type HTMLElement = any;

export const PLAYGROUND_BUNDLE = resolve(REPO_ROOT, "playground/dist/app.js");

/** Bundle the page's script (minified, for the browser); throws with the bundler's message on failure. */
export async function buildPlayground(): Promise<void> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "bundle",
      "--quiet",
      "--platform",
      "browser",
      "--minify",
      "-o",
      PLAYGROUND_BUNDLE,
      resolve(REPO_ROOT, "playground/src/main.ts"),
    ],
    cwd: REPO_ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`deno bundle failed: ${new TextDecoder().decode(out.stderr).trim().split("\n")[0]}`);
  }
}

const USAGE = `usage: deno run -A src/cli/playground.ts build | screenshot [--out PNG] [--phone-out PNG]`;

/** A short conversation on a Lethe fixed-budget session (greedy: the same pictures every run). */
const SCRIPT = [
  "Once upon a time, there was a little girl named Lily.",
  "She found a red ball in the park.",
  "Then a big dog came and wanted to play.",
];

async function screenshot(out: string, phoneOut: string): Promise<void> {
  await buildPlayground();
  const srv = await startServerProcess({
    args: ["--store", "memory:", "--backend", "native", "--log-level", "warn", "--default-max-tokens", "96"],
  });
  const browser = await launchBrowser({ width: 1440, height: 1160 });
  try {
    const page = await browser.context.newPage();
    await page.goto(`${srv.url}/`);
    await page.waitForFunction(() => document.getElementById("model-line")!.textContent!.includes("context"));
    await page.click("#generation summary");
    await page.fill("#temperature", "0");
    await page.dispatchEvent("#temperature", "change");
    await page.fill("#max-tokens", "96");
    await page.dispatchEvent("#max-tokens", "change");
    await page.selectOption("#policy-name", "lethe");
    await page.selectOption("#param-mode", "fixed");
    await page.fill("#param-budget", "48");
    await page.click("#policy-form button[type=submit]");
    await page.waitForFunction(() => document.getElementById("session-id")!.textContent!.startsWith("sess_"));
    for (const text of SCRIPT) {
      const n = await page.locator(".msg.assistant").count();
      await page.fill("#composer-input", text);
      await page.press("#composer-input", "Enter");
      await page.waitForFunction(
        (n) =>
          // deno-lint-ignore no-explicit-any
          !(globalThis as any).playground.busy &&
          document.querySelectorAll(".msg.assistant").length === n + 1,
        n,
      );
    }
    // deno-lint-ignore no-explicit-any
    await page.waitForFunction(() => (globalThis as any).playground.kv.view?.turns === 3);
    await page.selectOption("#lens-layer", "2");
    await page.click("#generation summary"); // closed again
    await page.evaluate(() => {
      for (const p of document.querySelectorAll(".panel")) p.scrollTop = 0;
      document.getElementById("lens")!.scrollTop = 1e6;
      (document.activeElement as HTMLElement | null)?.blur();
    });
    // the tooltip of a kept token of layer 2
    const box = (await page.locator("#strip").boundingBox())!;
    const wrap = (await page.locator("#strip-wrap").boundingBox())!;
    await page.mouse.move(Math.min(box.x + box.width, wrap.x + wrap.width) - 60, box.y + 2 * 20 + 8);
    await page.screenshot({ path: out });
    const phone = await browser.context.newPage();
    await phone.setViewportSize({ width: 390, height: 844 });
    await phone.goto(`${srv.url}/`);
    // deno-lint-ignore no-explicit-any
    await phone.waitForFunction(() => (globalThis as any).playground?.kv.view?.turns === 3);
    await phone.click("#tab-kv");
    await phone.screenshot({ path: phoneOut });
    console.log(`wrote ${out} and ${phoneOut}`);
  } finally {
    await browser.close();
    await srv.stop();
  }
}

if (import.meta.main) {
  await runMain(async () => {
    const [cmd, ...rest] = Deno.args;
    if (cmd === "build") return await buildPlayground();
    if (cmd !== "screenshot") throw new UsageError(USAGE);
    const f = parseFlags(rest, { out: { type: "string" }, "phone-out": { type: "string" } }, USAGE);
    await screenshot(
      resolve(f.out ?? resolve(REPO_ROOT, "docs/playground.png")),
      resolve(f["phone-out"] ?? resolve(REPO_ROOT, "docs/playground-phone.png")),
    );
  });
}
