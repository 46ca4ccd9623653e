/**
 * SentencePiece-style BPE from GGUF metadata, as llama.cpp's SPM tokenizer and llama2.c run it.
 *
 * Encode: spaces become "▁" (U+2581) and, with `addSpacePrefix`, one "▁" is prepended to non-empty text; the
 * text is split into UTF-8 characters, each its own token if in the vocabulary, else its bytes as `<0xXX>`
 * byte-fallback tokens (or unk when those are missing); then the adjacent pair whose concatenation is a
 * vocabulary piece with the highest score merges, repeatedly (ties: leftmost). Byte-fallback tokens never
 * merge; control, unknown, unused and byte pieces are never merge results.
 *
 * Decode: "▁" → " ", `<0xXX>` → that raw byte (bytes assembled into UTF-8), control/unknown/unused tokens
 * dropped, and the leading space of the first piece at the start or after BOS stripped (llama2.c's rule).
 */
import type { StreamDecoder, Tokenizer } from "./types.ts";
import { mergeSymbols } from "./merge_queue.ts";
import {
  bytePiece,
  decodeAll,
  parseBytePiece,
  type PieceBytesTable,
  PieceStreamDecoder,
  utf8,
} from "./piece_decoder.ts";

/** llama.cpp / GGUF `tokenizer.ggml.token_type` values. */
export enum SpmTokenType {
  Undefined = 0,
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
}

export interface SpmTokenizerOptions {
  tokens: string[];
  scores: ArrayLike<number>;
  tokenTypes?: ArrayLike<number>;
  bosId: number;
  eosId: number;
  unkId?: number;
  /** Prepend "▁" to non-empty text before encoding (default true). */
  addSpacePrefix?: boolean;
  /** Whether callers should add BOS by default (`tokenizer.ggml.add_bos_token`, default true). */
  addBos?: boolean;
}

