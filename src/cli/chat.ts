/**
 * `deno task chat [--session NAME] [--base-url URL]`: a terminal chat against a running server, through the
 * service's HTTP/SSE client (src/client/http.ts).
 *
 * A session NAME is a local name for a server session: the name → id mapping lives in a small JSON file
 * (`--sessions-file`, $LETHE_CHAT_SESSIONS, default ~/.config/lethe-edge/chat-sessions.json), so running the
 * chat again with the same name resumes the conversation where the server's stored cache left it. Each reply
 * streams as it is generated, then one line says what the turn cost: prompt tokens (cached / new), generated
 * tokens, time to first token, tokens/s, what the KV cache keeps. Lines starting with / are commands:
 *
 *   /policy          the session's KV policy           /policy SPEC   a new session under this name with SPEC
 *   /reset           a new session, same policy (the old one is deleted on the server)
 *   /kv              what the session's cache keeps, per layer      /help, /quit
 *
 * SPEC is the one KV-policy syntax (src/kv/policy_spec.ts: `lethe:mode=fixed,budget=64`, JSON), checked with
 * the same schema as the API before anything is sent. Standard input may be a terminal or a pipe.
 */
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { Client, type ClientResponse } from "../client/http.ts";
import { parsePolicySpec, PolicyParamError } from "../kv/registry.ts";
import { parsePolicyText, PolicySpecSyntaxError } from "../kv/policy_spec.ts";
import { intFlag, numFlag, parseFlags, runMain, UsageError } from "./common.ts";

const USAGE = `usage: deno task chat [--session NAME] [--base-url URL] [options]
  --session NAME        local name of the conversation (default "default"); the same name resumes it
  --base-url URL        the server (default $BASE_URL or http://127.0.0.1:8080)
  --api-key KEY         Bearer key (default $API_KEY or $LETHE_API_KEY)
  --policy SPEC         KV policy of a NEW session, e.g. lethe:mode=fixed,budget=64 (default: the server's)
  --max-tokens N        reply length limit (default 200)
  --temperature T       sampling temperature (default 0.8; 0 = greedy)
  --seed N              sampling seed
  --sessions-file PATH  the name → session id file (default $LETHE_CHAT_SESSIONS or
                        ~/.config/lethe-edge/chat-sessions.json)
commands: /policy [SPEC]  /reset  /kv  /help  /quit`;

const HELP = `/policy         show the session's KV policy
/policy SPEC    start a new session under this name with that policy (e.g. streaming:budget=64)
/reset          start over: a new session with the same policy (the old one is deleted)
/kv             what the session's KV cache keeps, per layer
/quit           leave (the session stays on the server: run with the same --session to resume)`;

interface Entry {
  id: string;
  created: number;
}

/** The local name → session id file: `{ "<base url> <name>": {id, created} }`, written atomically. */
class SessionNames {
  constructor(readonly path: string) {}

  static defaultPath(): string {
    const env = Deno.env.get("LETHE_CHAT_SESSIONS");
    if (env) return env;
    const base = Deno.env.get("XDG_CONFIG_HOME") ?? join(homedir(), ".config");
    return join(base, "lethe-edge", "chat-sessions.json");
  }

  async #read(): Promise<Record<string, Entry>> {
    let text: string;
    try {
      text = await Deno.readTextFile(this.path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return {};
      throw e;
    }
    try {
      const v = JSON.parse(text);
      if (typeof v === "object" && v !== null && !Array.isArray(v)) return v;
    } catch { /* reported below */ }
    throw new Error(
      `${this.path} is not a sessions file (a JSON object); move it away or pass --sessions-file`,
    );
  }

