/**
 * deno task bench:reasoning — what a session's stored cache should keep of a finished reasoning turn.
 *
 * A conversation of `--turns` turns on a model whose chat template uses `<think>` (an R1 distill or Qwen3
 * shape): each reply is `--reasoning` tokens of thinking, `</think>` and `--answer` tokens of answer, forced
 * (fed as the reply rather than sampled, so every strategy sees the same conversation). After each turn the
 * session is stored three ways and the next turn's prompt is run on each:
 *
 * - keep: the cache keeps everything; the next turn appends its new message (the model sees its own
 *   earlier reasoning, which the template leaves out of a fresh render);
 * - evict: the reasoning rows (`<think>` … `</think>`) leave the cache at commit; the answer rows stay at
 *   their positions (a position gap) and were computed with the reasoning in view;
 * - render (the server's choice, turn.ts `evictAtCommit`): the cache keeps the prefix the template's render
 *   of the conversation shares; the next turn prefills the answer as the template renders it, then its
 *   new message.
 *
 * For each: the stored snapshot's bytes (the server's codec, --kv precision), the tokens the next turn
 * prefills and its prefill time, and how far the next turn's first-token distribution is from a stateless
 * request's (a fresh prefill of the template's render of the whole conversation): max |Δlogit|, KL and top-1.
 */
import { intFlag, parseFlags, runMain, UsageError } from "./common.ts";
import { loadModel } from "../model/loader.ts";
import { BACKEND_CHOICES, type BackendChoice, openBackend } from "../engine/select.ts";
import type { Backend } from "../engine/backend.ts";
import type { SequenceKV } from "../kv/cache.ts";
import type { KVPolicy } from "../kv/contract.ts";
import { createPolicy } from "../kv/registry.ts";
import { encodeSnapshotWithStats, type KVPrecision } from "../session/codec.ts";
import { type ChatMessage, ChatRenderer } from "../server/chat_prompt.ts";
import { evictAtCommit } from "../server/turn.ts";
import { Sequence } from "../engine/sequence.ts";
import { GREEDY } from "../engine/sampler.ts";
import { templateDropsReasoning, THINK_CLOSE, THINK_OPEN } from "../model/reasoning.ts";
import { ChatTemplate } from "../model/chat_template.ts";

const USAGE = `usage: deno task bench:reasoning --model PATH [options]
  --model PATH       a GGUF whose chat template uses <think> (e.g. make-model --shape r1-distill-qwen-1.5b)
  --turns N          conversation turns (default 3)
  --reasoning N      thinking tokens per reply (default 512)
  --answer N         answer tokens per reply (default 48)
  --backend NAME     ${BACKEND_CHOICES.join("|")} (default auto)
  --kv f32|f16|int8  stored snapshot precision (default f16, like the server)
  --json FILE        also write the rows as JSON`;

type Strategy = "keep" | "evict" | "render";
const STRATEGIES: Strategy[] = ["keep", "evict", "render"];

interface Row {
  strategy: Strategy;
  turn: number;
  stored_bytes: number;
  cache_rows: number;
  prefill_tokens: number;
  prefill_ms: number;
  prompt_matches_render: boolean;
  max_abs_dlogit: number;
  kl: number;
  top1_agrees: boolean;
}

/** One stored session: its cache, policy and token history (the last token pending, as a Sequence leaves it). */
interface Session {
  kv: SequenceKV;
  policy: KVPolicy;
  tokens: number[];
}

/** Feed `tokens` after the session's history in chunks; the logits of the last one. */
async function feed(backend: Backend, s: Session, tokens: number[], chunk = 256): Promise<Float32Array> {
  s.tokens.push(...tokens);
  let logits: Float32Array = new Float32Array(0);
  while (s.kv.nextPos < s.tokens.length) {
    const part = s.tokens.slice(s.kv.nextPos, s.kv.nextPos + chunk);
    const last = s.kv.nextPos + part.length === s.tokens.length;
    const [out] = await backend.forward([{ kv: s.kv, tokens: part, logits: last ? "last" : "none" }]);
    const { plan } = s.policy.afterStep(s.kv, out.scores, part.length, "prefill");
    if (plan) s.kv.compact(plan); // settled at once (the full policy never makes one)
    if (last) logits = out.logits;
  }
  return logits;
}

