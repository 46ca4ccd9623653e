/** Evaluation text handling shared by eval:ppl and eval:kv: stories split on blank lines, tokenized with BOS. */
import type { Tokenizer } from "../model/tokenizer/types.ts";

/** Stories are separated by one or more blank lines. */
export function splitStories(text: string): string[] {
  return text.replace(/\r\n/g, "\n").split(/\n[ \t]*\n+/).map((s) => s.trim()).filter((s) => s.length > 0);
}

/** Concatenate BOS + tokens of every story (BOS only when the model has one). */
export function tokenizeStories(tok: Tokenizer, stories: string[]): number[] {
  const ids: number[] = [];
  for (const s of stories) ids.push(...tok.encode(s, { addBos: tok.bosId >= 0 }));
  return ids;
}

/** Consecutive, non-overlapping windows of `size` tokens (the last may be shorter; windows under 2 dropped). */
export function windows(ids: number[], size: number, max = Infinity): number[][] {
  const out: number[][] = [];
  for (let i = 0; i < ids.length && out.length < max; i += size) {
    const w = ids.slice(i, i + size);
    if (w.length >= 2) out.push(w);
  }
  return out;
}

/** −log p(target) from a logits row, in nats (log-sum-exp in double precision). */
export function nll(logits: Float32Array, target: number): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return Math.log(sum) + max - logits[target];
}