  async get(key: string): Promise<Entry | undefined> {
    const e = (await this.#read())[key];
    return e && typeof e.id === "string" ? e : undefined;
  }

  async set(key: string, entry: Entry): Promise<void> {
    const all = await this.#read();
    all[key] = entry;
    await Deno.mkdir(dirname(this.path), { recursive: true });
    const tmp = `${this.path}.${Deno.pid}.tmp`;
    await Deno.writeTextFile(tmp, JSON.stringify(all, null, 2) + "\n");
    await Deno.rename(tmp, this.path);
  }
}

const enc = new TextEncoder();
const color = Deno.stdout.isTerminal() && !Deno.env.get("NO_COLOR");
const dim = (s: string) => (color ? `\x1b[2m${s}\x1b[22m` : s);
const write = (s: string) => Deno.stdout.writeSync(enc.encode(s));

/** The error message of a failed response (the OpenAI error body, or the status). */
function failure(what: string, r: ClientResponse): Error {
  return new Error(`${what}: ${r.json?.error?.message ?? `HTTP ${r.status} ${r.text.slice(0, 120)}`}`);
}

async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let buf = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buf += chunk;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      yield buf.slice(0, i).replace(/\r$/, "");
      buf = buf.slice(i + 1);
    }
  }
  if (buf) yield buf;
}

const kb = (
  n: number,
) => (n >= 1024 * 1024 ? `${(n / 1024 / 1024).toFixed(1)} MB` : `${(n / 1024).toFixed(1)} KB`);

function policyText(p: Record<string, unknown>): string {
  const { name, ...params } = p;
  const rest = Object.entries(params).map(([k, v]) => `${k}=${v}`).join(",");
  return rest ? `${name}:${rest}` : String(name);
}

/** A policy spec text → the API's `kv_policy` object, validated by the API's own schema (throws one line). */
function policyArg(text: string): Record<string, unknown> {
  try {
    const spec = parsePolicyText(text);
    parsePolicySpec(spec);
    return spec;
  } catch (e) {
    if (e instanceof PolicySpecSyntaxError || e instanceof PolicyParamError) throw new UsageError(e.message);
    throw e;
  }
}

class Chat {
  id = "";
  model = "";
  #turn: AbortController | null = null;

  constructor(
    readonly client: Client,
    readonly names: SessionNames,
    readonly name: string,
    readonly sampling: { max_tokens: number; temperature: number; seed?: number },
  ) {}

  get key(): string {
    return `${this.client.baseUrl} ${this.name}`;
  }

  /** Resume the named session, or create it (with `policy`, else the server's default). */
  async open(policy: Record<string, unknown> | undefined): Promise<void> {
    this.model = await this.client.modelId();
    const known = await this.names.get(this.key);
    if (known) {
      const r = await this.client.get(`/v1/sessions/${known.id}`);
      if (r.status === 200) {
        this.id = known.id;
        const s = r.json!;
        write(
          `resumed "${this.name}" (${s.id}): ${s.turns} turns, ${s.tokens} tokens, policy ${
            policyText(s.kv_policy)
          }\n`,
        );
        if (policy) write(dim(`(--policy applies to new sessions; /policy SPEC starts one)\n`));
        await this.#lastExchange();
        return;
      }
      if (r.status !== 404) throw failure(`GET /v1/sessions/${known.id}`, r);
      write(dim(`session "${this.name}" (${known.id}) is gone from the server; starting a new one\n`));
    }
    await this.#create(policy);
  }

