/**
 * SentencePiece-style BPE from GGUF metadata (`tokenizer.ggml.model = "llama"`), as llama.cpp's SPM tokenizer
 * runs it (and llama2.c before it).
 *
 * Encode: special tokens are cut out first (see vocab.ts); each remaining text fragment gets one leading space
 * when `addSpacePrefix` and it starts the text or follows a token, spaces become "▁" (U+2581), the fragment is
 * split into characters, and the adjacent pair whose concatenation is a vocabulary token with the highest
 * score merges, repeatedly (ties: leftmost). A final symbol that is not a token (a character outside the
 * vocabulary) becomes its UTF-8 bytes as `<0xXX>` byte-fallback tokens (or unk when those are missing).
 *
 * Decode: "▁" → " " in normal tokens, `<0xXX>` → that raw byte (bytes assembled into UTF-8), user-defined
 * tokens as written, control/unknown/unused tokens dropped, and with `addSpacePrefix` the leading space of the
 * first piece at the start or after BOS stripped (llama2.c's rule).
 */
import { mergeSymbols, WordCache } from "./merge_queue.ts";
import { bytePiece, parseBytePiece, utf8 } from "./piece_decoder.ts";
import {
  Attr,
  metaBool,
  metaNumbers,
  metaString,
  TokenType,
  Vocab,
  type VocabOptions,
  vocabOptionsFromGGUF,
  VocabTokenizer,
} from "./vocab.ts";

/** GGUF `tokenizer.ggml.token_type` values (the SentencePiece name of vocab.ts's TokenType). */
export { TokenType as SpmTokenType };

export interface SpmTokenizerOptions extends Omit<VocabOptions, "addBos" | "addEos"> {
  scores: ArrayLike<number>;
  bosId: number;
  eosId: number;
  /** Prepend "▁" to a text fragment at the start or after a token (default true). */
  addSpacePrefix?: boolean;
  /** `tokenizer.ggml.add_bos_token` (default: true when there is a BOS) and `add_eos_token` (default false). */
  addBos?: boolean;
  addEos?: boolean;
}

const SPACE_MARK = "\u2581";
const INNER_SPACE = /[^\u2581]\u2581/;
const WORD_START = /(?<=[^\u2581])(?=\u2581)/;
const EMPTY = new Uint8Array(0);

export class SpmTokenizer extends VocabTokenizer {
  readonly addSpacePrefix: boolean;
  readonly cleanSpaces = false;
  #scores: Float64Array;
  #types: Uint8Array;
  /** Byte value → id of its fallback token (`<0xXX>`, else the one-character token), or -1. */
  #byteIds = new Int32Array(256).fill(-1);
  /**
   * True when no token has a "▁" after another character: then no merge crosses the point before a "▁" that
   * follows a non-"▁", so the text is merged (and memoised) word by word with the same result.
   */
  #wordwise: boolean;
  #cache = new WordCache();

  constructor(opts: SpmTokenizerOptions) {
    const types = opts.tokenTypes ? Uint8Array.from(opts.tokenTypes) : inferTypes(opts);
    super(
      new Vocab({
        ...opts,
        tokenTypes: types,
        addBos: opts.addBos ?? opts.bosId >= 0,
        addEos: opts.addEos ?? false,
      }),
    );
    const n = this.vocabSize;
    if (opts.scores.length !== n) {
      throw new Error(`SpmTokenizer: ${n} tokens but ${opts.scores.length} scores`);
    }
    this.addSpacePrefix = opts.addSpacePrefix ?? true;
    this.#scores = Float64Array.from(opts.scores);
    this.#types = types;
    for (let i = 0; i < n; i++) {
      if ((this.vocab.attrs[i] & Attr.Byte) && parseBytePiece(this.vocab.tokens[i]) < 0) {
        throw new Error(`SpmTokenizer: byte token ${i} has piece ${JSON.stringify(this.vocab.tokens[i])}`);
      }
    }
    this.#wordwise = !this.vocab.tokens.some((t) => INNER_SPACE.test(t));
    for (let b = 0; b < 256; b++) {
      this.#byteIds[b] = this.vocab.textToId.get(bytePiece(b)) ??
        (b < 0x80 ? this.vocab.textToId.get(String.fromCharCode(b)) : undefined) ?? -1;
    }
  }

  protected get stripSpaces(): number {
    return this.addSpacePrefix ? 1 : 0;
  }

