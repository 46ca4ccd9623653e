/// <reference lib="dom" />
/**
 * The playground page (served at `/` by routes/playground.ts; bundled by `deno task build:playground`).
 *
 * One session at a time: its conversation (chat_view.ts), what its KV cache keeps (kv_view.ts) and its memory
 * over the turns (timeline.ts). Everything comes from the documented API: the page streams its chat turns,
 * reads `GET /v1/sessions/{id}/kv` and `/messages` when a session opens or a turn is stored, and watches
 * `GET /v1/sessions/{id}/events` for what a running turn prunes (also turns sent by other clients, e.g.
 * `deno task chat`). The sessions this browser made are remembered in localStorage.
 */
import { Api, ApiError, type KvView } from "./api.ts";
import { ChatView } from "./chat_view.ts";
import { byId, h, int } from "./dom.ts";
import { KvPanel } from "./kv_view.ts";
import { PolicyForm } from "./policy_form.ts";
import { Timeline } from "./timeline.ts";

const STORE = "lethe-playground";

interface SavedSession {
  id: string;
  title: string;
  policy: string;
}

interface Saved {
  apiKey?: string;
  current?: string;
  sessions: SavedSession[];
  policy?: Record<string, unknown>;
  sampling?: { max_tokens?: string; temperature?: string; seed?: string };
}

function load(): Saved {
  try {
    const v = JSON.parse(localStorage.getItem(STORE) ?? "{}");
    return { sessions: Array.isArray(v.sessions) ? v.sessions : [], ...v };
  } catch {
    return { sessions: [] };
  }
}

const saved = load();
const save = () => localStorage.setItem(STORE, JSON.stringify(saved));

const policyText = (p: Record<string, unknown>) => {
  const { name, ...rest } = p;
  const params = Object.entries(rest).map(([k, v]) => `${k}=${v}`).join(", ");
  return params ? `${name} (${params})` : String(name);
};

class Playground {
  api = new Api(saved.apiKey ?? null);
  model = "";
  current: string | null = null;
  busy = false;
  readonly chat = new ChatView();
  readonly kv = new KvPanel();
  readonly timeline = new Timeline();
  readonly form = new PolicyForm(saved.policy);
  #watch: AbortController | null = null;
  #turn: AbortController | null = null;
  #liveRounds = 0;
  /** The turn this page is sending (its end needs no reload: say() refreshes). */
  #ownTurn = -1;

  readonly sessionSelect = byId<HTMLSelectElement>("session-select");
  readonly sessionInfo = byId("session-info");
  readonly input = byId<HTMLTextAreaElement>("composer-input");
  readonly send = byId<HTMLButtonElement>("send");
  readonly stop = byId<HTMLButtonElement>("stop");

  async start(): Promise<void> {
    this.#wire();
    this.#renderSessions();
    await this.#connect();
    if (saved.current && saved.sessions.some((s) => s.id === saved.current)) await this.open(saved.current);
    else this.#empty();
  }

