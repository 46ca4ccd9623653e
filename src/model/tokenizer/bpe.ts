/**
 * GPT-2-style byte-level BPE: the shared core (the byte ↔ printable-character map and rank-ordered merging of a
 * word with a cache), used by tokenizer.json (hf_bpe.ts).
 */
import { mergeSymbols } from "./merge_queue.ts";
import { utf8 } from "./piece_decoder.ts";

// ---------------------------------------------------------------------------------------------------------
// Shared core

export interface ByteLevelTables {
  /** Byte → its printable character. */
  toChar: string[];
  /** Printable character → its byte. */
  toByte: Map<string, number>;
}

function buildByteLevel(): ByteLevelTables {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const toChar: string[] = new Array(256);
  const toByte = new Map<string, number>();
  for (let i = 0; i < 256; i++) {
    toChar[bs[i]] = String.fromCodePoint(cs[i]);
    toByte.set(String.fromCodePoint(cs[i]), bs[i]);
  }
  return { toChar, toByte };
}
let byteLevel: ByteLevelTables | undefined;
/** GPT-2's byte ↔ character map (printable bytes map to themselves, the rest to U+0100…). */
export function byteLevelTables(): ByteLevelTables {
  return (byteLevel ??= buildByteLevel());
}

/** Bytes of a byte-level piece (a character outside the map contributes its own UTF-8). */
export function byteLevelDecode(piece: string): Uint8Array {
  const { toByte } = byteLevelTables();
  const out: number[] = [];
  for (const ch of piece) {
    const b = toByte.get(ch);
    if (b !== undefined) out.push(b);
    else out.push(...utf8(ch));
  }
  return Uint8Array.from(out);
}

/**
 * Rank-ordered BPE merges over symbol ids (`symbols` ids in all): (left, right) → [rank, merged id], the first
 * rule for a pair winning. `merge` runs them over a word; `cached` memoises whole words.
 */
export class RankedMerges {
  readonly #n: number;
  readonly #rules = new Map<number, readonly [number, number]>();
  readonly #cache = new Map<string, number[]>();

  constructor(symbols: number) {
    this.#n = symbols;
  }

  add(left: number, right: number, rank: number, merged: number): void {
    const key = left * this.#n + right;
    if (!this.#rules.has(key)) this.#rules.set(key, [rank, merged]);
  }

  /** Merges `ids` (symbols with `mergeable[i] === 0` never merge). */
  merge(ids: number[], mergeable: Uint8Array | null = null): number[] {
    const rules = this.#rules, n = this.#n;
    return mergeSymbols(ids, mergeable, (l, r) => rules.get(l * n + r));
  }

  /** The ids of `word` from the cache, or computed by `encode` and remembered (short words only). */
  cached(word: string, encode: () => number[]): number[] {
    if (word.length >= 64) return encode();
    let ids = this.#cache.get(word);
    if (ids === undefined) {
      if (this.#cache.size >= 50000) this.#cache.clear();
      ids = encode();
      this.#cache.set(word, ids);
    }
    return ids;
  }
}
