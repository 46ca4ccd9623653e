/**
 * The option table (src/server/options.ts) and the config built from it (config.ts): precedence, the one
 * KV-policy spec syntax, one-line errors, the README's tables equal to the table, and no knob read anywhere
 * that the table does not document.
 */
import assert from "node:assert/strict";
import { resolve } from "node:path";
import { ConfigError, configSchema, defaultConfigValues, loadConfig } from "../src/server/config.ts";
import {
  ENV_KNOBS,
  optionsMarkdown,
  README_BEGIN,
  README_END,
  SERVER_OPTIONS,
} from "../src/server/options.ts";
import { REPO_ROOT } from "../src/model/loader.ts";

Deno.test("options: flags and env names are unique; the schema and defaults come from the table", () => {
  const opts = Object.values(SERVER_OPTIONS);
  assert.equal(new Set(opts.map((o) => o.flag)).size, opts.length);
  assert.equal(new Set(opts.map((o) => o.env)).size, opts.length);
  assert.deepEqual(Object.keys(configSchema.shape), Object.keys(SERVER_OPTIONS));
  const d = defaultConfigValues();
  for (const [k, o] of Object.entries(SERVER_OPTIONS)) {
    assert.equal(k in d, "default" in o, k);
  }
  assert.equal(d.leaseMs, 5000);
  assert.deepEqual(d.kvPolicy, { name: "lethe" });
});

Deno.test("config: flag over environment over default; the one KV-policy spec syntax", () => {
  const none = loadConfig([], {});
  assert.equal(none.port, 8080);
  assert.equal(none.leaseMs, 5000);
  assert.equal(none.parallelWork, undefined);
  const env = { PORT: "9001", LETHE_LEASE_MS: "2000", LETHE_KV_POLICY: '{"name":"h2o","budget":64}' };
  const fromEnv = loadConfig([], env);
  assert.deepEqual([fromEnv.port, fromEnv.leaseMs, fromEnv.kvPolicy], [9001, 2000, {
    name: "h2o",
    budget: 64,
  }]);
  const fromFlags = loadConfig(
    [
      "--port",
      "9002",
      "--lease-ms=3000",
      "--kv-policy",
      "lethe:mode=fixed,budget=128",
      "--parallel-work",
      "1e6",
    ],
    env,
  );
  assert.deepEqual(
    [fromFlags.port, fromFlags.leaseMs, fromFlags.kvPolicy, fromFlags.parallelWork],
    [9002, 3000, { name: "lethe", mode: "fixed", budget: 128 }, 1e6],
  );
  assert.deepEqual(loadConfig(["--api-keys", " key-one-123456, key-two-654321 ,"], {}).apiKeys, [
    "key-one-123456",
    "key-two-654321",
  ]);
  // A relative model path: from the working directory as a flag, from the repository in the environment.
  assert.equal(loadConfig(["--model", "m.gguf"], {}).model, resolve(Deno.cwd(), "m.gguf"));
  assert.equal(loadConfig([], { LETHE_MODEL: "m.gguf" }).model, resolve(REPO_ROOT, "m.gguf"));
});

Deno.test("config: bad values are one-line ConfigErrors naming the option", () => {
  const bad: [string[], Record<string, string>, RegExp][] = [
    [["--port", "70000"], {}, /^invalid config 'port': /],
    [[], { PORT: "http" }, /^invalid config 'port': /],
    [["--kv-policy", "lethe:budget"], {}, /^--kv-policy: KV policy spec .*bad parameter "budget"/],
    [[], { LETHE_KV_POLICY: "{nope" }, /^LETHE_KV_POLICY: KV policy spec is not valid JSON/],
    [["--kv-policy", "nope"], {}, /^invalid config 'kvPolicy': /],
    [["--lease-ms", "50"], {}, /^invalid config 'leaseMs': /],
    [["--store", "ftp://x"], {}, /^invalid config 'store': must be memory:/],
    [["--no-such-flag", "1"], {}, /no-such-flag/],
    [["--api-keys", "short"], {}, /at least 8 characters/],
  ];
  for (const [args, env, re] of bad) {
    assert.throws(() => loadConfig(args, env), (e: Error) => {
      assert.ok(e instanceof ConfigError, `${args} ${JSON.stringify(env)}: ${e}`);
      assert.match(e.message, re);
      assert.equal(e.message.split("\n").length, 1);
      return true;
    });
  }
});

Deno.test("config: main.ts prints a bad value as one line and exits 2", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", resolve(REPO_ROOT, "src/server/main.ts"), "--lease-ms", "nope"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 2);
  const err = new TextDecoder().decode(out.stderr).trim();
  assert.match(err, /^lethe-edge: invalid config 'leaseMs': /);
  assert.equal(err.split("\n").length, 1);
});

/** The cells of every markdown table row in `md` (whitespace around cells ignored). */
function cells(md: string): string[][] {
  return md.split("\n").filter((l) => l.startsWith("|") && !/^\|[\s-|]+\|$/.test(l))
    .map((l) => l.slice(1, -1).split(" | ").map((c) => c.trim()));
}

Deno.test("README: the configuration tables are the ones generated from the option table", async () => {
  const readme = await Deno.readTextFile(resolve(REPO_ROOT, "README.md"));
  const a = readme.indexOf(README_BEGIN), b = readme.indexOf(README_END);
  assert.ok(a >= 0 && b > a, "README has the options section markers");
  assert.deepEqual(
    cells(readme.slice(a, b)),
    cells(optionsMarkdown()),
    "README out of date: run `deno task docs:options`",
  );
});

Deno.test("every environment knob read by the code is in the option table", async () => {
  const documented = new Set([
    ...Object.values(SERVER_OPTIONS).map((o) => o.env),
    ...ENV_KNOBS.flatMap((k) => k.env.split(", ")),
    "TMPDIR", // the OS's
  ]);
  const read = new Map<string, string>();
  const walk = async (dir: string) => {
    for await (const e of Deno.readDir(dir)) {
      const p = `${dir}/${e.name}`;
      if (e.isDirectory && e.name !== "build" && e.name !== "node_modules") await walk(p);
      else if (/\.(ts|js|cpp|cu|h)$/.test(e.name)) {
        const text = await Deno.readTextFile(p);
        for (const m of text.matchAll(/(?:Deno\.env\.get|getenv)\(\s*"([A-Z0-9_]+)"/g)) read.set(m[1], p);
      }
    }
  };
  for (const d of ["src", "routes", "loadtest", "native", "tests"]) await walk(resolve(REPO_ROOT, d));
  assert.ok(read.has("LETHE_CUDA_LIB") && read.has("LETHE_NATIVE_LIB_DIR"), "the scan finds knobs");
  // The CPU library's threading threshold is a per-model setting (lethe_config.parallel_work) the server
  // passes from its option table, not an environment variable some library reads process-wide.
  assert.ok(
    !read.has("LETHE_PARALLEL_WORK"),
    `LETHE_PARALLEL_WORK read by ${read.get("LETHE_PARALLEL_WORK")}`,
  );
  const missing = [...read].filter(([name]) => !documented.has(name)).map(([n, p]) => `${n} (${p})`);
  assert.deepEqual(missing, [], "undocumented environment knobs");
});