  protected encodeFragment(text: string, out: number[], afterSpecial: boolean): void {
    const s = (this.addSpacePrefix && afterSpecial ? SPACE_MARK : "") + text.replaceAll(" ", SPACE_MARK);
    if (!this.#wordwise) {
      this.#encodeWord(s, out);
      return;
    }
    for (const w of s.split(WORD_START)) {
      for (const id of this.#cache.get(w, () => this.#encodeWord(w, []))) out.push(id);
    }
  }

  /** Merges the characters of `s` by score and appends the ids (byte fallback for the rest) to `out`. */
  #encodeWord(s: string, out: number[]): number[] {
    const tokens = this.vocab.tokens, textToId = this.vocab.textToId, n = this.vocabSize;
    // Symbols are characters; one outside the vocabulary gets a temporary id ≥ n naming its text.
    const extra: string[] = [];
    const ids: number[] = [];
    for (const ch of s) {
      const id = textToId.get(ch);
      if (id !== undefined) ids.push(id);
      else {
        ids.push(n + extra.length);
        extra.push(ch);
      }
    }
    const textOf = (id: number) => (id < n ? tokens[id] : extra[id - n]);
    const scores = this.#scores;
    const cand: [number, number] = [0, 0];
    const merged = mergeSymbols(ids, null, (l, r) => {
      const id = textToId.get(textOf(l) + textOf(r));
      if (id === undefined) return undefined;
      cand[0] = -scores[id];
      cand[1] = id;
      return cand;
    });
    for (const id of merged) {
      if (id < n) {
        out.push(id);
        continue;
      }
      for (const b of utf8(extra[id - n])) {
        const bid = this.#byteIds[b];
        if (bid >= 0) out.push(bid);
        else if (this.unkId >= 0) out.push(this.unkId);
        else throw new Error(`SpmTokenizer: no token for byte ${bytePiece(b)} and no unk token`);
      }
    }
    return out;
  }

  protected pieceBytes(id: number): Uint8Array {
    const attr = this.vocab.attrs[id], piece = this.vocab.tokens[id];
    if (attr & (Attr.Control | Attr.Unknown)) return EMPTY;
    if (attr & Attr.UserDefined) return utf8(piece);
    if (attr & Attr.Normal) return utf8(piece.replaceAll(SPACE_MARK, " "));
    if (attr & Attr.Byte) return Uint8Array.of(parseBytePiece(piece));
    return EMPTY;
  }

  /** The score of a token (merge priority). */
  score(id: number): number {
    return this.#scores[id];
  }

  /** The GGUF token type of a token. */
  tokenType(id: number): TokenType {
    return this.#types[id];
  }
}

/** Token types of a vocabulary given without them: `<0xXX>` pieces are bytes, BOS/EOS control, unk unknown. */
function inferTypes(o: SpmTokenizerOptions): Uint8Array {
  const types = new Uint8Array(o.tokens.length).fill(TokenType.Normal);
  o.tokens.forEach((t, i) => {
    if (parseBytePiece(t) >= 0) types[i] = TokenType.Byte;
  });
  for (const id of [o.bosId, o.eosId]) if (id >= 0 && id < types.length) types[id] = TokenType.Control;
  if (o.unkId !== undefined && o.unkId >= 0 && o.unkId < types.length) types[o.unkId] = TokenType.Unknown;
  return types;
}

/** Builds the tokenizer from GGUF metadata (`tokenizer.ggml.*`); requires `tokenizer.ggml.model` "llama" if set. */
export function spmFromGGUFMetadata(meta: Record<string, unknown>): SpmTokenizer {
  const model = metaString(meta, "tokenizer.ggml.model");
  if (model !== undefined && model !== "llama") {
    throw new Error(`GGUF tokenizer model ${JSON.stringify(model)} is not SentencePiece ("llama")`);
  }
  // llama.cpp's SentencePiece defaults: BOS 1, EOS 2, unk 0, BOS added, no EOS.
  const o = vocabOptionsFromGGUF(meta, { bos: 1, eos: 2, unk: 0, addBos: true, addEos: false });
  const scores = metaNumbers(meta, "tokenizer.ggml.scores") ?? new Float32Array(o.tokens.length);
  return new SpmTokenizer({
    ...o,
    bosId: o.bosId ?? -1,
    eosId: o.eosId ?? -1,
    scores,
    addSpacePrefix: metaBool(meta, "tokenizer.ggml.add_space_prefix"),
  });
}
