/// <reference lib="dom" />
/**
 * Memory over the turns: KV bytes in memory and stored bytes at the end of each turn (x = tokens of the
 * conversation), turn boundaries, and a lane below with a tick for every pruning step. A running turn adds
 * its live KV bytes and prune steps as they arrive. A data table mirrors the chart for screen readers.
 */
import type { TurnRecord } from "./api.ts";
import { byId, bytes, int } from "./dom.ts";

const NS = "http://www.w3.org/2000/svg";
const W = 640, H = 220, L = 58, R = 12, T = 14, B = 58;
const LANE = 12;

function svg(tag: string, attrs: Record<string, string | number>, text?: string): SVGElement {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceMax(x: number): number {
  if (x <= 0) return 1024;
  const p = Math.pow(2, Math.ceil(Math.log2(x)));
  return p * 0.75 >= x ? p * 0.75 : p;
}

export interface LivePoint {
  pos: number;
  kvBytes: number;
}

export class Timeline {
  readonly host = byId("timeline");
  readonly table = byId("timeline-table");
  #records: TurnRecord[] = [];
  #live: LivePoint[] = [];
  #livePrunes: number[] = [];

  show(records: TurnRecord[]): void {
    this.#records = records;
    this.#live = [];
    this.#livePrunes = [];
    this.#draw();
  }

  /** A running turn's point and prune positions. */
  live(p: LivePoint, prunes: number[]): void {
    this.#live.push(p);
    this.#livePrunes.push(...prunes);
    this.#draw();
  }

  #draw(): void {
    const recs = this.#records;
    const first = recs[0]?.start ?? 0;
    const lastPos = Math.max(recs[recs.length - 1]?.end ?? 1, this.#live[this.#live.length - 1]?.pos ?? 1);
    const x0 = first, x1 = Math.max(lastPos, x0 + 1);
    const ymax = niceMax(Math.max(
      1,
      ...recs.map((r) => Math.max(r.kv_bytes, r.stored_bytes ?? 0)),
      ...this.#live.map((p) => p.kvBytes),
    ));
    const px = (pos: number) => L + ((pos - x0) / (x1 - x0)) * (W - L - R);
    const py = (b: number) => T + (1 - b / ymax) * (H - T - B);
    const root = svg("svg", {
      viewBox: `0 0 ${W} ${H}`,
      role: "img",
      "aria-labelledby": "timeline-title",
      class: "timeline-svg",
    });
    const rounds = recs.reduce((a, r) => a + r.pruning_rounds, 0);
    root.append(svg(
      "title",
      { id: "timeline-title" },
      recs.length === 0
        ? "No turns yet"
        : `KV bytes and stored bytes over ${recs.length} turns (${int(x1)} tokens); ${rounds} pruning rounds`,
    ));
    // grid and axes
    for (let i = 0; i <= 4; i++) {
      const b = (ymax * i) / 4, y = py(b);
      root.append(svg("line", { x1: L, x2: W - R, y1: y, y2: y, class: "grid" }));
      root.append(
        svg("text", { x: L - 6, y: y + 4, class: "axis", "text-anchor": "end" }, bytes(Math.round(b))),
      );
    }
    const laneY = H - B + 16;
    root.append(
      svg("text", { x: L - 6, y: laneY + LANE - 2, class: "axis", "text-anchor": "end" }, "prunes"),
    );
    root.append(svg("rect", { x: L, y: laneY, width: W - L - R, height: LANE, class: "lane" }));
    for (const r of recs) {
      const x = px(r.start);
      root.append(svg("line", { x1: x, x2: x, y1: T, y2: laneY + LANE, class: "turn-line" }));
      const xm = (px(r.start) + px(r.end)) / 2;
      root.append(svg("text", { x: xm, y: H - 8, class: "axis", "text-anchor": "middle" }, `T${r.turn}`));
      for (const [a, b] of r.prune_spans) {
        root.append(svg("rect", {
          x: px(a) - 0.75,
          y: laneY,
          width: Math.max(1.5, px(b) - px(a) + 1.5),
          height: LANE,
          class: "prune",
        }));
      }
    }
    for (const p of this.#livePrunes) {
      root.append(svg("rect", { x: px(p) - 0.75, y: laneY, width: 1.5, height: LANE, class: "prune" }));
    }
    root.append(
      svg("text", { x: W - R, y: H - 8, class: "axis", "text-anchor": "end" }, `${int(x1)} tokens`),
    );
    // series: KV bytes at each turn's end (+ live points), stored bytes at each turn's end
    const kvPts = recs.map((r) => [px(r.end), py(r.kv_bytes)] as const);
    const livePts = this.#live.map((p) => [px(p.pos), py(p.kvBytes)] as const);
    const storedPts = recs.filter((r) => r.stored_bytes !== null).map((r) =>
      [px(r.end), py(r.stored_bytes!)] as const
    );
    const line = (pts: readonly (readonly [number, number])[], cls: string) => {
      if (pts.length > 1) {
        root.append(svg("polyline", { points: pts.map((p) => p.join(",")).join(" "), class: cls }));
      }
      for (const [x, y] of pts) root.append(svg("circle", { cx: x, cy: y, r: 3.5, class: `${cls} dot` }));
    };
    line(storedPts, "stored");
    line(kvPts, "kvbytes");
    if (livePts.length) {
      const from = kvPts[kvPts.length - 1];
      root.append(svg("polyline", {
        points: [...(from ? [from] : []), ...livePts].map((p) => p.join(",")).join(" "),
        class: "kvbytes live",
      }));
    }
    this.host.replaceChildren(root);
    this.#table();
  }

  #table(): void {
    const rows = this.#records.map((r) =>
      `<tr><th scope="row">${r.turn}</th><td>${int(r.end)}</td><td>${int(r.prompt_tokens)}</td><td>${
        int(r.cached_tokens)
      }</td><td>${int(r.generated_tokens)}</td><td>${bytes(r.kv_bytes)}</td><td>${
        r.stored_bytes === null ? "—" : bytes(r.stored_bytes)
      }</td><td>${r.pruning_rounds}</td></tr>`
    ).join("");
    this.table.innerHTML =
      `<thead><tr><th scope="col">Turn</th><th scope="col">Tokens</th><th scope="col">Prompt</th><th scope="col">Cached</th><th scope="col">Generated</th><th scope="col">KV</th><th scope="col">Stored</th><th scope="col">Pruning rounds</th></tr></thead><tbody>${rows}</tbody>`;
  }
}
