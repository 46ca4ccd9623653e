// deno-lint-ignore-file no-explicit-any
/**
 * The playground page in Debian's headless chromium (playwright-core, a fresh profile, loopback only) against
 * a real server: a chat turn streams into the page; switching the KV policy changes the KV view; a resumed
 * session shows its earlier turns and cached tokens; the token strip's colours are exactly the kept / evicted
 * positions of `GET /v1/sessions/{id}/kv`; keyboard, labels, contrast and a phone-sized screen. A screenshot
 * of the page goes to a temporary folder.
 */
import assert from "node:assert/strict";
import type { Page } from "playwright-core";
import { get, post, start } from "./support/server_harness.ts";
import { type Browser, launchBrowser } from "../src/client/browser.ts";
import { buildPlayground } from "../src/cli/playground.ts";

// The page's globals, used inside page.evaluate callbacks (they run in chromium, not in Deno; the DOM library
// is not part of the Deno program's types).
declare const document: any, getComputedStyle: any, innerWidth: number, MutationObserver: any;
type Element = any;
type HTMLElement = any;
type HTMLCanvasElement = any;
type HTMLInputElement = any;

const opts = { sanitizeOps: false, sanitizeResources: false };

async function createSession(page: Page, policy: string, params: Record<string, string>) {
  await page.selectOption("#policy-name", policy);
  for (const [k, v] of Object.entries(params)) {
    if (await page.locator(`select#param-${k}`).count()) await page.selectOption(`#param-${k}`, v);
    else {
      if (!(await page.locator(`#param-${k}`).isVisible())) await page.click("fieldset details.more summary");
      await page.fill(`#param-${k}`, v);
    }
  }
  const before = await page.textContent("#session-id");
  await page.click("#policy-form button[type=submit]");
  await page.waitForFunction((b) => {
    const t = document.getElementById("session-id")!.textContent!;
    return t.startsWith("sess_") && t !== b;
  }, before);
  return (await page.textContent("#session-id"))!;
}

/** Send a message and wait until the turn is stored and the KV view shows it. */
async function say(page: Page, text: string) {
  const replies = await page.locator(".msg.assistant").count();
  await page.fill("#composer-input", text);
  await page.press("#composer-input", "Enter");
  await page.waitForFunction(
    (n) =>
      !(globalThis as any).playground.busy && document.querySelectorAll(".msg.assistant").length === n + 1 &&
      document.querySelector(".msg.assistant:last-child .turn-stats")!.textContent !== "",
    replies,
  );
  await page.waitForFunction(() => {
    const p = (globalThis as any).playground;
    return p.kv.view && p.kv.view.timeline.length === p.kv.view.turns && p.kv.view.turns > 0;
  });
}

/** Each strip cell's colour class, read from the canvas pixels at the cell centres. */
function stripStates(page: Page): Promise<string[][]> {
  return page.evaluate(() => {
    const c = document.getElementById("strip") as HTMLCanvasElement;
    const d = c.dataset;
    const dpr = Number(d.dpr),
      cw = Number(d.cellW),
      rh = Number(d.rowH),
      gap = Number(d.gap),
      g = Number(d.gutter);
    const view = (globalThis as any).playground.kv.view;
    const px = c.getContext("2d")!.getImageData(0, 0, c.width, c.height).data;
    const out: string[][] = [];
    for (let l = 0; l < view.n_layers; l++) {
      const row: string[] = [];
      for (let p = 0; p < view.tokens.length; p++) {
        const x = Math.floor((g + p * cw + (cw - 1) / 2) * dpr),
          y = Math.floor((l * (rh + gap) + rh / 2) * dpr);
        const i = (y * c.width + x) * 4;
        const [r, gr, b] = [px[i], px[i + 1], px[i + 2]];
        row.push(b - r > 40 ? "kept" : r > 245 && gr > 245 && b > 245 ? "pending" : "evicted");
      }
      out.push(row);
    }
    return out;
  });
}

