/// <reference lib="dom" />
/**
 * The live view of a session's KV cache: summary tiles, kept tokens per layer as bars (with the policy's
 * budget or trigger marked), the token strip (a canvas: one row per layer, one cell per token of the
 * conversation, coloured kept / evicted / pending, token text and score on hover or keyboard focus) and the
 * text lens (the conversation as words, coloured by what one layer keeps).
 */
import type { KvView } from "./api.ts";
import { byId, bytes, h, int } from "./dom.ts";

/** The strip's colours (kept cells are shades of KEPT_HUE by score rank within their layer). */
export const STRIP = {
  keptHue: 217,
  evicted: "#d4d4d8",
  pending: "#ffffff",
  pendingEdge: "#71717a",
  boundary: "#111827",
  cursor: "#111827",
  gutter: 0,
  rowH: 16,
  gap: 4,
  minCell: 3,
  maxCell: 14,
};

/** Live numbers of a running turn (from the events stream), shown until the turn commits. */
export interface Live {
  turn: number;
  pos: number;
  keptPerLayer: number[];
  kvBytes: number;
  rounds: number;
}

type CellState = "kept" | "evicted" | "pending";

export class KvPanel {
  readonly tiles = byId("kv-tiles");
  readonly bars = byId("kv-bars");
  readonly limitsNote = byId("kv-limits-note");
  readonly canvas = byId<HTMLCanvasElement>("strip");
  readonly wrap = byId("strip-wrap");
  readonly tip = byId("strip-tip");
  readonly status = byId("strip-status");
  readonly lensLayer = byId<HTMLSelectElement>("lens-layer");
  readonly lens = byId("lens");
  readonly liveNote = byId("kv-live");
  readonly labels = byId("strip-labels");
  view: KvView | null = null;
  /** Per layer: position → rank percentile in [0, 1] of its score (kept rows only). */
  #shade: Map<number, number>[] = [];
  #cursor = { layer: 0, pos: -1 };
  #cell = STRIP.maxCell;

