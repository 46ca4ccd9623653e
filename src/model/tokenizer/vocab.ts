/**
 * A GGUF vocabulary as llama.cpp (c392e509) loads it, shared by the SentencePiece and byte-level BPE families:
 * token attributes from `token_type` (plus llama.cpp's per-model rules, e.g. phi-3's RSTRIP), special ids from
 * metadata or detected by text, the end-of-generation set, BOS/EOS flags, and the special-token partition of a
 * prompt (`tokenizer_st_partition`): control, unknown and user-defined tokens, longest first, are cut out of the
 * text before the family's tokenizer sees it — user-defined ones always, control/unknown ones only with
 * `parseSpecial` — so they are never split; LSTRIP/RSTRIP swallow the ASCII whitespace beside them.
 */
import { BaseTokenizer } from "./base.ts";
import { type PieceBytesTable, utf8 } from "./piece_decoder.ts";

/** GGUF `tokenizer.ggml.token_type` values. */
export enum TokenType {
  Undefined = 0,
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
}

/** llama.cpp's token attribute bits. */
export const Attr = {
  Undefined: 0,
  Unknown: 1 << 0,
  Unused: 1 << 1,
  Normal: 1 << 2,
  Control: 1 << 3,
  UserDefined: 1 << 4,
  Byte: 1 << 5,
  Lstrip: 1 << 7,
  Rstrip: 1 << 8,
} as const;

const TYPE_ATTR: Record<number, number> = {
  [TokenType.Unknown]: Attr.Unknown,
  [TokenType.Unused]: Attr.Unused,
  [TokenType.Normal]: Attr.Normal,
  [TokenType.Control]: Attr.Control,
  [TokenType.UserDefined]: Attr.UserDefined,
  [TokenType.Byte]: Attr.Byte,
};

/** Special token roles; ids come from `tokenizer.ggml.<key>` or, for the detectable ones, from their text. */
export const SPECIAL_KEYS = {
  bos: ["bos_token_id"],
  eos: ["eos_token_id"],
  eot: ["eot_token_id"],
  eom: ["eom_token_id"],
  unk: ["unknown_token_id"],
  sep: ["seperator_token_id"],
  pad: ["padding_token_id"],
  fimPre: ["fim_pre_token_id", "prefix_token_id"],
  fimSuf: ["fim_suf_token_id", "suffix_token_id"],
  fimMid: ["fim_mid_token_id", "middle_token_id"],
  fimPad: ["fim_pad_token_id"],
  fimRep: ["fim_rep_token_id"],
  fimSep: ["fim_sep_token_id"],
} as const;
export type SpecialRole = keyof typeof SPECIAL_KEYS;

/** Texts llama.cpp recognises a role by when the metadata does not name it (first match by id here). */
const DETECT: Partial<Record<SpecialRole, string[]>> = {
  eot: [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "<｜end▁of▁sentence｜>",
  ],
  eom: ["<|eom_id|>"],
  fimPre: ["<|fim_prefix|>", "<fim-prefix>", "<｜fim▁begin｜>", "<PRE>"],
  fimSuf: ["<|fim_suffix|>", "<fim-suffix>", "<｜fim▁hole｜>", "<SUF>"],
  fimMid: ["<|fim_middle|>", "<fim-middle>", "<｜fim▁end｜>", "<MID>"],
  fimPad: ["<|fim_pad|>", "<fim-pad>", "<PAD>"],
  fimRep: ["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>"],
  fimSep: ["<|file_sep|>"],
};

const DETECT_BY_TEXT = new Map(
  (Object.entries(DETECT) as [SpecialRole, string[]][]).flatMap(([role, texts]) =>
    texts.map((t) => [t, role])
  ),
);

/** Tokens that end generation by their text (llama.cpp's list, plus Llama 3's `<|end_of_text|>` of later versions). */
export const EOG_TEXTS: ReadonlySet<string> = new Set([
  "<|eot_id|>",
  "<|im_end|>",
  "<|end|>",
  "<end_of_turn>",
  "<|endoftext|>",
  "<|eom_id|>",
  "<EOT>",
  "<|end_of_text|>",
]);