  async #create(policy: Record<string, unknown> | undefined): Promise<void> {
    const r = await this.client.post("/v1/sessions", policy ? { kv_policy: policy } : {});
    if (r.status !== 201) throw failure("POST /v1/sessions", r);
    this.id = r.json!.id;
    await this.names.set(this.key, { id: this.id, created: Date.now() });
    write(`new session "${this.name}" (${this.id}), policy ${policyText(r.json!.kv_policy)}\n`);
  }

  async #lastExchange(): Promise<void> {
    const r = await this.client.get(`/v1/sessions/${this.id}/messages`);
    if (r.status !== 200) return;
    const msgs = (r.json!.data as { role: string; content: string }[]).slice(-2);
    for (const m of msgs) {
      const text = m.content.length > 240 ? `${m.content.slice(0, 240)}…` : m.content;
      write(dim(`${m.role}: ${text.trim()}\n`));
    }
  }

  /** Cancel the running turn (Ctrl-C); false when none runs. */
  interrupt(): boolean {
    if (!this.#turn) return false;
    this.#turn.abort();
    return true;
  }

  async say(text: string): Promise<void> {
    this.#turn = new AbortController();
    const t0 = performance.now();
    let first: number | null = null;
    let thinking = false;
    try {
      const r = await this.client.post("/v1/chat/completions", {
        model: this.model,
        messages: [{ role: "user", content: text }],
        session_id: this.id,
        stream: true,
        stream_options: { include_usage: true },
        ...this.sampling,
      }, {
        stream: true,
        signal: this.#turn.signal,
        onEvent: (ev) => {
          const delta = (ev as { choices?: { delta?: Record<string, unknown> }[] })?.choices?.[0]?.delta;
          const reasoning = typeof delta?.reasoning_content === "string" ? delta.reasoning_content : "";
          const content = typeof delta?.content === "string" ? delta.content : "";
          if ((reasoning || content) && first === null) first = performance.now();
          if (reasoning) {
            if (!thinking) write(dim("thinking: "));
            thinking = true;
            write(dim(reasoning));
          }
          if (content) {
            if (thinking) write("\n");
            thinking = false;
            write(content);
          }
        },
      });
      if (r.status !== 200) throw failure("chat", r);
      const sse = r.sse!;
      if (sse.error) throw new Error(`chat: ${sse.error}`);
      write("\n");
      const t1 = performance.now();
      const u = sse.usage, kv = sse.kv;
      if (!u || !kv) return;
      const cached = u.prompt_tokens_details.cached_tokens;
      const n = u.completion_tokens;
      const rate = first !== null && n > 1 && t1 > first
        ? `${Math.round((n - 1) / ((t1 - first) / 1000))} tok/s`
        : "— tok/s";
      const ttft = first !== null ? `${Math.round(first - t0)} ms` : "—";
      write(dim(
        `[prompt ${u.prompt_tokens} (${cached} cached, ${u.prompt_tokens - cached} new) · ${n} generated · ` +
          `TTFT ${ttft} · ${rate} · kept ${kv.kept_per_layer.join("/")} · KV ${kb(kv.kv_bytes)} · ` +
          `stored ${kb(kv.stored_bytes ?? 0)} · ${kv.pruning_rounds} pruning rounds in the session]\n`,
      ));
    } catch (e) {
      if (this.#turn?.signal.aborted) write(dim("\n[cancelled: the turn was not saved]\n"));
      else throw e;
    } finally {
      this.#turn = null;
    }
  }

  async showPolicy(): Promise<void> {
    const r = await this.client.get(`/v1/sessions/${this.id}`);
    if (r.status !== 200) throw failure("GET session", r);
    write(`policy ${policyText(r.json!.kv_policy)}\n`);
  }

  async newSession(policy: Record<string, unknown> | undefined, dropOld: boolean): Promise<void> {
    const old = this.id;
    if (policy === undefined) {
      const r = await this.client.get(`/v1/sessions/${old}`);
      if (r.status === 200) policy = r.json!.kv_policy;
    }
    await this.#create(policy);
    if (dropOld) {
      const d = await this.client.delete(`/v1/sessions/${old}`);
      if (d.status !== 200 && d.status !== 404) throw failure(`DELETE ${old}`, d);
    } else write(dim(`(the previous session ${old} stays on the server)\n`));
  }

  async showKv(): Promise<void> {
    const r = await this.client.get(`/v1/sessions/${this.id}/kv`);
    if (r.status !== 200) throw failure("GET kv", r);
    const v = r.json!;
    write(
      `"${this.name}" (${v.id}) · policy ${policyText({ name: v.policy.name, ...v.policy.params })} · ` +
        `${v.turns} turns · ${v.tokens.length} tokens (${v.next_pos} in the cache)\n`,
    );
    if (v.snapshot_error) {
      write(`the stored cache is unreadable (${v.snapshot_error}): the next turn rebuilds it\n`);
    }
    const width = 32;
    const seen = v.next_pos;
    for (const l of v.layers) {
      const kept = l.positions.length;
      const fill = seen > 0 ? Math.round((kept / seen) * width) : 0;
      const limit = v.limits.per_layer?.[l.layer];
      const mark = limit === undefined ? "" : `  ${v.limits.kind} ${limit}`;
      write(
        `  layer ${String(l.layer).padStart(2)}  ${"█".repeat(fill)}${"░".repeat(width - fill)}  ` +
          `${String(kept).padStart(5)}/${seen}${mark}\n`,
      );
    }
    write(
      `KV ${kb(v.kv_bytes)} · stored ${
        kb(v.stored_bytes)
      } (${v.precision}) · ${v.pruning_rounds} pruning rounds` +
        (v.limits.total ? ` · total budget ${v.limits.total}` : "") + "\n",
    );
  }
}

await runMain(async () => {
  const f = parseFlags(Deno.args, {
    session: { type: "string" },
    "base-url": { type: "string" },
    "api-key": { type: "string" },
    policy: { type: "string" },
    "max-tokens": { type: "string" },
    temperature: { type: "string" },
    seed: { type: "string" },
    "sessions-file": { type: "string" },
  }, USAGE);
  const name = f.session ?? "default";
  if (!/^[\w.-]{1,64}$/.test(name)) {
    throw new UsageError(`--session must be 1–64 letters, digits, . _ - (got "${name}")`);
  }
  const base = f["base-url"] ?? Deno.env.get("BASE_URL") ?? "http://127.0.0.1:8080";
  try {
    new URL(base);
  } catch {
    throw new UsageError(`--base-url is not a URL: "${base}"`);
  }
  const policy = f.policy === undefined ? undefined : policyArg(f.policy);
  const sampling = {
    max_tokens: intFlag("max-tokens", f["max-tokens"], 200, 1),
    temperature: numFlag("temperature", f.temperature, 0.8),
    ...(f.seed === undefined ? {} : { seed: intFlag("seed", f.seed, 0) }),
  };
  const apiKey = f["api-key"] ?? Deno.env.get("API_KEY") ?? Deno.env.get("LETHE_API_KEY");
  const client = new Client(base, { apiKey });
  const chat = new Chat(
    client,
    new SessionNames(f["sessions-file"] ?? SessionNames.defaultPath()),
    name,
    sampling,
  );
  try {
    await chat.open(policy);
  } catch (e) {
    if (e instanceof TypeError) throw new Error(`cannot reach ${base}: ${e.message}`);
    throw e;
  }
  const tty = Deno.stdin.isTerminal();
  if (tty) {
    write(dim("type a message; /help for commands\n"));
    Deno.addSignalListener("SIGINT", () => {
      if (!chat.interrupt()) Deno.exit(130);
    });
  }
  const prompt = () => tty && write("> ");
  prompt();
  for await (const raw of lines(Deno.stdin.readable)) {
    const line = raw.trim();
    try {
      if (line === "") {
        // nothing
      } else if (line === "/quit" || line === "/exit") {
        break;
      } else if (line === "/help") {
        write(HELP + "\n");
      } else if (line === "/kv") {
        await chat.showKv();
      } else if (line === "/reset") {
        await chat.newSession(undefined, true);
      } else if (line === "/policy") {
        await chat.showPolicy();
      } else if (line.startsWith("/policy ")) {
        await chat.newSession(policyArg(line.slice(8).trim()), false);
      } else if (line.startsWith("/")) {
        write(`unknown command ${line.split(/\s/)[0]} (/help lists them)\n`);
      } else {
        await chat.say(line);
      }
    } catch (e) {
      // a failed command or turn is one line; the chat goes on
      console.error(`error: ${(e as Error).message.split("\n")[0]}`);
    }
    prompt();
  }
});