  async #connect(): Promise<void> {
    const line = byId("model-line");
    try {
      const m = await this.api.model();
      this.model = m.id;
      line.textContent = `${m.id} · context ${int(m.context_length)} tokens`;
    } catch (e) {
      line.textContent = e instanceof ApiError && e.status === 401
        ? "This server needs an API key: set it under Settings."
        : `Cannot reach the server: ${(e as Error).message}`;
      byId<HTMLDetailsElement>("settings").open = true;
    }
  }

  #wire(): void {
    byId("policy-form").addEventListener("submit", (e) => {
      e.preventDefault();
      void this.#guard(() => this.create());
    });
    this.sessionSelect.addEventListener("change", () => {
      if (this.sessionSelect.value) void this.#guard(() => this.open(this.sessionSelect.value));
    });
    byId("open-id-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const input = byId<HTMLInputElement>("open-id");
      const id = input.value.trim();
      if (id) void this.#guard(() => this.open(id, true)).then(() => (input.value = ""));
    });
    byId("forget-session").addEventListener("click", () => {
      if (!this.current) return;
      saved.sessions = saved.sessions.filter((s) => s.id !== this.current);
      this.current = null;
      delete saved.current;
      save();
      this.#renderSessions();
      this.#empty();
    });
    byId("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      void this.#guard(() => this.say());
    });
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        byId<HTMLFormElement>("composer").requestSubmit();
      }
    });
    this.stop.addEventListener("click", () => this.#turn?.abort());
    for (const id of ["max-tokens", "temperature", "seed"]) {
      const el = byId<HTMLInputElement>(id);
      const key = id.replace("-", "_") as "max_tokens" | "temperature" | "seed";
      el.value = saved.sampling?.[key] ?? el.value;
      el.addEventListener("change", () => {
        saved.sampling = { ...saved.sampling, [key]: el.value };
        save();
      });
    }
    byId("api-key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const v = byId<HTMLInputElement>("api-key").value.trim();
      saved.apiKey = v || undefined;
      save();
      this.api = new Api(saved.apiKey ?? null);
      void this.#connect();
    });
    // Narrow screens: one panel at a time behind tabs.
    const tabs = [...document.querySelectorAll<HTMLButtonElement>("[role=tab]")];
    const select = (t: HTMLButtonElement, focus = false) => {
      for (const x of tabs) {
        x.setAttribute("aria-selected", String(x === t));
        x.tabIndex = x === t ? 0 : -1;
      }
      document.body.dataset.tab = t.dataset.tab;
      if (t.dataset.tab === "kv") this.kv.redraw();
      if (focus) t.focus();
    };
    for (const [i, t] of tabs.entries()) {
      t.addEventListener("click", () => select(t));
      t.addEventListener("keydown", (e) => {
        const d = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
        if (d) select(tabs[(i + d + tabs.length) % tabs.length], true);
      });
    }
  }

  /** Run an action; its error becomes the status line instead of an unhandled rejection. */
  async #guard(f: () => Promise<void>): Promise<void> {
    try {
      await f();
    } catch (e) {
      this.chat.status.textContent = `Error: ${(e as Error).message}`;
    }
  }

  #renderSessions(): void {
    const opts = saved.sessions.map((s) =>
      h("option", { value: s.id, selected: s.id === this.current }, `${s.title} — ${s.policy}`)
    );
    this.sessionSelect.replaceChildren(
      h(
        "option",
        { value: "", selected: !this.current, disabled: true },
        saved.sessions.length ? "Choose a session…" : "No sessions yet",
      ),
      ...opts,
    );
  }

  #empty(): void {
    this.chat.clear(
      "Pick a KV policy and create a session, or just send a message: a session is created with the policy shown.",
    );
    this.kv.show(null);
    this.timeline.show([]);
    this.sessionInfo.textContent = "No session open.";
  }

  async create(): Promise<void> {
    const spec = this.form.validate();
    if (!spec) {
      this.form.error.focus();
      throw new Error("the KV policy parameters are invalid (see the policy form)");
    }
    saved.policy = spec;
    const s = await this.api.createSession(spec);
    saved.sessions.unshift({ id: s.id, title: "New session", policy: policyText(spec) });
    save();
    await this.open(s.id);
    this.chat.status.textContent = `Created ${s.id} with ${policyText(spec)}.`;
  }

  /** Open session `id`: its conversation, its cache, and a watch on its turns. */
  async open(id: string, remember = false): Promise<void> {
    this.#watch?.abort();
    const info = await this.api.session(id).catch((e) => {
      if (e instanceof ApiError && e.status === 404) {
        saved.sessions = saved.sessions.filter((s) => s.id !== id);
        save();
        this.#renderSessions();
      }
      throw e;
    });
    this.current = saved.current = id;
    if (remember && !saved.sessions.some((s) => s.id === id)) {
      saved.sessions.unshift({ id, title: "Opened by id", policy: policyText(info.kv_policy) });
    }
    save();
    this.#renderSessions();
    const [messages, view] = await Promise.all([this.api.messages(id), this.api.kv(id)]);
    this.chat.show(messages, view.timeline);
    this.#showView(view);
    this.#startWatch(id);
  }

  #showView(v: KvView): void {
    this.kv.show(v);
    this.timeline.show(v.timeline);
    const last = v.timeline[v.timeline.length - 1];
    this.sessionInfo.textContent = `Policy ${v.policy.name} · ${v.turns} turns` +
      (last ? ` · the next turn resumes from ${int(v.next_pos)} cached tokens` : "");
    this.sessionInfo.title = policyText({ name: v.policy.name, ...v.policy.params });
    byId("session-id").textContent = v.id;
  }

  async refresh(): Promise<void> {
    if (!this.current) return;
    this.#showView(await this.api.kv(this.current));
  }

  #startWatch(id: string): void {
    const ctrl = new AbortController();
    this.#watch = ctrl;
    const run = async () => {
      while (!ctrl.signal.aborted) {
        try {
          await this.api.watch(id, (ev) => this.#event(ev), ctrl.signal);
        } catch { /* dropped, refused (too many watchers) or aborted */ }
        if (!ctrl.signal.aborted) await new Promise((r) => setTimeout(r, 3000));
      }
    };
    void run();
  }

  #event(ev: Record<string, unknown>): void {
    if (ev.type === "turn.start") {
      if (this.busy) this.#ownTurn = ev.turn as number;
      this.#liveRounds = 0;
      this.kv.live({
        turn: ev.turn as number,
        pos: ev.history_tokens as number,
        keptPerLayer: this.kv.view?.layers.map((l) => l.positions.length) ?? [],
        kvBytes: this.kv.view?.kv_bytes ?? 0,
        rounds: 0,
      });
    } else if (ev.type === "kv") {
      const prunes = (ev.prunes as { pos: number; steps: number }[])
        .flatMap((p) => Array.from({ length: p.steps }, (_, i) => p.pos + i));
      this.#liveRounds += prunes.length;
      this.kv.live({
        turn: ev.turn as number,
        pos: ev.pos as number,
        keptPerLayer: ev.kept_per_layer as number[],
        kvBytes: ev.kv_bytes as number,
        rounds: this.#liveRounds,
      });
      this.timeline.live({ pos: ev.pos as number, kvBytes: ev.kv_bytes as number }, prunes);
    } else if (ev.type === "turn.end" || ev.type === "turn.error") {
      // a turn another client sent (e.g. deno task chat): show it
      if (ev.turn !== this.#ownTurn) void this.#guard(() => this.open(this.current!));
    }
  }

  async say(): Promise<void> {
    const text = this.input.value.trim();
    if (!text || this.busy) return;
    if (!this.model) await this.#connect();
    if (!this.current) await this.create();
    const id = this.current!;
    this.busy = true;
    this.send.disabled = true;
    this.stop.hidden = false;
    this.input.value = "";
    this.chat.user(text);
    const reply = this.chat.reply();
    this.chat.status.textContent = "The model is replying…";
    const s = saved.sessions.find((x) => x.id === id);
    if (s && (s.title === "New session" || s.title === "Opened by id")) {
      s.title = text.length > 40 ? `${text.slice(0, 40)}…` : text;
      save();
      this.#renderSessions();
    }
    const num = (v: string) => (v.trim() === "" ? undefined : Number(v));
    const body = {
      model: this.model,
      session_id: id,
      messages: [{ role: "user", content: text }],
      max_tokens: num(byId<HTMLInputElement>("max-tokens").value),
      temperature: num(byId<HTMLInputElement>("temperature").value),
      seed: num(byId<HTMLInputElement>("seed").value),
    };
    this.#turn = new AbortController();
    const t0 = performance.now();
    let first: number | null = null;
    try {
      const sse = await this.api.chat(body, (c, r) => {
        first ??= performance.now();
        reply.append(c, r);
      }, this.#turn.signal);
      const t1 = performance.now();
      const u = sse.usage;
      if (u) {
        const n = u.completion_tokens;
        const cached = u.prompt_tokens_details.cached_tokens;
        const rate = first !== null && n > 1 ? Math.round((n - 1) / ((t1 - first) / 1000)) : null;
        reply.stats(
          `Prompt ${int(u.prompt_tokens)} tokens (${int(cached)} cached, ${
            int(u.prompt_tokens - cached)
          } new) · ${int(n)} generated · first token ${
            first === null ? "—" : `${Math.round(first - t0)} ms`
          } · ${rate === null ? "—" : int(rate)} tokens/s`,
        );
      }
      this.chat.status.textContent = `Reply complete (${int(u?.completion_tokens ?? 0)} tokens).`;
    } catch (e) {
      const msg = this.#turn.signal.aborted
        ? "Stopped: the turn was not saved."
        : `Error: ${(e as Error).message}`;
      reply.stats(msg);
      this.chat.status.textContent = msg;
    } finally {
      this.busy = false;
      this.send.disabled = false;
      this.stop.hidden = true;
      this.#turn = null;
      this.input.focus();
    }
    await this.refresh();
  }
}

const app = new Playground();
(globalThis as unknown as { playground: Playground }).playground = app;
void app.start();
