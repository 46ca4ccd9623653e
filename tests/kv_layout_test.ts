/**
 * src/kv/ has no import cycle: the contract, the registry, the shared pieces and the policies import in one
 * direction (registry → policies → base/select/score_table/budget/far_decay → contract/kv_index/limits), which
 * `deno info` shows as a tree.
 */
import assert from "node:assert/strict";
import { dirname, relative, resolve } from "node:path";
import { REPO_ROOT } from "../src/model/loader.ts";

Deno.test("src/kv: no import cycle among its modules", async () => {
  const root = resolve(REPO_ROOT, "src", "kv");
  const graph = new Map<string, string[]>();
  const walk = async (dir: string) => {
    for await (const e of Deno.readDir(dir)) {
      const p = resolve(dir, e.name);
      if (e.isDirectory) await walk(p);
      else if (e.name.endsWith(".ts")) {
        const text = await Deno.readTextFile(p);
        const deps = [...text.matchAll(/^\s*(?:import|export)\b[^;]*?from\s+"(\.[^"]+)"/gms)]
          .map((m) => resolve(dirname(p), m[1]))
          .filter((d) => d.startsWith(root + "/"));
        graph.set(p, deps);
      }
    }
  };
  await walk(root);
  assert.ok(graph.size >= 15, `read ${graph.size} modules`);
  const state = new Map<string, "open" | "done">();
  const visit = (m: string, path: string[]) => {
    if (state.get(m) === "done") return;
    if (state.get(m) === "open") {
      const cycle = [...path.slice(path.indexOf(m)), m].map((x) => relative(root, x));
      assert.fail(`import cycle: ${cycle.join(" → ")}`);
    }
    state.set(m, "open");
    for (const d of graph.get(m) ?? []) visit(d, [...path, m]);
    state.set(m, "done");
  };
  for (const m of graph.keys()) visit(m, []);
  // and the one direction the contract gives: no shared piece imports the registry or a policy
  for (const [m, deps] of graph) {
    if (m.includes("/policies/") || m.endsWith("registry.ts")) continue;
    for (const d of deps) {
      assert.ok(
        !d.includes("/policies/") && !d.endsWith("registry.ts"),
        `${relative(root, m)} imports ${relative(root, d)}`,
      );
    }
  }
});