  constructor() {
    this.canvas.addEventListener("mousemove", (e) => this.#hover(e));
    this.canvas.addEventListener("mouseleave", () => (this.tip.hidden = true));
    this.canvas.addEventListener("click", (e) => {
      const hit = this.#hit(e);
      if (hit) this.#setCursor(hit.layer, hit.pos, true);
    });
    this.canvas.addEventListener("keydown", (e) => this.#key(e));
    this.canvas.addEventListener("focus", () => {
      if (this.view && this.view.tokens.length > 0) {
        this.#setCursor(
          this.#cursor.layer,
          this.#cursor.pos < 0 ? this.view.tokens.length - 1 : this.#cursor.pos,
        );
      }
    });
    this.canvas.addEventListener("blur", () => (this.tip.hidden = true));
    this.lensLayer.addEventListener("change", () => this.#renderLens());
    new ResizeObserver(() => this.#drawStrip()).observe(this.wrap);
  }

  /** Redraw the strip (its panel just became visible: the width it had was 0). */
  redraw(): void {
    this.#drawStrip();
  }

  /** Show a committed view (from GET /v1/sessions/{id}/kv). */
  show(view: KvView | null): void {
    this.view = view;
    this.liveNote.textContent = "";
    this.#shade = (view?.layers ?? []).map((l) => {
      const order = l.scores.map((s, i) => [s, i]).sort((a, b) => a[0] - b[0]);
      const m = new Map<number, number>();
      order.forEach(([, i], r) => m.set(l.positions[i], order.length > 1 ? r / (order.length - 1) : 1));
      return m;
    });
    const n = view?.n_layers ?? 0;
    if (this.lensLayer.options.length !== n) {
      this.lensLayer.replaceChildren(
        ...Array.from({ length: n }, (_, l) => h("option", { value: l }, `Layer ${l}`)),
      );
    }
    if (this.#cursor.layer >= n) this.#cursor = { layer: 0, pos: -1 };
    if (view && this.#cursor.pos >= view.tokens.length) this.#cursor.pos = view.tokens.length - 1;
    this.#renderTiles(null);
    this.#renderBars(null);
    this.#drawStrip();
    this.#renderLens();
    this.wrap.scrollLeft = this.wrap.scrollWidth;
  }

  /** A running turn's numbers (bars and tiles follow them; the strip waits for the commit). */
  live(l: Live): void {
    this.#renderTiles(l);
    this.#renderBars(l);
    this.liveNote.textContent = `Turn ${l.turn} running: ${
      int(l.pos)
    } tokens seen, ${l.rounds} pruning rounds so far. The token strip updates when the turn is stored.`;
  }

  stateOf(layer: number, pos: number): CellState {
    const v = this.view!;
    if (pos >= v.next_pos) return "pending";
    return this.#shade[layer].has(pos) ? "kept" : "evicted";
  }

  #renderTiles(l: Live | null): void {
    const v = this.view;
    const seen = l?.pos ?? v?.next_pos ?? 0;
    const kept = l
      ? l.keptPerLayer.reduce((a, b) => a + b, 0)
      : (v?.layers ?? []).reduce((a, x) => a + x.positions.length, 0);
    const nLayers = v?.n_layers ?? l?.keptPerLayer.length ?? 0;
    const share = seen > 0 && nLayers > 0 ? Math.round((100 * kept) / (seen * nLayers)) : 100;
    const tile = (label: string, value: string, id: string) =>
      h("div", { class: "tile" }, h("dt", {}, label), h("dd", { id }, value));
    this.tiles.replaceChildren(
      tile("Tokens seen", int(seen), "tile-seen"),
      tile("Kept (all layers)", `${int(kept)} · ${share}%`, "tile-kept"),
      tile("KV in memory", bytes(l?.kvBytes ?? v?.kv_bytes ?? 0), "tile-kv"),
      tile("Stored", bytes(v?.stored_bytes ?? 0), "tile-stored"),
      tile("Pruning rounds", int((v?.pruning_rounds ?? 0) + (l?.rounds ?? 0)), "tile-rounds"),
      tile("Turns", int(v?.turns ?? 0), "tile-turns"),
    );
  }

  #renderBars(l: Live | null): void {
    const v = this.view;
    if (!v) return this.bars.replaceChildren();
    const seen = l?.pos ?? v.next_pos;
    const kept = l?.keptPerLayer ?? v.layers.map((x) => x.positions.length);
    const limits = v.limits;
    const scale = Math.max(1, seen, ...(limits.per_layer ?? []));
    const pct = (x: number) => `${Math.min(100, (100 * x) / scale).toFixed(2)}%`;
    this.bars.replaceChildren(...kept.map((k, layer) => {
      const limit = limits.per_layer?.[layer];
      const label = limit === undefined ? "" : ` · ${limits.kind} ${int(limit)}`;
      return h(
        "div",
        { class: "bar-row", "data-layer": layer },
        h("span", { class: "bar-label" }, `L${layer}`),
        h(
          "span",
          { class: "bar-track", "aria-hidden": "true" },
          h("span", { class: "bar-fill", style: `width:${pct(k)}` }),
          limit === undefined
            ? null
            : h("span", { class: `bar-mark ${limits.kind}`, style: `left:${pct(limit)}` }),
        ),
        h("span", { class: "bar-num" }, `${int(k)} of ${int(seen)}${label}`),
      );
    }));
    this.limitsNote.textContent = limits.kind === "none"
      ? `${v.policy.name}: ${limits.note}.`
      : `${v.policy.name}: ${
        limits.kind === "trigger" ? "the marks are the per-layer triggers" : "the marks are the budgets"
      }${limits.total ? ` (total ${int(limits.total)} rows over all layers)` : ""}: ${limits.note}.`;
  }

  #drawStrip(): void {
    const v = this.view;
    const c = this.canvas;
    const ctx = c.getContext("2d")!;
    const n = v?.tokens.length ?? 0;
    const rows = v?.n_layers ?? 0;
    const avail = Math.max(200, this.wrap.clientWidth - 2);
    this.#cell = Math.max(
      STRIP.minCell,
      Math.min(STRIP.maxCell, Math.floor((avail - STRIP.gutter) / Math.max(1, n))),
    );
    const w = Math.max(avail, STRIP.gutter + n * this.#cell);
    const hgt = Math.max(STRIP.rowH, rows * (STRIP.rowH + STRIP.gap));
    const dpr = globalThis.devicePixelRatio || 1;
    c.width = Math.round(w * dpr);
    c.height = Math.round(hgt * dpr);
    c.style.width = `${w}px`;
    c.style.height = `${hgt}px`;
    Object.assign(c.dataset, {
      cellW: this.#cell,
      rowH: STRIP.rowH,
      gap: STRIP.gap,
      gutter: STRIP.gutter,
      dpr,
    });
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, hgt);
    if (!v) return this.labels.replaceChildren();
    const cw = this.#cell;
    if (this.labels.childElementCount !== rows) {
      this.labels.replaceChildren(...Array.from({ length: rows }, (_, l) => h("span", {}, `L${l}`)));
    }
    for (let l = 0; l < rows; l++) {
      const y = l * (STRIP.rowH + STRIP.gap);
      for (let p = 0; p < n; p++) {
        const x = STRIP.gutter + p * cw;
        const st = this.stateOf(l, p);
        if (st === "pending") {
          // white with a grey edge above and below (the centre stays white however narrow the cell)
          ctx.fillStyle = STRIP.pendingEdge;
          ctx.fillRect(x, y, Math.max(1, cw - 1), STRIP.rowH);
          ctx.fillStyle = STRIP.pending;
          ctx.fillRect(x, y + 2, Math.max(1, cw - 1), STRIP.rowH - 4);
          continue;
        }
        const t = st === "kept" ? (v.scored ? this.#shade[l].get(p)! : 1) : 0;
        ctx.fillStyle = st === "kept" ? `hsl(${STRIP.keptHue} 80% ${78 - 40 * t}%)` : STRIP.evicted;
        ctx.fillRect(x, y, Math.max(1, cw - (cw > 4 ? 1 : 0)), STRIP.rowH);
      }
    }
    ctx.fillStyle = STRIP.boundary;
    for (const t of v.timeline) {
      if (t.start > 0 && t.start < n) ctx.fillRect(STRIP.gutter + t.start * cw - 1, 0, 2, hgt);
    }
    if (this.#cursor.pos >= 0 && this.#cursor.pos < n && document.activeElement === c) {
      ctx.strokeStyle = STRIP.cursor;
      ctx.lineWidth = 2;
      ctx.strokeRect(
        STRIP.gutter + this.#cursor.pos * cw - 1,
        this.#cursor.layer * (STRIP.rowH + STRIP.gap) - 1,
        cw + 1,
        STRIP.rowH + 2,
      );
      ctx.lineWidth = 1;
    }
  }