function compare(a: Float32Array, b: Float32Array): { maxAbs: number; kl: number; top1: boolean } {
  let maxAbs = 0, ia = 0, ib = 0;
  for (let i = 0; i < a.length; i++) {
    maxAbs = Math.max(maxAbs, Math.abs(a[i] - b[i]));
    if (a[i] > a[ia]) ia = i;
    if (b[i] > b[ib]) ib = i;
  }
  const lse = (x: Float32Array, m: number) => {
    let s = 0;
    for (let i = 0; i < x.length; i++) s += Math.exp(x[i] - m);
    return m + Math.log(s);
  };
  const za = lse(a, a[ia]), zb = lse(b, b[ib]);
  let kl = 0; // KL(reference a || b)
  for (let i = 0; i < a.length; i++) {
    const la = a[i] - za;
    kl += Math.exp(la) * (la - (b[i] - zb));
  }
  return { maxAbs, kl: Math.max(0, kl), top1: ia === ib };
}

/** A deterministic text of about `n` tokens (words cycled), trimmed to exactly `n` tokens. */
function textOf(r: ChatRenderer, words: string[], n: number, salt: number): number[] {
  const parts: string[] = [];
  for (let i = 0; parts.length < n * 2; i++) parts.push(words[(i * 7 + salt) % words.length]);
  return r.tokenizer.encode(" " + parts.join(" ")).slice(0, n);
}

