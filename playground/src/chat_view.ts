/// <reference lib="dom" />
/**
 * The conversation: messages (a reasoning model's reasoning shown apart from its answer, collapsed once the
 * answer starts), and under each reply what its turn cost (prompt / cached / new tokens, and live: time to first
 * token and tokens/s).
 */
import type { Message, TurnRecord } from "./api.ts";
import { byId, h, int } from "./dom.ts";

export interface Reply {
  el: HTMLElement;
  append(content: string, reasoning: string): void;
  stats(text: string): void;
}

export class ChatView {
  readonly list = byId<HTMLOListElement>("messages");
  readonly status = byId("chat-status");

  clear(note?: string): void {
    this.list.replaceChildren();
    if (note) this.list.append(h("li", { class: "empty muted" }, note));
  }

  /** A stored conversation; `records` (the session's timeline) label the replies they belong to. */
  show(messages: Message[], records: TurnRecord[]): void {
    this.clear(
      messages.length === 0 ? "No messages yet. Say something: the model continues the story." : undefined,
    );
    const replies = messages.filter((m) => m.role === "assistant").length;
    let k = records.length - replies; // the newest records belong to the newest replies
    for (const m of messages) {
      if (m.role !== "assistant") {
        this.user(m.content, m.role);
        continue;
      }
      const r = this.reply();
      r.append(m.content, m.reasoning_content ?? "");
      const rec = k >= 0 ? records[k] : undefined;
      if (rec) r.stats(turnStats(rec));
      k++;
    }
    this.list.scrollTop = this.list.scrollHeight;
  }

  user(text: string, role = "user"): void {
    this.list.querySelector(".empty")?.remove();
    this.list.append(h(
      "li",
      { class: `msg ${role === "user" ? "user" : "system"}` },
      h("span", { class: "who" }, role === "user" ? "You" : role),
      h("div", { class: "content" }, text),
    ));
    this.list.scrollTop = this.list.scrollHeight;
  }

  reply(): Reply {
    this.list.querySelector(".empty")?.remove();
    const content = h("div", { class: "content" });
    const reasoningText = h("div", { class: "reasoning-text" });
    const reasoning = h(
      "details",
      { class: "reasoning", open: true, hidden: true },
      h("summary", {}, "Reasoning"),
      reasoningText,
    );
    const stats = h("p", { class: "turn-stats" });
    const el = h(
      "li",
      { class: "msg assistant" },
      h("span", { class: "who" }, "Model"),
      reasoning,
      content,
      stats,
    );
    this.list.append(el);
    const follow = () => {
      const near = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 80;
      if (near) this.list.scrollTop = this.list.scrollHeight;
    };
    return {
      el,
      append: (c, r) => {
        if (r) {
          reasoning.hidden = false;
          reasoningText.append(r);
        }
        if (c) {
          if (!reasoning.hidden && content.textContent === "") reasoning.open = false;
          content.append(c);
        }
        follow();
      },
      stats: (text) => (stats.textContent = text),
    };
  }
}

/** A stored turn's cost. */
export function turnStats(r: TurnRecord): string {
  const fresh = r.prompt_tokens - r.cached_tokens;
  return `Turn ${r.turn}: prompt ${int(r.prompt_tokens)} tokens (${int(r.cached_tokens)} cached, ${
    int(fresh)
  } new) · ${int(r.generated_tokens)} generated · ${r.pruning_rounds} pruning rounds`;
}