  #hit(e: MouseEvent): { layer: number; pos: number } | null {
    const v = this.view;
    if (!v) return null;
    const r = this.canvas.getBoundingClientRect();
    const x = e.clientX - r.left, y = e.clientY - r.top;
    const pos = Math.floor((x - STRIP.gutter) / this.#cell);
    const layer = Math.floor(y / (STRIP.rowH + STRIP.gap));
    if (pos < 0 || pos >= v.tokens.length || layer < 0 || layer >= v.n_layers) return null;
    if (y - layer * (STRIP.rowH + STRIP.gap) > STRIP.rowH) return null;
    return { layer, pos };
  }

  /** What one cell says: the token, its position, and what the layer does with it. */
  describe(layer: number, pos: number): string {
    const v = this.view!;
    const text = JSON.stringify(v.token_texts[pos]);
    const st = this.stateOf(layer, pos);
    let what: string = st;
    if (st === "kept" && v.scored) {
      const i = v.layers[layer].positions.indexOf(pos);
      what = `kept, score ${v.layers[layer].scores[i]}`;
    } else if (st === "pending") what = "pending (fed with the next turn)";
    const turn = v.timeline.find((t) => pos >= t.start && pos < t.end)?.turn;
    return `Token ${pos} ${text}${turn ? ` (turn ${turn})` : ""}, layer ${layer}: ${what}`;
  }

