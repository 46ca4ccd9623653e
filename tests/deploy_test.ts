/**
 * The deployable image, checked without a container engine: the Dockerfile passes a Dockerfile linter
 * (dockerfile-utils) and the rules a production image must keep (a build stage and a slim runtime stage, pinned
 * bases, a non-root user, a healthcheck, models mounted not baked in, Deno itself as the exec-form command so
 * SIGTERM reaches the graceful shutdown); the compose file runs Redis and two instances behind one port; and
 * the runtime stage's commands work when run outside a container: its files (as its COPY lines name them) in
 * a fresh directory, the command as an unprivileged user with the cache only (no network), the healthcheck
 * answering, a completion and the playground page served, SIGTERM stopping it cleanly.
 */
import assert from "node:assert/strict";
import { resolve } from "node:path";
import { validate } from "dockerfile-utils";
import YAML from "yaml";
import { REPO_ROOT, SHARED_MODELS } from "../src/model/loader.ts";
import { freePort } from "../src/client/net.ts";

interface Instruction {
  op: string;
  args: string;
  line: number;
}

/** Instructions of a Dockerfile (continuations joined, comments dropped), split into stages at FROM. */
function stages(text: string): Instruction[][] {
  const out: Instruction[][] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    let l = lines[i];
    const line = i + 1;
    if (/^\s*(#|$)/.test(l)) continue;
    while (/\\\s*$/.test(l) && i + 1 < lines.length) {
      l = l.replace(/\\\s*$/, " ") + lines[++i].replace(/^\s*#.*$/, "");
    }
    const m = /^\s*(\w+)\s+(.*)$/s.exec(l)!;
    const ins = { op: m[1].toUpperCase(), args: m[2].trim().replace(/\s+/g, " "), line };
    if (ins.op === "FROM") out.push([]);
    out[out.length - 1].push(ins);
  }
  return out;
}

const DOCKERFILE = resolve(REPO_ROOT, "Dockerfile");
const all = (s: Instruction[], op: string) => s.filter((i) => i.op === op);
const one = (s: Instruction[], op: string) => {
  const xs = all(s, op);
  assert.equal(xs.length, 1, `exactly one ${op} in the stage`);
  return xs[0];
};
const execForm = (args: string): string[] => {
  const v = JSON.parse(args.replace(/^CMD\s+/, ""));
  assert.ok(Array.isArray(v) && v.every((x) => typeof x === "string"), `exec form: ${args}`);
  return v;
};

Deno.test("Dockerfile: the linter finds nothing; a build and a slim, non-root runtime stage", async () => {
  const text = await Deno.readTextFile(DOCKERFILE);
  const problems = validate(text).map((d) => `line ${d.range.start.line + 1}: ${d.message}`);
  assert.deepEqual(problems, [], "dockerfile-utils");
  const [build, runtime, ...rest] = stages(text);
  assert.deepEqual(rest, [], "two stages");
  assert.match(build[0].args, / AS build$/i);
  for (const s of [build, runtime]) {
    const image = s[0].args.split(" ")[0];
    assert.match(image, /^[\w./-]+:[\w.-]+$/, `a tagged base image: ${image}`);
    assert.ok(!/:latest$/.test(image), `pinned, not latest: ${image}`);
    for (const r of all(s, "RUN").filter((r) => /apt-get install/.test(r.args))) {
      assert.match(r.args, /--no-install-recommends/);
      assert.match(r.args, /rm -rf \/var\/lib\/apt\/lists/, "apt lists removed in the same layer");
    }
  }
  // Build: the native library is compiled here, for a portable CPU level.
  assert.ok(all(build, "RUN").some((r) => /deno task build:native/.test(r.args)));
  assert.ok(all(build, "RUN").some((r) => /deno task build:playground/.test(r.args)), "the page's script");
  assert.ok(all(build, "ARG").some((a) => /^LETHE_CPU_ARCH=x86-64-v\d$/.test(a.args)));
  // Runtime: slim, no compiler, everything from the build stage.
  assert.match(runtime[0].args, /slim/);
  assert.ok(!all(runtime, "RUN").some((r) => /g\+\+|build-essential|npm /.test(r.args)), "no toolchain");
  for (const c of all(runtime, "COPY")) {
    assert.match(c.args, /^--from=build /, `from the build stage: ${c.args}`);
  }
  assert.ok(all(runtime, "COPY").some((c) => /liblethe_cpu\.so/.test(c.args)));
  // Non-root, set before the command runs.
  const user = one(runtime, "USER");
  assert.ok(!/^(root|0)(:|$)/.test(user.args), `non-root user: ${user.args}`);
  assert.ok(runtime.findIndex((i) => i.op === "USER") < runtime.findIndex((i) => i.op === "CMD"));
  // Models mounted, never copied in.
  assert.ok(all(runtime, "VOLUME").some((v) => /"\/models"/.test(v.args)));
  assert.match(all(runtime, "ENV").map((e) => e.args).join(" "), /LETHE_MODEL=\/models\//);
  for (const s of [build, runtime]) {
    for (const c of all(s, "COPY")) assert.ok(!/shared|\.gguf|safetensors|\bmodels\b/.test(c.args), c.args);
  }
  // Deno as PID 1 (exec form, not `deno task` or a shell), SIGTERM as the stop signal, a healthcheck.
  const cmd = execForm(one(runtime, "CMD").args);
  assert.deepEqual(cmd.slice(0, 2), ["deno", "run"]);
  assert.ok(cmd.includes("--cached-only"), "no module fetching at run time");
  assert.equal(cmd[cmd.length - 1], "src/server/main.ts");
  assert.equal(one(runtime, "STOPSIGNAL").args, "SIGTERM");
  assert.match(one(runtime, "HEALTHCHECK").args, /CMD \[/);
  assert.ok(all(runtime, "EXPOSE").some((e) => e.args === "8080"));
});

Deno.test("compose: Redis and two instances behind one port (haproxy); only the balancer publishes a port", async () => {
  const compose = YAML.parse(await Deno.readTextFile(resolve(REPO_ROOT, "deploy/compose.yaml")), {
    merge: true,
  });
  const services = compose.services as Record<string, Record<string, unknown>>;
  const lethe = Object.entries(services).filter(([, s]) => s.image === "lethe-edge:latest");
  assert.equal(lethe.length, 2, "two instances of the image");
  assert.ok(services.redis && /^redis:\d/.test(String(services.redis.image)));
  assert.ok(String((services.redis.command as string[]).join(" ")).includes("--appendonly yes"));
  for (const [name, s] of lethe) {
    const env = s.environment as Record<string, string>;
    assert.equal(env.LETHE_STORE, "redis://redis:6379", name);
    assert.match(env.LETHE_MODEL, /^\/models\//);
    assert.ok(
      (s.volumes as string[]).some((v) => /:\/models:ro$/.test(v)),
      `${name}: models mounted read-only`,
    );
    assert.equal(s.ports, undefined, `${name} publishes no port`);
    assert.ok(parseInt(String(s.stop_grace_period)) * 1000 > Number(env.LETHE_SHUTDOWN_DEADLINE_MS));
    assert.deepEqual(s.depends_on, { redis: { condition: "service_healthy" } });
  }
  const published = Object.entries(services).filter(([, s]) => s.ports);
  assert.deepEqual(published.map(([n]) => n), ["lb"]);
  const cfg = await Deno.readTextFile(resolve(REPO_ROOT, "deploy/haproxy.cfg"));
  for (const [name] of lethe) assert.match(cfg, new RegExp(`server ${name} ${name}:8080 check`));
  assert.match(cfg, /option httpchk GET \/ready/);
  assert.ok((services.lb.volumes as string[]).some((v) => v.startsWith("./haproxy.cfg:")));
});

Deno.test({
  name:
    "the runtime stage's command works outside a container: unprivileged, cache only, healthy, stops on SIGTERM",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const [build, runtime] = stages(await Deno.readTextFile(DOCKERFILE));
    const deno = resolve(REPO_ROOT, "node_modules/.lethe-bin/deno");
    const root = await Deno.makeTempDir({ prefix: "lethe-image-" });
    const app = `${root}/app`;
    const run = async (cmd: string[], env: Record<string, string> = {}) => {
      const out = await new Deno.Command(cmd[0], {
        args: cmd.slice(1),
        env,
        cwd: app,
        stdout: "piped",
        stderr: "piped",
      })
        .output();
      assert.ok(out.success, `${cmd.join(" ")}: ${new TextDecoder().decode(out.stderr).slice(-600)}`);
    };
    try {
      // The runtime stage's files, exactly as its COPY lines name them (the build stage's /app = this checkout).
      await Deno.mkdir(app, { recursive: true });
      for (const c of all(runtime, "COPY")) {
        const parts = c.args.split(" ").filter((p) => !p.startsWith("--"));
        const dest = parts.pop()!;
        for (const src of parts) {
          const rel = src.replace(/^\/app\/?/, "");
          if (rel === "deno" || rel === ".deno-cache") continue; // the binary, and the cache made below
          const to = dest.endsWith("/") || parts.length > 1
            ? `${app}/${dest.replace(/^\.\//, "")}/${rel.split("/").pop()}`
            : resolve(app, dest);
          await Deno.mkdir(resolve(to, ".."), { recursive: true });
          await run(["cp", "-al", resolve(REPO_ROOT, rel), to]);
        }
      }
      // The build stage's cache step, as written there.
      const env = Object.fromEntries(
        all(runtime, "ENV").flatMap((e) => [...e.args.matchAll(/(\w+)=(\S+)/g)].map((m) => [m[1], m[2]])),
      );
      const cacheCmd = all(build, "RUN").map((r) => /deno cache [^&]+/.exec(r.args)?.[0]).find(Boolean)!;
      const denoDir = `${app}/.deno-cache`;
      await run([deno, ...cacheCmd.trim().split(" ").slice(1)], { DENO_DIR: denoDir, PATH: "/usr/bin:/bin" });
      await run(["chmod", "-R", "a+rX", root]);
      await Deno.mkdir(`${root}/data`);
      await run(["chown", "-R", "nobody:nogroup", `${root}/data`, denoDir]);

      // The command, as the unprivileged user, with the image's environment (paths and port made local).
      const port = freePort();
      const localEnv = {
        ...env,
        PATH: `${resolve(deno, "..")}:/usr/bin:/bin`,
        HOME: root,
        DENO_DIR: denoDir,
        HOST: "127.0.0.1",
        PORT: String(port),
        LETHE_MODEL: SHARED_MODELS.stories260K,
        LETHE_STORE: `denokv:${root}/data/sessions.sqlite`,
        // No registry reachable: whatever the command needs must be in the image already.
        NPM_CONFIG_REGISTRY: "http://127.0.0.1:9/",
      };
      const asUser = (argv: string[]) =>
        new Deno.Command("setpriv", {
          args: ["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", ...argv],
          env: localEnv,
          clearEnv: true,
          cwd: app,
          stdout: "piped",
          stderr: "piped",
        });
      const cmd = execForm(one(runtime, "CMD").args);
      const server = asUser([deno, ...cmd.slice(1)]).spawn();
      const logs = Promise.all([server.stdout, server.stderr].map((s) => new Response(s).text()));
      const health = execForm(one(runtime, "HEALTHCHECK").args.replace(/^.*?CMD /, ""));
      let healthy = false;
      for (let i = 0; i < 120 && !healthy; i++) {
        healthy = (await asUser([deno, ...health.slice(1)]).output()).success;
        if (!healthy) await new Promise((r) => setTimeout(r, 250));
      }
      let status: Deno.CommandStatus;
      try {
        assert.ok(healthy, "the healthcheck passes");
        const r = await fetch(`http://127.0.0.1:${port}/v1/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model: "stories260K", prompt: "Once upon a time", max_tokens: 8 }),
        });
        assert.equal(r.status, 200, await r.text());
        // The playground page and its script (built in the build stage) are served.
        for (const [path, type] of [["/", /text\/html/], ["/playground/app.js", /javascript/]] as const) {
          const page = await fetch(`http://127.0.0.1:${port}${path}`);
          assert.equal(page.status, 200, `${path}: ${await page.text()}`);
          assert.match(page.headers.get("content-type") ?? "", type);
        }
      } finally {
        server.kill("SIGTERM");
        status = await server.status;
      }
      const [out, err] = await logs;
      assert.equal(status.code, 0, `a clean exit on SIGTERM: ${err.slice(-500)}`);
      assert.match(out, /"msg":"stopped"/, "the graceful shutdown ran");
      assert.ok((await Deno.stat(`${root}/data/sessions.sqlite`)).isFile, "the store is in the data volume");
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
});