export interface VocabOptions {
  tokens: string[];
  /** GGUF token types (without them every token is normal, as in llama.cpp). */
  tokenTypes?: ArrayLike<number>;
  bosId?: number;
  eosId?: number;
  unkId?: number;
  /** Further roles from metadata (-1 or absent: detect by text where llama.cpp does). */
  specialIds?: Partial<Record<SpecialRole, number>>;
  /** `tokenizer.ggml.add_bos_token` / `add_eos_token` as resolved for the family. */
  addBos: boolean;
  addEos: boolean;
  /** `general.name` and `tokenizer.ggml.pre`, which select llama.cpp's per-model token attributes. */
  modelName?: string;
  pre?: string;
}

/** A prompt cut into raw text and already-decided token ids. */
export type Fragment = string | number;

const ASCII_SPACE = /[\t\n\v\f\r ]/;

export class Vocab {
  readonly size: number;
  readonly tokens: readonly string[];
  /** llama.cpp attribute bits per token. */
  readonly attrs: Uint16Array;
  /** Token text → id over the whole vocabulary (a duplicate text maps to its last id, as llama.cpp). */
  readonly textToId = new Map<string, number>();
  readonly ids: Record<SpecialRole, number>;
  readonly addBos: boolean;
  readonly addEos: boolean;
  readonly eog: ReadonlySet<number>;
  /** Control, unknown and user-defined ids, longest text (in UTF-8 bytes) first. */
  readonly #special: number[];