  #hover(e: MouseEvent): void {
    const hit = this.#hit(e);
    if (!hit) {
      this.tip.hidden = true;
      return;
    }
    this.#showTip(hit.layer, hit.pos);
  }

  #showTip(layer: number, pos: number): void {
    this.tip.textContent = this.describe(layer, pos);
    this.tip.hidden = false;
    // the tip is positioned in the scrolled content's coordinates: keep it inside the visible part
    const x = STRIP.gutter + pos * this.#cell;
    const lo = this.wrap.scrollLeft + 2,
      hi = this.wrap.scrollLeft + this.wrap.clientWidth - this.tip.offsetWidth - 2;
    const y = (layer + 1) * (STRIP.rowH + STRIP.gap) + 4;
    this.tip.style.left = `${Math.max(lo, Math.min(hi, x - 40))}px`;
    this.tip.style.top = `${y}px`;
  }

  #setCursor(layer: number, pos: number, lens = false): void {
    const v = this.view;
    if (!v || v.tokens.length === 0) return;
    this.#cursor = {
      layer: Math.max(0, Math.min(v.n_layers - 1, layer)),
      pos: Math.max(0, Math.min(v.tokens.length - 1, pos)),
    };
    this.#drawStrip();
    const x = STRIP.gutter + this.#cursor.pos * this.#cell;
    if (x < this.wrap.scrollLeft + STRIP.gutter || x > this.wrap.scrollLeft + this.wrap.clientWidth - 20) {
      this.wrap.scrollLeft = x - this.wrap.clientWidth / 2;
    }
    this.#showTip(this.#cursor.layer, this.#cursor.pos);
    this.status.textContent = this.describe(this.#cursor.layer, this.#cursor.pos);
    if (lens) {
      this.lensLayer.value = String(this.#cursor.layer);
      this.#renderLens();
    }
  }

  #key(e: KeyboardEvent): void {
    const { layer, pos } = this.#cursor;
    const step = e.shiftKey ? 10 : 1;
    const moves: Record<string, [number, number]> = {
      ArrowLeft: [layer, pos - step],
      ArrowRight: [layer, pos + step],
      ArrowUp: [layer - 1, pos],
      ArrowDown: [layer + 1, pos],
      Home: [layer, 0],
      End: [layer, Number.MAX_SAFE_INTEGER],
    };
    if (e.key === "Enter" || e.key === " ") {
      this.#setCursor(layer, pos, true);
    } else if (moves[e.key]) {
      this.#setCursor(...moves[e.key]);
    } else return;
    e.preventDefault();
  }

  #renderLens(): void {
    const v = this.view;
    if (!v || v.tokens.length === 0) {
      this.lens.replaceChildren(h("span", { class: "muted" }, "No tokens yet: send a message."));
      return;
    }
    const l = Number(this.lensLayer.value || 0);
    const frag = document.createDocumentFragment();
    for (let p = 0; p < v.tokens.length; p++) {
      const st = this.stateOf(l, p);
      const t = st === "kept" && v.scored ? this.#shade[l].get(p)! : 1;
      const span = h("span", {
        class: `tok ${st}`,
        "data-pos": p,
        title: this.describe(l, p),
        style: st === "kept" ? `--shade:${(0.18 + 0.5 * t).toFixed(2)}` : undefined,
      }, v.token_texts[p] === "\n" ? "⏎\n" : v.token_texts[p]);
      frag.append(span);
    }
    this.lens.replaceChildren(frag);
    this.lens.setAttribute(
      "aria-label",
      `The conversation as layer ${l} keeps it: ${v.layers[l].positions.length} of ${v.next_pos} tokens kept`,
    );
  }
}
