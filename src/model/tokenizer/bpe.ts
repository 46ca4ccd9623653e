/**
 * GPT-2-style byte-level BPE: the shared core (the byte ↔ printable-character map and rank-ordered merging of a
 * word with a cache), also used by tokenizer.json (hf_bpe.ts), and the GGUF tokenizer
 * (`tokenizer.ggml.model = "gpt2"`) as llama.cpp runs it.
 *
 * GGUF encode: special tokens are cut out first (vocab.ts); each text fragment is split into words by the
 * pre-tokenizer named by `tokenizer.ggml.pre` (pre_tokenizers.ts); each word's UTF-8 bytes become the
 * printable characters of the byte map, and adjacent symbols merge by `tokenizer.ggml.merges` rank (lowest
 * first, ties leftmost). With ignore_merges (llama3) a word that is itself a token is emitted whole. A merge
 * result outside the vocabulary (odd vocabularies) is kept as a symbol, as llama.cpp does, and emitted as the
 * one-byte tokens of its ASCII characters.
 *
 * Decode: normal tokens map their characters back to bytes, user-defined tokens are their text, control and
 * unknown tokens are dropped.
 */
import { mergeSymbols, WordCache } from "./merge_queue.ts";
import { utf8 } from "./piece_decoder.ts";
import { preTokenizerFor, type PreTokenizerType, RegexSplitter } from "./pre_tokenizers.ts";
import {
  Attr,
  metaString,
  metaStrings,
  Vocab,
  type VocabOptions,
  vocabOptionsFromGGUF,
  VocabTokenizer,
} from "./vocab.ts";

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
  readonly #cache = new WordCache();

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

  /** The ids of `word`, memoised (see WordCache). */
  cached(word: string, encode: () => number[]): number[] {
    return this.#cache.get(word, encode);
  }
}

// ---------------------------------------------------------------------------------------------------------
// GGUF byte-level BPE

export interface BpeTokenizerOptions extends VocabOptions {
  /** `tokenizer.ggml.merges`: "left right" strings in rank order. */
  merges: string[];
  /** The pre-tokenizer type (from `tokenizer.ggml.pre`, see preTokenizerFor). */
  preType: PreTokenizerType;
}

const EMPTY = new Uint8Array(0);

export class BpeTokenizer extends VocabTokenizer {
  readonly cleanSpaces: boolean;
  readonly ignoreMerges: boolean;
  readonly #splitter: RegexSplitter;
  readonly #merges: RankedMerges;
  /** Texts of symbols outside the vocabulary (id = vocabSize + index). */
  readonly #extra: string[] = [];
  /** Byte → its symbol id. */
  readonly #byteSym = new Int32Array(256);

  constructor(opts: BpeTokenizerOptions) {
    super(new Vocab(opts));
    this.cleanSpaces = opts.preType.cleanSpaces;
    this.ignoreMerges = opts.preType.ignoreMerges === true;
    this.#splitter = new RegexSplitter(opts.preType.regexes);
    const n = this.vocabSize, textToId = this.vocab.textToId;
    const extraIds = new Map<string, number>();
    const sym = (text: string): number => {
      const id = textToId.get(text) ?? extraIds.get(text);
      if (id !== undefined) return id;
      extraIds.set(text, n + this.#extra.length);
      this.#extra.push(text);
      return n + this.#extra.length - 1;
    };
    const { toChar } = byteLevelTables();
    for (let b = 0; b < 256; b++) this.#byteSym[b] = sym(toChar[b]);
    const rules: [number, number, number][] = [];
    opts.merges.forEach((m, rank) => {
      if (typeof m !== "string") throw new Error(`GGUF merges[${rank}]: expected a string`);
      const k = m.indexOf(" ", 1);
      if (k < 0) return; // llama.cpp records an unusable ("", "") rule
      const a = m.slice(0, k), b = m.slice(k + 1);
      rules.push([sym(a), sym(b), sym(a + b)]);
    });
    this.#merges = new RankedMerges(n + this.#extra.length);
    rules.forEach(([a, b, ab], rank) => this.#merges.add(a, b, rank, ab));
  }

  protected get stripSpaces(): number {
    return 0;
  }

  protected encodeFragment(text: string, out: number[]): void {
    for (const word of this.#splitter.split(text)) {
      for (const id of this.#merges.cached(word, () => this.#encodeWord(word))) out.push(id);
    }
  }

  #encodeWord(word: string): number[] {
    const bytes = asciiOrUtf8(word);
    if (this.ignoreMerges) {
      const { toChar } = byteLevelTables();
      let mapped = "";
      for (const b of bytes) mapped += toChar[b];
      const whole = this.vocab.textToId.get(mapped);
      if (whole !== undefined) return [whole];
    }
    const ids = new Array<number>(bytes.length);
    for (let i = 0; i < bytes.length; i++) ids[i] = this.#byteSym[bytes[i]];
    const merged = this.#merges.merge(ids);
    const n = this.vocabSize;
    if (merged.every((id) => id < n)) return merged;
    // A symbol outside the vocabulary: llama.cpp emits the tokens of its single-byte (ASCII) characters.
    const out: number[] = [];
    for (const id of merged) {
      if (id < n) {
        out.push(id);
        continue;
      }
      for (const ch of this.#extra[id - n]) {
        const t = ch.charCodeAt(0) < 0x80 ? this.vocab.textToId.get(ch) : undefined;
        if (t !== undefined) out.push(t);
      }
    }
    return out;
  }

  protected pieceBytes(id: number): Uint8Array {
    const attr = this.vocab.attrs[id], piece = this.vocab.tokens[id];
    if (attr & (Attr.Control | Attr.Unknown)) return EMPTY;
    if (attr & Attr.UserDefined) return utf8(piece);
    if (attr & Attr.Normal) return byteLevelDecode(piece);
    return EMPTY;
  }
}

/** The UTF-8 bytes of a string, skipping the encoder for pure ASCII. */
function asciiOrUtf8(s: string): Uint8Array | number[] {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) >= 0x80) return utf8(s);
  const a = new Array<number>(s.length);
  for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i);
  return a;
}

/**
 * Builds the tokenizer from GGUF metadata (`tokenizer.ggml.model` "gpt2"). `warn` receives llama.cpp's
 * warning for a missing `tokenizer.ggml.pre`; an unknown one is an error.
 */
export function bpeFromGGUFMetadata(
  meta: Record<string, unknown>,
  warn: (msg: string) => void = (m) => console.warn(`warning: ${m}`),
): BpeTokenizer {
  const model = metaString(meta, "tokenizer.ggml.model");
  if (model !== "gpt2") throw new Error(`GGUF tokenizer model ${JSON.stringify(model)} is not BPE ("gpt2")`);
  const { type, warning } = preTokenizerFor(metaString(meta, "tokenizer.ggml.pre"));
  if (warning) warn(warning);
  if (meta["tokenizer.ggml.merges"] === undefined) {
    throw new Error("GGUF metadata has no tokenizer.ggml.merges");
  }
  const merges = metaStrings(meta, "tokenizer.ggml.merges");
  const o = vocabOptionsFromGGUF(meta, {
    bos: -1,
    eos: -1,
    unk: -1,
    addBos: type.addBos === true,
    addEos: false,
  });
  return new BpeTokenizer({ ...o, merges, preType: type });
}