await runMain(async () => {
  const f = parseFlags(Deno.args, {
    model: { type: "string" },
    turns: { type: "string" },
    reasoning: { type: "string" },
    answer: { type: "string" },
    backend: { type: "string" },
    kv: { type: "string" },
    json: { type: "string" },
  }, USAGE);
  if (!f.model) throw new UsageError(`--model is required\n${USAGE}`);
  const turns = intFlag("turns", f.turns, 3, 1);
  const nReason = intFlag("reasoning", f.reasoning, 512, 1);
  const nAnswer = intFlag("answer", f.answer, 48, 1);
  const precision = (f.kv ?? "f16") as KVPrecision;
  if (!["f32", "f16", "int8"].includes(precision)) throw new UsageError(`--kv must be f32, f16 or int8`);
  const choice = (f.backend ?? "auto") as BackendChoice;
  if (!BACKEND_CHOICES.includes(choice)) throw new UsageError(`--backend must be one of ${BACKEND_CHOICES}`);

  const model = await loadModel(f.model);
  if (!model.chatTemplate) throw new UsageError(`${f.model} has no chat template`);
  const renderer = ChatRenderer.forModel(model);
  const tok = model.tokenizer;
  const drops = templateDropsReasoning(new ChatTemplate(model.chatTemplate));
  const { backend, reason } = await openBackend(model, choice, {
    kvPrecision: precision === "f32" ? "f32" : "f16",
  });
  console.error(
    `[bench:reasoning] ${model.name} on ${backend.name} (${reason}); template drops reasoning: ${drops}`,
  );
  const shape = { nLayers: model.config.nLayers, contextLength: model.config.contextLength };
  const newSession = (): Session => ({
    kv: backend.createKV(),
    policy: createPolicy({ name: "full" }, shape),
    tokens: [],
  });
  const stored = (s: Session) =>
    encodeSnapshotWithStats({
      fingerprint: model.fingerprint,
      tokens: s.tokens,
      kv: s.kv.toHost(),
      policy: { name: "full", params: {}, state: s.policy.exportState() },
      sampler: {},
    }, { kvPrecision: precision }).bytes.length;
  const rows = (s: Session) => {
    let n = 0;
    for (let l = 0; l < s.kv.shape.nLayers; l++) n += s.kv.length(l);
    return n / s.kv.shape.nLayers;
  };

  const words = [
    "so",
    "the",
    "next",
    "step",
    "is",
    "to",
    "check",
    "whether",
    "this",
    "value",
    "fits",
    "then",
  ];
  const openId = tok.tokenId(THINK_OPEN), closeId = tok.tokenId(THINK_CLOSE), breakId = tok.encode("\n\n")[0];
  const sessions = new Map(STRATEGIES.map((k) => [k, newSession()]));
  const commits = new Map<string, { stored_bytes: number; cache_rows: number }>();
  const out: Row[] = [];
  let conversation: ChatMessage[] = [];
  for (let t = 0; t <= turns; t++) {
    // Turn t's user message after the conversation so far: its render is a stateless request's prompt.
    const messages = [...conversation, { role: "user", content: `Question ${t + 1}: how do the parts fit?` }];
    const prompt = renderer.prompt(messages);
    const ref = newSession();
    const refLogits = await feed(backend, ref, prompt.tokens);
    ref.kv.free();
    const r = textOf(renderer, words, nReason, t), a = textOf(renderer, words, nAnswer, t + 5);
    const reasoning = tok.decode(r).trim(), answer = tok.decode(a).trim();
    const text = (prompt.startsInReasoning ? "" : `${THINK_OPEN}\n`) +
      `${reasoning}\n${THINK_CLOSE}\n\n${answer}`;
    const reply = [...tok.encode(text, { parseSpecial: true }), tok.eosId];
    const after = [...messages, { role: "assistant", content: answer, reasoning_content: reasoning }];
    for (const k of STRATEGIES) {
      const s = sessions.get(k)!;
      // This turn's prompt: the render after the longest common prefix (rewinding past it), or, for keep and
      // evict, the new message appended to the stored history.
      let newTokens: number[];
      if (k === "render" || t === 0) {
        let p = 0;
        const n = Math.min(s.tokens.length, prompt.tokens.length - 1);
        while (p < n && s.tokens[p] === prompt.tokens[p]) p++;
        if (p < s.kv.nextPos) s.policy.rewind(s.kv, p);
        s.tokens.length = p;
        newTokens = prompt.tokens.slice(p);
      } else {
        newTokens = prompt.tokens.slice((renderer.nextTurnPrefix(conversation) ?? []).length);
      }
      const t0 = performance.now();
      const logits = await feed(backend, s, newTokens);
      const ms = performance.now() - t0;
      if (t > 0) {
        const d = compare(refLogits, logits);
        out.push({
          strategy: k,
          turn: t,
          ...commits.get(`${k}${t}`)!,
          prefill_tokens: newTokens.length,
          prefill_ms: ms,
          prompt_matches_render: s.kv.nextPos === prompt.tokens.length &&
            s.tokens.every((x, i) => x === prompt.tokens[i]),
          max_abs_dlogit: d.maxAbs,
          kl: d.kl,
          top1_agrees: d.top1,
        });
      }
      if (t === turns) continue;
      // The forced reply (its last token pending, as a finished Sequence leaves it), then the commit.
      await feed(backend, s, reply.slice(0, -1));
      s.tokens.push(reply.at(-1)!);
      if (k === "evict") {
        const from = s.tokens.lastIndexOf(openId), close = s.tokens.lastIndexOf(closeId);
        const end = close + (s.tokens[close + 1] === breakId ? 2 : 1); // through "</think>\n\n"
        s.kv.compact(Array.from({ length: s.kv.shape.nLayers }, (_, l) => {
          const pos = s.kv.positions(l), keep: number[] = [];
          for (let i = 0; i < pos.length; i++) if (pos[i] < from || pos[i] >= end) keep.push(i);
          return Int32Array.from(keep);
        }));
        // The full policy keeps no scores worth keeping: start its (all-zero) table over at the new lengths.
        const zeros = Array.from({ length: s.kv.shape.nLayers }, (_, l) => new Float32Array(s.kv.length(l)));
        s.policy = createPolicy({ name: "full" }, shape);
        s.policy.importState({ scores: zeros, meta: {} }, s.kv);
      } else if (k === "render") {
        const seq = new Sequence(
          backend,
          tok,
          { maxTokens: 1, stop: [], sampling: GREEDY, policy: s.policy },
          s,
        );
        evictAtCommit(seq, renderer.nextTurnPrefix(after));
        s.tokens = [...seq.tokens];
      }
      commits.set(`${k}${t + 1}`, { stored_bytes: stored(s), cache_rows: rows(s) });
    }
    conversation = after;
    console.error(`[bench:reasoning] turn ${t + 1} of ${turns + 1} done`);
  }
  print(out, turns, nReason, nAnswer, precision);
  if (f.json) await Deno.writeTextFile(f.json, JSON.stringify(out, null, 2) + "\n");
  for (const s of sessions.values()) s.kv.free();
  backend.dispose();
});

function print(rows: Row[], turns: number, nReason: number, nAnswer: number, precision: string): void {
  console.log(
    `\nreasoning ${nReason} + answer ${nAnswer} tokens per reply, ${turns} turns, snapshot ${precision}\n`,
  );
  console.log(
    "| stored after turn | strategy | stored KB | cache rows/layer | next turn prefills | prefill ms | " +
      "prompt = render | max abs dlogit | KL | top-1 |",
  );
  console.log("|---|---|---|---|---|---|---|---|---|---|");
  for (const r of rows) {
    console.log(
      `| ${r.turn} | ${r.strategy} | ${(r.stored_bytes / 1024).toFixed(0)} | ${r.cache_rows.toFixed(0)} | ` +
        `${r.prefill_tokens} | ${r.prefill_ms.toFixed(0)} | ${r.prompt_matches_render ? "yes" : "no"} | ` +
        `${r.max_abs_dlogit.toExponential(2)} | ${r.kl.toExponential(2)} | ${r.top1_agrees ? "yes" : "no"} |`,
    );
  }
}