export class SpmTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  readonly unkId: number;
  readonly addSpacePrefix: boolean;
  /** Whether the model expects BOS in front of a prompt (informational; `encode` adds it only when asked). */
  readonly addBosByDefault: boolean;
  #tokens: string[];
  #scores: Float64Array;
  #types: Uint8Array;
  /** Pieces that plain text may produce (normal and user-defined), piece → id (last duplicate wins, as llama.cpp). */
  #pieceToId = new Map<string, number>();
  /** Byte value → id of its `<0xXX>` token, or -1. */
  #byteIds = new Int32Array(256).fill(-1);
  #decodeTable: PieceBytesTable;

  constructor(opts: SpmTokenizerOptions) {
    const n = opts.tokens.length;
    if (n === 0) throw new Error("SpmTokenizer: empty vocabulary");
    if (opts.scores.length !== n) {
      throw new Error(`SpmTokenizer: ${n} tokens but ${opts.scores.length} scores`);
    }
    if (opts.tokenTypes && opts.tokenTypes.length !== n) {
      throw new Error(`SpmTokenizer: ${n} tokens but ${opts.tokenTypes.length} token types`);
    }
    const checkId = (name: string, id: number | undefined) => {
      if (id === undefined || id === -1) return -1;
      if (!Number.isInteger(id) || id < 0 || id >= n) {
        throw new Error(`SpmTokenizer: ${name} ${id} out of range [0, ${n})`);
      }
      return id;
    };
    this.vocabSize = n;
    this.bosId = checkId("bos id", opts.bosId);
    this.eosId = checkId("eos id", opts.eosId);
    this.unkId = checkId("unk id", opts.unkId);
    this.addSpacePrefix = opts.addSpacePrefix ?? true;
    this.addBosByDefault = opts.addBos ?? true;
    this.#tokens = opts.tokens.slice();
    this.#scores = Float64Array.from(opts.scores);
    this.#types = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      let t = opts.tokenTypes ? Number(opts.tokenTypes[i]) : SpmTokenType.Normal;
      if (!opts.tokenTypes && parseBytePiece(this.#tokens[i]) >= 0) t = SpmTokenType.Byte;
      if (i === this.bosId || i === this.eosId) t = SpmTokenType.Control;
      if (i === this.unkId) t = SpmTokenType.Unknown;
      this.#types[i] = t;
    }
    const bytes: Uint8Array[] = [];
    for (let i = 0; i < n; i++) {
      const piece = this.#tokens[i];
      const t = this.#types[i];
      if (t === SpmTokenType.Byte) {
        const b = parseBytePiece(piece);
        if (b < 0) throw new Error(`SpmTokenizer: byte token ${i} has piece ${JSON.stringify(piece)}`);
        if (this.#byteIds[b] < 0) this.#byteIds[b] = i;
        bytes.push(Uint8Array.of(b));
      } else if (t === SpmTokenType.Control || t === SpmTokenType.Unknown || t === SpmTokenType.Unused) {
        bytes.push(new Uint8Array(0));
      } else if (t === SpmTokenType.UserDefined) {
        this.#pieceToId.set(piece, i);
        bytes.push(utf8(piece));
      } else {
        this.#pieceToId.set(piece, i);
        bytes.push(utf8(piece.replaceAll("\u2581", " ")));
      }
    }
    this.#decodeTable = {
      bytes,
      stripSpaces: 1,
      restartIds: new Set(this.bosId >= 0 ? [this.bosId] : []),
    };
  }

  encode(text: string, opts?: { addBos?: boolean }): number[] {
    const out: number[] = [];
    if (opts?.addBos && this.bosId >= 0) out.push(this.bosId);
    if (text.length === 0) return out;
    let s = text.replaceAll(" ", "\u2581");
    if (this.addSpacePrefix) s = "\u2581" + s;
    const ids: number[] = [];
    const mergeable: number[] = [];
    for (const ch of s) { // iterates code points
      const id = this.#pieceToId.get(ch);
      if (id !== undefined) {
        ids.push(id);
        mergeable.push(1);
        continue;
      }
      for (const b of utf8(ch)) {
        const bid = this.#byteIds[b];
        if (bid >= 0) ids.push(bid);
        else if (this.unkId >= 0) ids.push(this.unkId);
        else throw new Error(`SpmTokenizer: no token for byte ${bytePiece(b)} and no unk token`);
        mergeable.push(0);
      }
    }
    const tokens = this.#tokens, scores = this.#scores, pieceToId = this.#pieceToId;
    const cand: [number, number] = [0, 0];
    const merged = mergeSymbols(ids, Uint8Array.from(mergeable), (l, r) => {
      const id = pieceToId.get(tokens[l] + tokens[r]);
      if (id === undefined) return undefined;
      cand[0] = -scores[id];
      cand[1] = id;
      return cand;
    });
    for (const id of merged) out.push(id);
    return out;
  }

  decode(ids: number[]): string {
    return decodeAll(this.#decodeTable, ids);
  }

  streamDecoder(): StreamDecoder {
    return new PieceStreamDecoder(this.#decodeTable);
  }

  piece(id: number): string {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new RangeError(`token id ${id} out of range [0, ${this.vocabSize})`);
    }
    return this.#tokens[id];
  }

  /** The score of a token (merge priority). */
  score(id: number): number {
    return this.#scores[id];
  }

  /** The GGUF token type of a token. */
  tokenType(id: number): SpmTokenType {
    return this.#types[id];
  }
}

function intOrUndefined(meta: Record<string, unknown>, key: string): number | undefined {
  const v = meta[key];
  if (v === undefined || v === null) return undefined;
  const n = typeof v === "bigint" ? Number(v) : v;
  if (typeof n !== "number" || !Number.isInteger(n)) {
    throw new Error(`GGUF metadata ${key}: expected an integer, got ${typeof v}`);
  }
  // GGUF files often store "none" as 0xFFFFFFFF (uint32 -1).
  if (n === 0xffffffff || n < 0) return -1;
  return n;
}

function boolOrUndefined(meta: Record<string, unknown>, key: string): boolean | undefined {
  const v = meta[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "boolean") throw new Error(`GGUF metadata ${key}: expected a bool, got ${typeof v}`);
  return v;
}

function numberArray(v: unknown, key: string): ArrayLike<number> {
  if (ArrayBuffer.isView(v) && !(v instanceof DataView)) {
    const a = v as unknown as ArrayLike<number | bigint>;
    return Array.from({ length: a.length }, (_, i) => Number(a[i]));
  }
  if (!Array.isArray(v)) throw new Error(`GGUF metadata ${key}: expected an array`);
  return v.map((x, i) => {
    const n = typeof x === "bigint" ? Number(x) : x;
    if (typeof n !== "number") throw new Error(`GGUF metadata ${key}[${i}]: expected a number`);
    return n;
  });
}

/** Builds the tokenizer from GGUF metadata (`tokenizer.ggml.*`); requires `tokenizer.ggml.model` "llama" if set. */
export function spmFromGGUFMetadata(meta: Record<string, unknown>): SpmTokenizer {
  const model = meta["tokenizer.ggml.model"];
  if (model !== undefined && model !== "llama") {
    throw new Error(`GGUF tokenizer model ${JSON.stringify(model)} is not SentencePiece ("llama")`);
  }
  const tokens = meta["tokenizer.ggml.tokens"];
  if (!Array.isArray(tokens) || tokens.some((t) => typeof t !== "string")) {
    throw new Error("GGUF metadata tokenizer.ggml.tokens: expected an array of strings");
  }
  const scoresRaw = meta["tokenizer.ggml.scores"];
  const scores = scoresRaw === undefined
    ? new Float32Array(tokens.length)
    : numberArray(scoresRaw, "tokenizer.ggml.scores");
  const typesRaw = meta["tokenizer.ggml.token_type"];
  const tokenTypes = typesRaw === undefined ? undefined : numberArray(typesRaw, "tokenizer.ggml.token_type");
  return new SpmTokenizer({
    tokens: tokens as string[],
    scores,
    tokenTypes,
    bosId: intOrUndefined(meta, "tokenizer.ggml.bos_token_id") ?? -1,
    eosId: intOrUndefined(meta, "tokenizer.ggml.eos_token_id") ?? -1,
    unkId: intOrUndefined(meta, "tokenizer.ggml.unknown_token_id"),
    addSpacePrefix: boolOrUndefined(meta, "tokenizer.ggml.add_space_prefix"),
    addBos: boolOrUndefined(meta, "tokenizer.ggml.add_bos_token"),
  });
}
