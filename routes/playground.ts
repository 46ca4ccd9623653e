/**
 * The playground page: `GET /` and its assets under `/playground/` (playground/: the page, its styles, and the
 * script bundled from playground/src by `deno task build:playground`, which scripts/setup.sh runs). Only the
 * listed files are served; the page may load nothing from anywhere else (Content-Security-Policy 'self'), and
 * it talks to the API like any client (its requests carry the API key the user gives it).
 */
import type { OpenAPIHono } from "@hono/zod-openapi";
import { resolve } from "node:path";
import type { AppEnv } from "../src/server/http/app.ts";
import { REPO_ROOT } from "../src/model/loader.ts";
import { ServiceError } from "../src/server/errors.ts";

const DIR = resolve(REPO_ROOT, "playground");

const FILES: Record<string, { path: string; type: string }> = {
  "/": { path: "index.html", type: "text/html; charset=utf-8" },
  "/playground/style.css": { path: "style.css", type: "text/css; charset=utf-8" },
  "/playground/app.js": { path: "dist/app.js", type: "text/javascript; charset=utf-8" },
  "/playground/favicon.svg": { path: "favicon.svg", type: "image/svg+xml" },
};

const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
  "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

export function registerPlayground(app: OpenAPIHono<AppEnv>): void {
  for (const [route, f] of Object.entries(FILES)) {
    app.get(route, async (c) => {
      const path = resolve(DIR, f.path);
      let info: Deno.FileInfo;
      try {
        info = await Deno.stat(path);
      } catch {
        throw new ServiceError(
          "unavailable",
          `The playground is not built: run \`deno task build:playground\` (scripts/setup.sh does) and reload.`,
          null,
          "playground_not_built",
        );
      }
      const etag = `W/"${info.size.toString(36)}-${(info.mtime?.getTime() ?? 0).toString(36)}"`;
      const headers = {
        "content-type": f.type,
        "cache-control": "no-cache",
        etag,
        "content-security-policy": CSP,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
      };
      if (c.req.header("if-none-match") === etag) return c.body(null, 304, headers);
      return c.body(await Deno.readFile(path), 200, headers);
    });
  }
}