function expectedStates(v: any): string[][] {
  return v.layers.map((l: any) => {
    const kept = new Set(l.positions);
    return v.tokens.map((_: number, p: number) =>
      p >= v.next_pos ? "pending" : kept.has(p) ? "kept" : "evicted"
    );
  });
}

Deno.test(
  "playground in chromium: streaming chat, policy switch, resume, strip = GET /kv, a11y, phone",
  opts,
  async (t) => {
    await buildPlayground();
    const srv = await start({ defaultMaxTokens: 32 });
    let browser: Browser | null = null;
    const errors: string[] = [];
    try {
      browser = await launchBrowser({ width: 1280, height: 900 });
      const page = await browser.context.newPage();
      page.on("pageerror", (e) => errors.push(e.message));
      page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
      await page.goto(`${srv.url}/`);
      await page.waitForFunction(() =>
        document.getElementById("model-line")!.textContent!.startsWith("stories260K")
      );
      await page.click("#generation summary");
      await page.fill("#temperature", "0");
      await page.dispatchEvent("#temperature", "change");
      await page.fill("#max-tokens", "32");
      await page.dispatchEvent("#max-tokens", "change");

      let streamingId = "";
      await t.step("a chat turn streams into the page", async () => {
        streamingId = await createSession(page, "streaming", { budget: "16" });
        // count the separate pieces appended to the reply while it streams
        await page.evaluate(() => {
          (globalThis as any).pieces = 0;
          new MutationObserver((ms: any[]) => {
            for (const m of ms) {
              if (
                (m.target as Element).closest?.(".msg.assistant .content") ||
                m.target.parentElement?.closest(".msg.assistant .content")
              ) {
                (globalThis as any).pieces += m.addedNodes.length;
              }
            }
          }).observe(document.getElementById("messages")!, {
            childList: true,
            subtree: true,
            characterData: true,
          });
        });
        await say(page, "Once upon a time");
        const pieces = await page.evaluate(() => (globalThis as any).pieces);
        assert.ok(pieces >= 10, `the reply arrived in ${pieces} pieces (streamed, not at once)`);
        const shown = await page.textContent(".msg.assistant:last-child .content");
        const stored = (await get(srv.url, `/v1/sessions/${streamingId}/messages`)).json.data;
        assert.equal(shown, stored[1].content);
        const stats = await page.textContent(".msg.assistant:last-child .turn-stats");
        assert.match(
          stats!,
          /^Prompt 5 tokens \(0 cached, 5 new\) · 32 generated · first token \d+ ms · [\d,]+ tokens\/s$/,
        );
        const bars = await page.locator(".bar-num").allTextContents();
        assert.deepEqual(bars, Array(5).fill("16 of 36 · budget 16"));
      });

      await t.step("the strip's kept / evicted colours are GET /v1/sessions/:id/kv", async () => {
        await say(page, "Tom had a red ball.");
        const v = (await get(srv.url, `/v1/sessions/${streamingId}/kv`)).json;
        assert.deepEqual(await stripStates(page), expectedStates(v));
        for (let l = 0; l < v.n_layers; l++) {
          await page.selectOption("#lens-layer", String(l));
          const lens = await page.$$eval(
            "#lens .tok",
            (els) => els.map((e) => e.className.replace("tok ", "")),
          );
          assert.deepEqual(lens, expectedStates(v)[l], `lens of layer ${l}`);
        }
        // a policy that scores: Lethe, fixed budget (a different pattern per layer)
        const id = await createSession(page, "lethe", {
          mode: "fixed",
          budget: "12",
          slack: "2",
          minLayer: "2",
        });
        await say(page, "Once upon a time");
        await say(page, "The dog ran to the park.");
        const lv = (await get(srv.url, `/v1/sessions/${id}/kv`)).json;
        const want = expectedStates(lv);
        assert.ok(want.some((row, l) => row.join() !== want[(l + 1) % want.length].join()), "layers differ");
        assert.deepEqual(await stripStates(page), want);
        // hover a kept cell of layer 2: its text and score
        const p = lv.layers[2].positions[lv.layers[2].positions.length - 3];
        const box = (await page.locator("#strip").boundingBox())!;
        const d = await page.$eval("#strip", (c) => ({ ...(c as HTMLElement).dataset }));
        await page.evaluate(
          (x) => document.getElementById("strip-wrap")!.scrollLeft = x,
          Math.max(0, p * Number(d.cellW) - 100),
        );
        const box2 = (await page.locator("#strip").boundingBox())!;
        void box;
        await page.mouse.move(
          box2.x + p * Number(d.cellW) + Number(d.cellW) / 2,
          box2.y + 2 * (Number(d.rowH) + Number(d.gap)) + Number(d.rowH) / 2,
        );
        const tip = await page.textContent("#strip-tip");
        const score = lv.layers[2].scores[lv.layers[2].positions.length - 3];
        assert.equal(
          tip,
          `Token ${p} ${JSON.stringify(lv.token_texts[p])} (turn 2), layer 2: kept, score ${score}`,
        );
      });

      await t.step("switching the policy changes the KV view", async () => {
        await createSession(page, "full", {});
        await say(page, "Once upon a time");
        const bars = await page.locator(".bar-num").allTextContents();
        assert.deepEqual(bars, Array(5).fill("36 of 36"), "the full cache keeps everything");
        assert.match((await page.textContent("#kv-limits-note"))!, /full: nothing is evicted/);
        const states = await stripStates(page);
        assert.ok(states.every((row) => row.every((s, p) => s === (p === 36 ? "pending" : "kept"))));
        // back to the streaming session: its view again
        await page.selectOption("#session-select", streamingId);
        await page.waitForFunction((id) => (globalThis as any).playground.kv.view?.id === id, streamingId);
        assert.ok((await page.locator(".bar-num").allTextContents()).every((b) => b.startsWith("16 of")));
      });

      await t.step("a resumed session shows its earlier turns and its cached tokens", async () => {
        const v = (await get(srv.url, `/v1/sessions/${streamingId}/kv`)).json;
        const fresh = await browser!.context.newPage(); // same profile: the page remembers its current session
        await fresh.goto(`${srv.url}/`);
        await fresh.waitForFunction((id) => (globalThis as any).playground?.kv.view?.id === id, streamingId);
        const roles = await fresh.$$eval(
          "#messages .msg",
          (els) => els.map((e) => e.className.replace("msg ", "")),
        );
        assert.deepEqual(roles, ["user", "assistant", "user", "assistant"]);
        const stats = await fresh.locator(".turn-stats").allTextContents();
        const t2 = v.timeline[1];
        assert.equal(
          stats[1],
          `Turn 2: prompt ${t2.prompt_tokens} tokens (${t2.cached_tokens} cached, ${
            t2.prompt_tokens - t2.cached_tokens
          } new) · 32 generated · ${t2.pruning_rounds} pruning rounds`,
        );
        assert.ok(t2.cached_tokens > 0);
        assert.match(
          (await fresh.textContent("#session-info"))!,
          new RegExp(`resumes from ${v.next_pos} cached tokens`),
        );
        assert.equal(await fresh.textContent("#tile-seen"), String(v.next_pos));
        assert.deepEqual(await stripStates(fresh), expectedStates(v));
        await fresh.close();
      });

      await t.step("a turn another client sends shows live, then as stored", async () => {
        await page.evaluate(() => {
          const kv = (globalThis as any).playground.kv;
          const live = kv.live.bind(kv);
          (globalThis as any).liveCalls = [];
          kv.live = (l: any) => ((globalThis as any).liveCalls.push(l), live(l));
        });
        const r = await post(srv.url, "/v1/chat/completions", {
          model: "stories260K",
          messages: [{ role: "user", content: "The cat sat on the mat." }],
          max_tokens: 32,
          temperature: 0,
          session_id: streamingId,
        });
        assert.equal(r.status, 200, r.text);
        await page.waitForFunction(() => document.querySelectorAll("#messages .msg.user").length === 3);
        const calls = await page.evaluate(() => (globalThis as any).liveCalls);
        assert.ok(calls.length >= 2, "turn.start and at least one kv event reached the view");
        assert.deepEqual(calls[calls.length - 1].keptPerLayer, [16, 16, 16, 16, 16]);
        assert.equal(
          await page.textContent(".msg.assistant:last-child .content"),
          r.json.choices[0].message.content,
        );
        const v = (await get(srv.url, `/v1/sessions/${streamingId}/kv`)).json;
        assert.equal(
          calls[calls.length - 1].rounds,
          v.timeline[2].pruning_rounds,
          "every prune step was seen live",
        );
        assert.deepEqual(await stripStates(page), expectedStates(v));
      });

      await t.step("a reasoning model's reasoning is shown apart from its answer", async () => {
        // the API's reasoning fields (delta.reasoning_content) as a reasoning model streams them
        const chunk = (delta: Record<string, string>) =>
          `data: ${
            JSON.stringify({
              object: "chat.completion.chunk",
              choices: [{ index: 0, delta, finish_reason: null }],
            })
          }\n\n`;
        const body = chunk({ role: "assistant", content: "" }) +
          chunk({ reasoning_content: "The user wants a story. " }) +
          chunk({ reasoning_content: "Keep it short." }) + chunk({ content: "Once upon a time" }) +
          chunk({ content: ", a cat slept." }) +
          `data: ${
            JSON.stringify({
              choices: [],
              usage: {
                prompt_tokens: 5,
                completion_tokens: 9,
                total_tokens: 14,
                prompt_tokens_details: { cached_tokens: 0 },
              },
            })
          }\n\n` + "data: [DONE]\n\n";
        await page.route(
          "**/v1/chat/completions",
          (route) => route.fulfill({ status: 200, headers: { "content-type": "text/event-stream" }, body }),
        );
        await say(page, "Tell me a story.");
        await page.unroute("**/v1/chat/completions");
        const last = page.locator(".msg.assistant").last();
        assert.equal(
          await last.locator(".reasoning-text").textContent(),
          "The user wants a story. Keep it short.",
        );
        assert.equal(await last.locator(".content").textContent(), "Once upon a time, a cat slept.");
        assert.ok(await last.locator(".reasoning").isVisible());
        assert.equal(
          await last.locator(".reasoning").getAttribute("open"),
          null,
          "collapsed once the answer started",
        );
        await page.reload(); // back to the stored conversation
        await page.waitForFunction((id) => (globalThis as any).playground?.kv.view?.id === id, streamingId);
      });

      await t.step("keyboard, labels and contrast", async () => {
        // every control has a label
        const unlabeled = await page.$$eval(
          "input, select, textarea",
          (els) =>
            els.filter((e) => !(e as HTMLInputElement).labels?.length && !e.getAttribute("aria-label")).map((
              e,
            ) => e.id),
        );
        assert.deepEqual(unlabeled, []);
        // the strip works from the keyboard
        await page.focus("#strip");
        await page.keyboard.press("Home");
        await page.keyboard.press("ArrowDown");
        await page.keyboard.press("ArrowRight");
        assert.match(
          (await page.textContent("#strip-status"))!,
          /^Token 1 "Once" \(turn 1\), layer 1: kept$/,
        );
        await page.keyboard.press("Enter");
        assert.equal(await page.inputValue("#lens-layer"), "1");
        // text contrast ≥ 4.5:1 against the panel
        const ratios = await page.$$eval(
          ".muted, .bar-num, .turn-stats, .msg .who, label, .tile dt",
          (els) => {
            const lum = (c: string) => {
              const [r, g, b] = c.match(/\d+(\.\d+)?/g)!.slice(0, 3).map(Number).map((v) => {
                const s = v / 255;
                return s <= 0.03928 ? s / 12.92 : Math.pow((s + 0.055) / 1.055, 2.4);
              });
              return 0.2126 * r + 0.7152 * g + 0.0722 * b;
            };
            const bg = (e: Element): string => {
              for (let x: Element | null = e; x; x = x.parentElement) {
                const c = getComputedStyle(x).backgroundColor;
                if (c !== "rgba(0, 0, 0, 0)" && c !== "transparent") return c;
              }
              return "rgb(255, 255, 255)";
            };
            return els.filter((e) => (e as HTMLElement).offsetParent !== null).map((e) => {
              const a = lum(getComputedStyle(e).color), b = lum(bg(e));
              return {
                text: e.textContent!.slice(0, 30),
                ratio: (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05),
              };
            });
          },
        );
        assert.ok(ratios.length > 10);
        for (const r of ratios) assert.ok(r.ratio >= 4.5, `contrast ${r.ratio.toFixed(2)} of "${r.text}"`);
      });

      await t.step("a phone-sized screen: one panel at a time, nothing wider than the screen", async () => {
        const phone = await browser!.context.newPage();
        await phone.setViewportSize({ width: 390, height: 844 });
        await phone.goto(`${srv.url}/`);
        await phone.waitForFunction(() => (globalThis as any).playground?.kv.view);
        assert.ok(await phone.isVisible("#panel-chat"));
        assert.ok(!(await phone.isVisible("#panel-kv")));
        await phone.click("#tab-kv");
        assert.ok(await phone.isVisible("#panel-kv"));
        assert.ok(!(await phone.isVisible("#panel-chat")));
        assert.ok(await phone.isVisible("#strip"));
        await phone.focus("#tab-kv");
        await phone.keyboard.press("ArrowLeft");
        assert.ok(await phone.isVisible("#panel-chat"), "arrow keys move between the tabs");
        for (const tab of ["session", "chat", "kv"]) {
          await phone.click(`#tab-${tab}`);
          const wide = await phone.evaluate(() => document.documentElement.scrollWidth - innerWidth);
          assert.ok(wide <= 0, `${tab}: the page is ${wide}px wider than the screen`);
        }
        const dir = await Deno.makeTempDir({ prefix: "lethe-playground-" });
        await phone.screenshot({ path: `${dir}/phone.png` });
        await page.screenshot({ path: `${dir}/playground.png` });
        for (const f of ["phone.png", "playground.png"]) {
          const png = await Deno.readFile(`${dir}/${f}`);
          assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47]);
          assert.ok(png.length > 20_000, `${f}: ${png.length} bytes`);
        }
        console.log(`screenshots: ${dir}`);
        await phone.close();
      });

      assert.deepEqual(browser.external, [], "the page requested nothing outside loopback");
      assert.deepEqual(errors, [], "no errors in the page");
    } finally {
      await browser?.close();
      await srv.shutdown();
    }
  },
);

Deno.test("GET / serves the page with a same-origin CSP; unknown assets are 404", opts, async () => {
  await buildPlayground();
  const srv = await start();
  try {
    const r = await fetch(`${srv.url}/`);
    assert.equal(r.status, 200);
    assert.match(r.headers.get("content-type")!, /text\/html/);
    assert.match(r.headers.get("content-security-policy")!, /default-src 'none'; script-src 'self'/);
    const html = await r.text();
    assert.ok(
      !/https?:\/\//.test(html.replace(/xmlns="http:\/\/www\.w3\.org\/2000\/svg"/g, "")),
      "no external URL",
    );
    const etag = r.headers.get("etag")!;
    const again = await fetch(`${srv.url}/`, { headers: { "if-none-match": etag } });
    assert.equal(again.status, 304);
    await again.body?.cancel();
    const js = await fetch(`${srv.url}/playground/app.js`);
    assert.equal(js.status, 200);
    assert.match(js.headers.get("content-type")!, /javascript/);
    await js.body?.cancel();
    const missing = await get(srv.url, "/playground/../deno.json");
    assert.equal(missing.status, 404);
    const other = await get(srv.url, "/playground/secret.txt");
    assert.equal(other.status, 404);
  } finally {
    await srv.shutdown();
  }
});