  constructor(o: VocabOptions) {
    const n = o.tokens.length;
    if (n === 0) throw new Error("vocabulary: no tokens");
    if (o.tokenTypes && o.tokenTypes.length !== n) {
      throw new Error(`vocabulary: ${n} tokens but ${o.tokenTypes.length} token types`);
    }
    this.size = n;
    // An empty token text would match everywhere; llama.cpp renames it.
    this.tokens = o.tokens.map((t, i) => (t.length === 0 ? `[EMPTY_${i}]` : t));
    this.tokens.forEach((t, i) => this.textToId.set(t, i));
    const checkId = (name: string, id: number | undefined): number => {
      if (id === undefined || id === -1) return -1;
      if (!Number.isInteger(id) || id < 0 || id >= n) {
        throw new Error(`vocabulary: ${name} id ${id} out of range [0, ${n})`);
      }
      return id;
    };
    const ids = {} as Record<SpecialRole, number>;
    for (const role of Object.keys(SPECIAL_KEYS) as SpecialRole[]) {
      ids[role] = checkId(role, o.specialIds?.[role]);
    }
    ids.bos = checkId("bos", o.bosId);
    ids.eos = checkId("eos", o.eosId);
    ids.unk = checkId("unk", o.unkId);

    this.attrs = new Uint16Array(n);
    for (let i = 0; i < n; i++) {
      this.attrs[i] = o.tokenTypes ? (TYPE_ATTR[Number(o.tokenTypes[i])] ?? Attr.Undefined) : Attr.Normal;
    }

    // Roles the metadata leaves open are found by text; such tokens become control tokens.
    for (let i = 0; i < n; i++) {
      const role = DETECT_BY_TEXT.get(this.tokens[i]);
      if (role === undefined || ids[role] >= 0) continue;
      ids[role] = i;
      this.attrs[i] = Attr.Control;
    }
    const eog = new Set<number>();
    for (const id of [ids.fimPad, ids.fimRep, ids.fimSep]) if (id >= 0) eog.add(id);
    for (let i = 0; i < n; i++) {
      if (!EOG_TEXTS.has(this.tokens[i])) continue;
      eog.add(i);
      if (!(this.attrs[i] & Attr.Control)) this.attrs[i] = Attr.Control;
    }
    for (const id of [ids.eos, ids.eot, ids.eom]) if (id >= 0) eog.add(id);
    this.eog = eog;
    this.ids = ids;

    this.addBos = o.addBos;
    this.addEos = o.addEos;
    if (this.addBos && ids.bos < 0) {
      throw new Error("vocabulary: add_bos_token is true but there is no BOS id");
    }
    if (this.addEos && ids.eos < 0) {
      throw new Error("vocabulary: add_eos_token is true but there is no EOS id");
    }

    this.#special = [];
    for (let i = 0; i < n; i++) {
      if (this.attrs[i] & (Attr.Control | Attr.UserDefined | Attr.Unknown)) this.#special.push(i);
    }
    const byteLen = new Map(this.#special.map((id) => [id, utf8(this.tokens[id]).length]));
    this.#special.sort((a, b) => byteLen.get(b)! - byteLen.get(a)! || a - b);
    this.#applyModelAttrs(o.modelName ?? "", o.pre ?? "");
  }

  /** llama.cpp's per-model attributes, keyed on `general.name` (lowercased) and the pre-tokenizer name. */
  #applyModelAttrs(modelName: string, pre: string): void {
    const name = modelName.toLowerCase();
    const set = (text: string, bit: number, on: boolean) => {
      const id = this.textToId.get(text);
      if (id !== undefined) this.attrs[id] = on ? this.attrs[id] | bit : this.attrs[id] & ~bit;
    };
    if (["jina-v2-de", "jina-v2-es", "jina-v2-code"].some((p) => pre.includes(p))) {
      set("<mask>", Attr.Lstrip, true);
    } else if (name.includes("phi-3") || name.includes("phi3")) {
      for (const id of this.#special) this.attrs[id] |= Attr.Rstrip;
      set("</s>", Attr.Rstrip, true);
      for (const t of ["<unk>", "<s>", "<|endoftext|>"]) set(t, Attr.Rstrip, false);
    }
  }

  isEog(id: number): boolean {
    return this.eog.has(id);
  }

  /**
   * Cuts special tokens out of `text` (llama.cpp's tokenizer_st_partition): for each candidate token, longest
   * first, every occurrence in every remaining text fragment becomes its id.
   */
  partition(text: string, parseSpecial: boolean): Fragment[] {
    if (text.length === 0) return [];
    let frags: Fragment[] = [text];
    // Whether the text has a token's first character at all (many special tokens share one, e.g. "<").
    const hasFirst = new Map<string, boolean>();
    for (const id of this.#special) {
      const attr = this.attrs[id];
      if (!parseSpecial && (attr & (Attr.Control | Attr.Unknown))) continue;
      const tok = this.tokens[id];
      let has = hasFirst.get(tok[0]);
      if (has === undefined) hasFirst.set(tok[0], has = text.includes(tok[0]));
      if (!has || !text.includes(tok)) continue;
      const next: Fragment[] = [];
      for (const f of frags) {
        if (typeof f === "number") {
          next.push(f);
          continue;
        }
        let start = 0;
        for (let at = f.indexOf(tok); at >= 0; at = f.indexOf(tok, start)) {
          let leftEnd = at;
          if (attr & Attr.Lstrip) { while (leftEnd > start && ASCII_SPACE.test(f[leftEnd - 1])) leftEnd--; }
          if (leftEnd > start) next.push(f.slice(start, leftEnd));
          next.push(id);
          start = at + tok.length;
          if (attr & Attr.Rstrip) { while (start < f.length && ASCII_SPACE.test(f[start])) start++; }
        }
        if (start < f.length) next.push(start === 0 ? f : f.slice(start));
      }
      frags = next;
    }
    return frags;
  }
}

/** The parts of a Tokenizer every GGUF family shares: the special-token partition, EOG, lookup by text. */
export abstract class VocabTokenizer extends BaseTokenizer {
  readonly vocab: Vocab;
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  readonly unkId: number;
  readonly addBos: boolean;
  readonly addEos: boolean;
  readonly eogIds: readonly number[];

  constructor(vocab: Vocab) {
    super();
    this.vocab = vocab;
    this.vocabSize = vocab.size;
    this.bosId = vocab.ids.bos;
    this.eosId = vocab.ids.eos;
    this.unkId = vocab.ids.unk;
    this.addBos = vocab.addBos;
    this.addEos = vocab.addEos;
    this.eogIds = [...vocab.eog].sort((a, b) => a - b);
  }

  /** Tokenizes one raw-text fragment into `out`; `afterSpecial` is true at the start and after a token. */
  protected abstract encodeFragment(text: string, out: number[], afterSpecial: boolean): void;

  /** The bytes `id` decodes to (empty for tokens that decode drops). */
  protected abstract pieceBytes(id: number): Uint8Array;

  /** Leading spaces the decoder strips at the start of the text and after BOS. */
  protected abstract get stripSpaces(): number;

  protected encodeText(text: string, parseSpecial: boolean, out: number[]): void {
    let afterSpecial = true;
    for (const f of this.vocab.partition(text, parseSpecial)) {
      if (typeof f === "number") {
        out.push(f);
        afterSpecial = true;
      } else {
        this.encodeFragment(f, out, afterSpecial);
        afterSpecial = false;
      }
    }
  }

  protected decodeTable(): PieceBytesTable {
    const bytes = Array.from({ length: this.vocabSize }, (_, id) => this.pieceBytes(id));
    const restart = new Set(this.bosId >= 0 ? [this.bosId] : []);
    return { bytes, stripSpaces: this.stripSpaces, restartIds: restart };
  }

  protected pieceOf(id: number): string {
    return this.vocab.tokens[id];
  }

  protected cleanUp(text: string): string {
    return cleanUpSpaces(text);
  }

  tokenId(text: string): number {
    return this.vocab.textToId.get(text) ?? -1;
  }

  /** The GGUF-style attribute bits of a token (see `Attr`). */
  tokenAttr(id: number): number {
    return this.vocab.attrs[id];
  }
}

/**
 * llama.cpp's clean_spaces pass of detokenize: drop the space before ? ! . , ; turn " ' " into "'"; drop the
 * space before 's 'm 're 've.
 */
export function cleanUpSpaces(s: string): string {
  return s.replace(/ ([?!.,])/g, "$1").replace(/ ' /g, "'").replace(/ '(s|m|re|ve)/g, "'$1");
}

// ---------------------------------------------------------------------------------------------------------
// GGUF metadata readers shared by the families.

export function metaInt(meta: Record<string, unknown>, key: string): number | undefined {
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

export function metaBool(meta: Record<string, unknown>, key: string): boolean | undefined {
  const v = meta[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "boolean") throw new Error(`GGUF metadata ${key}: expected a bool, got ${typeof v}`);
  return v;
}

export function metaString(meta: Record<string, unknown>, key: string): string | undefined {
  const v = meta[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") throw new Error(`GGUF metadata ${key}: expected a string, got ${typeof v}`);
  return v;
}

export function metaStrings(meta: Record<string, unknown>, key: string): string[] {
  const v = meta[key];
  if (!Array.isArray(v) || v.some((t) => typeof t !== "string")) {
    throw new Error(`GGUF metadata ${key}: expected an array of strings`);
  }
  return v as string[];
}

export function metaNumbers(meta: Record<string, unknown>, key: string): ArrayLike<number> | undefined {
  const v = meta[key];
  if (v === undefined) return undefined;
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

/**
 * The family-independent part of the vocabulary options from `tokenizer.ggml.*` metadata. `defaults` are the
 * family's ids and flags when a key is absent (an out-of-range default is dropped, as in llama.cpp).
 */
export function vocabOptionsFromGGUF(
  meta: Record<string, unknown>,
  defaults: { bos: number; eos: number; unk: number; addBos: boolean; addEos: boolean },
): VocabOptions {
  const tokens = metaStrings(meta, "tokenizer.ggml.tokens");
  const n = tokens.length;
  const typesRaw = metaNumbers(meta, "tokenizer.ggml.token_type");
  // Out-of-range ids (e.g. 0xFFFFFFFF for "none") keep the default, as llama.cpp does.
  const id = (role: SpecialRole, def: number) => {
    let v = def >= 0 && def < n ? def : -1;
    for (const k of SPECIAL_KEYS[role]) {
      const m = metaInt(meta, `tokenizer.ggml.${k}`);
      if (m !== undefined && m >= 0 && m < n) v = m;
    }
    return v;
  };
  const specialIds: Partial<Record<SpecialRole, number>> = {};
  for (const role of Object.keys(SPECIAL_KEYS) as SpecialRole[]) specialIds[role] = id(role, -1);
  return {
    tokens,
    tokenTypes: typesRaw,
    bosId: id("bos", defaults.bos),
    eosId: id("eos", defaults.eos),
    unkId: id("unk", defaults.unk),
    specialIds,
    addBos: metaBool(meta, "tokenizer.ggml.add_bos_token") ?? defaults.addBos,
    addEos: metaBool(meta, "tokenizer.ggml.add_eos_token") ?? defaults.addEos,
    modelName: metaString(meta, "general.name"),
    pre: metaString(meta, "tokenizer.ggml.pre"),
  };
}
