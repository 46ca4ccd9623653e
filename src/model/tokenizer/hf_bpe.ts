/**
 * Hugging Face tokenizer.json BPE (model.type "BPE"), covering what llama-style tokenizer.json files use.
 *
 * Encode: non-special added tokens are split out of the text first (special ones are never produced from plain
 * text); each remaining segment goes through the normalizer (Sequence, Prepend, Replace, NFC/NFD/NFKC/NFKD,
 * Lowercase, Strip), the pre-tokenizer (null, Metaspace, ByteLevel, Split on a string, Sequence), then BPE per
 * word (a word that is a piece as it is with `ignore_merges`): characters (or byte-level characters) to ids — missing ones as `<0xXX>` byte-fallback tokens when the
 * vocabulary has all of them, else unk (consecutive unks fused when `fuse_unk`) — and merges applied by rank
 * (lowest first, ties leftmost).
 *
 * Decode: special added tokens dropped; the decoder pipeline (Sequence of Replace, ByteFallback, Fuse, Strip;
 * Metaspace; ByteLevel) is reduced to a per-token byte string plus a number of leading spaces stripped from the
 * start of the text, so whole and streaming decoding agree.
 */
import { BaseTokenizer } from "./base.ts";
import { byteLevelDecode, byteLevelTables, RankedMerges } from "./bpe.ts";
import { EOG_TEXTS } from "./vocab.ts";
import { bytePiece, parseBytePiece, type PieceBytesTable, utf8 } from "./piece_decoder.ts";

type Json = Record<string, unknown>;

const SPACE_MARK = "\u2581";

function fail(msg: string): never {
  throw new Error(`tokenizer.json: ${msg}`);
}

/** A short rendering of any JSON value for an error message (never throws, never huge). */
function show(v: unknown): string {
  if (typeof v === "string") return JSON.stringify(v.length > 60 ? v.slice(0, 60) + "…" : v);
  if (v === null || typeof v !== "object") return String(v);
  return Array.isArray(v) ? "an array" : "an object";
}

/** Ids beyond this many pieces plus slack are refused: a vocabulary is (nearly) dense, its tables are by id. */
const MAX_ID_SLACK = 1 << 16;

function isObj(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** The `pattern` of Replace/Split: `{String: s}` or `{Regex: r}`. */
function patternOf(p: unknown, where: string): string | RegExp {
  if (typeof p === "string") return p;
  if (isObj(p) && typeof p.String === "string") return p.String;
  if (isObj(p) && typeof p.Regex === "string") return new RegExp(p.Regex, "gu");
  fail(`${where}: unsupported pattern ${show(p)}`);
}

function replaceAll(s: string, pattern: string | RegExp, content: string): string {
  return typeof pattern === "string" ? s.replaceAll(pattern, content) : s.replace(pattern, () => content);
}

// ---------------------------------------------------------------------------------------------------------
// Normalizers

type Normalizer = (s: string) => string;

function buildNormalizer(n: unknown): Normalizer {
  if (n === null || n === undefined) return (s) => s;
  if (!isObj(n)) fail(`normalizer: expected an object`);
  switch (n.type) {
    case "Sequence": {
      const parts =
        (Array.isArray(n.normalizers) ? n.normalizers : fail("normalizer Sequence without normalizers"))
          .map(buildNormalizer);
      return (s) => parts.reduce((acc, f) => f(acc), s);
    }
    case "Prepend": {
      const p = typeof n.prepend === "string" ? n.prepend : fail("Prepend normalizer without prepend");
      return (s) => (s.length > 0 ? p + s : s);
    }
    case "Replace": {
      const pat = patternOf(n.pattern, "Replace normalizer");
      const content = typeof n.content === "string" ? n.content : fail("Replace normalizer without content");
      return (s) => replaceAll(s, pat, content);
    }
    case "NFC":
    case "NFD":
    case "NFKC":
    case "NFKD": {
      const form = n.type;
      return (s) => s.normalize(form);
    }
    case "Lowercase":
      return (s) => s.toLowerCase();
    case "Strip": {
      const left = n.left !== false, right = n.right !== false;
      return (s) => (left && right ? s.trim() : left ? s.trimStart() : right ? s.trimEnd() : s);
    }
    default:
      fail(`unsupported normalizer type ${show(n.type)}`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Pre-tokenizers: a word list → a word list. `first` is true for the first segment of the text.

type PreTokenizer = (words: string[], first: boolean) => string[];

const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

type SplitBehavior = "Isolated" | "Removed" | "MergedWithPrevious" | "MergedWithNext";

/** The [start, end) ranges where `pattern` matches `s` (non-empty matches, left to right). */
function matchRanges(s: string, pattern: string | RegExp): [number, number][] {
  const out: [number, number][] = [];
  if (typeof pattern === "string") {
    if (pattern.length === 0) return out;
    for (let i = s.indexOf(pattern); i >= 0; i = s.indexOf(pattern, i + pattern.length)) {
      out.push([i, i + pattern.length]);
    }
    return out;
  }
  pattern.lastIndex = 0;
  for (let m = pattern.exec(s); m !== null; m = pattern.exec(s)) {
    if (m[0].length === 0) pattern.lastIndex = m.index + 1;
    else out.push([m.index, m.index + m[0].length]);
  }
  return out;
}

/** tokenizers' Split: cut `s` at the matches of `pattern`, keeping them as `behavior` says. */
function splitBy(s: string, pattern: string | RegExp, behavior: SplitBehavior): string[] {
  const cuts: number[] = [0];
  let keep: boolean[] = [];
  let last = 0;
  for (const [a, b] of matchRanges(s, pattern)) {
    if (behavior === "MergedWithNext") {
      if (a > cuts[cuts.length - 1]) cuts.push(a);
    } else if (behavior === "MergedWithPrevious") cuts.push(b);
    else {
      if (a > last) {
        cuts.push(a);
        keep.push(true);
      }
      cuts.push(b);
      keep.push(behavior === "Isolated");
    }
    last = b;
  }
  if (cuts[cuts.length - 1] < s.length) {
    cuts.push(s.length);
    keep.push(true);
  }
  if (behavior === "MergedWithNext" || behavior === "MergedWithPrevious") keep = cuts.map(() => true);
  const out: string[] = [];
  for (let k = 0; k + 1 < cuts.length; k++) {
    if (keep[k] && cuts[k + 1] > cuts[k]) out.push(s.slice(cuts[k], cuts[k + 1]));
  }
  return out;
}

function buildPreTokenizer(p: unknown): PreTokenizer {
  if (p === null || p === undefined) return (w) => w;
  if (!isObj(p)) fail("pre_tokenizer: expected an object");
  switch (p.type) {
    case "Sequence": {
      const parts =
        (Array.isArray(p.pretokenizers) ? p.pretokenizers : fail("pre_tokenizer Sequence without list"))
          .map(buildPreTokenizer);
      return (w, first) => parts.reduce((acc, f) => f(acc, first), w);
    }
    case "Metaspace": {
      const rep = typeof p.replacement === "string" ? p.replacement : SPACE_MARK;
      const scheme = typeof p.prepend_scheme === "string"
        ? p.prepend_scheme
        : p.add_prefix_space === false
        ? "never"
        : "always";
      if (!["first", "always", "never"].includes(scheme)) fail(`Metaspace prepend_scheme ${show(scheme)}`);
      const split = p.split !== false;
      return (words, first) => {
        const out: string[] = [];
        words.forEach((w, i) => {
          let s = w.replaceAll(" ", rep);
          const prepend = scheme === "always" || (scheme === "first" && first && i === 0);
          if (prepend && s.length > 0 && !s.startsWith(rep)) s = rep + s;
          if (split) out.push(...splitBy(s, rep, "MergedWithNext"));
          else if (s.length > 0) out.push(s);
        });
        return out;
      };
    }
    case "ByteLevel": {
      const addPrefix = p.add_prefix_space === true;
      const useRegex = p.use_regex !== false;
      const { toChar } = byteLevelTables();
      return (words, first) => {
        const out: string[] = [];
        words.forEach((w, i) => {
          let s = w;
          if (addPrefix && first && i === 0 && s.length > 0 && !s.startsWith(" ")) s = " " + s;
          const parts = useRegex ? (s.match(GPT2_SPLIT) ?? []) : [s];
          for (const part of parts) {
            let m = "";
            for (const b of utf8(part)) m += toChar[b];
            if (m.length > 0) out.push(m);
          }
        });
        return out;
      };
    }
    case "Split": {
      const pat = patternOf(p.pattern, "Split pre_tokenizer");
      if (p.invert === true) fail("Split pre_tokenizer: invert is not supported");
      const behavior = p.behavior;
      if (!["Isolated", "Removed", "MergedWithPrevious", "MergedWithNext"].includes(behavior as string)) {
        fail(`Split pre_tokenizer: unsupported behavior ${show(behavior)}`);
      }
      return (words) => words.flatMap((w) => splitBy(w, pat, behavior as SplitBehavior));
    }
    default:
      fail(`unsupported pre_tokenizer type ${show(p.type)}`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Decoders, reduced to per-token transforms + leading spaces stripped at the start.

interface DecoderPlan {
  /** Per-token string replacements in order (e.g. "▁" → " "). */
  replace: [string, string][];
  byteFallback: boolean;
  byteLevel: boolean;
  stripStart: number;
}

function buildDecoder(d: unknown, plan: DecoderPlan): void {
  if (d === null || d === undefined) return;
  if (!isObj(d)) fail("decoder: expected an object");
  switch (d.type) {
    case "Sequence":
      for (const x of Array.isArray(d.decoders) ? d.decoders : fail("decoder Sequence without decoders")) {
        buildDecoder(x, plan);
      }
      return;
    case "Replace": {
      const pat = patternOf(d.pattern, "Replace decoder");
      if (typeof pat !== "string") fail("Replace decoder: only string patterns");
      plan.replace.push([pat, typeof d.content === "string" ? d.content : ""]);
      return;
    }
    case "ByteFallback":
      plan.byteFallback = true;
      return;
    case "Fuse":
      return;
    case "Strip": {
      if (d.content !== " ") fail(`Strip decoder: only content " " is supported`);
      if (typeof d.stop === "number" && d.stop > 0) fail("Strip decoder: stop > 0 is not supported");
      plan.stripStart += typeof d.start === "number" ? d.start : 0;
      return;
    }
    case "Metaspace": {
      const rep = typeof d.replacement === "string" ? d.replacement : SPACE_MARK;
      plan.replace.push([rep, " "]);
      const scheme = typeof d.prepend_scheme === "string"
        ? d.prepend_scheme
        : d.add_prefix_space === false
        ? "never"
        : "always";
      if (scheme !== "never") plan.stripStart += 1;
      return;
    }
    case "ByteLevel":
      plan.byteLevel = true;
      return;
    default:
      fail(`unsupported decoder type ${show(d.type)}`);
  }
}

// ---------------------------------------------------------------------------------------------------------

interface AddedToken {
  id: number;
  content: string;
  special: boolean;
  /** Swallow the whitespace before / after a match. */
  lstrip: boolean;
  rstrip: boolean;
}

export interface HfTokenizerOptions {
  /** Further end-of-generation ids, e.g. generation_config.json's `eos_token_id` list. */
  eosIds?: readonly number[];
}

export class HfBpeTokenizer extends BaseTokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  readonly unkId: number;
  /** Whether the post-processor (or tokenizer_config `add_bos_token`) adds BOS: what `addSpecial` adds. */
  readonly addBos: boolean;
  /** tokenizer_config `add_eos_token`. */
  readonly addEos: boolean;
  /** tokenizer_config `clean_up_tokenization_spaces` (used by `decode(…, {cleanSpaces: true})`). */
  readonly cleanSpaces: boolean;
  readonly eogIds: readonly number[];
  #vocab = new Map<string, number>();
  #pieces: string[];
  #merges: RankedMerges;
  #byteIds = new Int32Array(256).fill(-1);
  #byteFallback: boolean;
  #fuseUnk: boolean;
  /** model.ignore_merges (Llama 3): a word that is a vocabulary piece is emitted whole. */
  #ignoreMerges: boolean;
  #prefix: string;
  #suffix: string;
  #normalize: Normalizer;
  #preTokenize: PreTokenizer;
  #added: AddedToken[];
  /** Added tokens by first UTF-16 unit, longest first: [always matched, matched with parseSpecial]. */
  #addedByFirst: [Map<string, AddedToken[]>, Map<string, AddedToken[]>];
  #decodeTable: PieceBytesTable;

  constructor(json: unknown, tokenizerConfig?: unknown, opts: HfTokenizerOptions = {}) {
    super();
    if (!isObj(json)) fail("expected a JSON object");
    const model = json.model;
    if (!isObj(model)) fail("missing model");
    if (model.type !== undefined && model.type !== "BPE") {
      fail(`model type ${show(model.type)} is not BPE`);
    }
    if (!isObj(model.vocab)) fail("model.vocab must be an object");
    let maxId = -1;
    for (const [piece, id] of Object.entries(model.vocab)) {
      if (typeof id !== "number" || !Number.isInteger(id) || id < 0) {
        fail(`vocab entry ${show(piece)}: bad id ${show(id)}`);
      }
      this.#vocab.set(piece, id);
      maxId = Math.max(maxId, id);
    }
    const addedRaw = Array.isArray(json.added_tokens) ? json.added_tokens : [];
    this.#added = addedRaw.map((t, i) => {
      if (!isObj(t) || typeof t.id !== "number" || !Number.isInteger(t.id) || t.id < 0) {
        fail(`added_tokens[${i}] malformed`);
      }
      if (typeof t.content !== "string") fail(`added_tokens[${i}] malformed`);
      maxId = Math.max(maxId, t.id);
      return {
        id: t.id,
        content: t.content,
        special: t.special === true,
        lstrip: t.lstrip === true,
        rstrip: t.rstrip === true,
      };
    });
    if (maxId >= this.#vocab.size + this.#added.length + MAX_ID_SLACK) {
      fail(`ids are sparse: id ${maxId} for ${this.#vocab.size + this.#added.length} pieces`);
    }
    this.vocabSize = maxId + 1;
    this.#pieces = new Array(this.vocabSize).fill("");
    for (const [piece, id] of this.#vocab) this.#pieces[id] = piece;
    for (const t of this.#added) this.#pieces[t.id] = t.content;

    const merges = Array.isArray(model.merges) ? model.merges : fail("model.merges must be an array");
    this.#merges = new RankedMerges(this.vocabSize);
    merges.forEach((m, rank) => {
      let a: unknown, b: unknown;
      if (typeof m === "string") {
        const k = m.indexOf(" ");
        if (k < 0) fail(`merges[${rank}] ${show(m)} is not "a b"`);
        a = m.slice(0, k);
        b = m.slice(k + 1);
      } else if (Array.isArray(m) && m.length === 2) [a, b] = m;
      else fail(`merges[${rank}] malformed`);
      const ia = this.#vocab.get(a as string), ib = this.#vocab.get(b as string);
      const im = this.#vocab.get((a as string) + (b as string));
      if (ia === undefined || ib === undefined || im === undefined) {
        fail(`merges[${rank}] [${show(a)}, ${show(b)}] uses pieces missing from the vocabulary`);
      }
      this.#merges.add(ia, ib, rank, im);
    });

    this.#byteFallback = model.byte_fallback === true;
    this.#fuseUnk = model.fuse_unk === true;
    this.#ignoreMerges = model.ignore_merges === true;
    this.#prefix = typeof model.continuing_subword_prefix === "string" ? model.continuing_subword_prefix : "";
    this.#suffix = typeof model.end_of_word_suffix === "string" ? model.end_of_word_suffix : "";
    for (let b = 0; b < 256; b++) this.#byteIds[b] = this.#vocab.get(bytePiece(b)) ?? -1;
    this.#normalize = buildNormalizer(json.normalizer);
    this.#preTokenize = buildPreTokenizer(json.pre_tokenizer);
    this.#addedByFirst = [new Map(), new Map()];
    for (const t of [...this.#added].sort((x, y) => y.content.length - x.content.length)) {
      if (t.content.length === 0) continue;
      const m = this.#addedByFirst[t.special ? 1 : 0];
      const first = t.content[0];
      m.set(first, [...(m.get(first) ?? []), t]);
    }

    const cfg = isObj(tokenizerConfig) ? tokenizerConfig : {};
    const idOf = (tok: unknown): number => {
      const s = typeof tok === "string"
        ? tok
        : isObj(tok) && typeof tok.content === "string"
        ? tok.content
        : undefined;
      if (s === undefined) return -1;
      return this.#added.find((t) => t.content === s)?.id ?? this.#vocab.get(s) ?? -1;
    };
    const unkName = typeof model.unk_token === "string" ? model.unk_token : undefined;
    this.unkId = unkName !== undefined ? (this.#vocab.get(unkName) ?? idOf(unkName)) : -1;
    if (unkName !== undefined && this.unkId < 0) {
      fail(`unk_token ${show(unkName)} is not in the vocabulary`);
    }

    // BOS: tokenizer_config bos_token, else the first special token of the post-processor's single template.
    const templateBos = templateFirstSpecial(json.post_processor, (s) => idOf(s));
    let bos = idOf(cfg.bos_token);
    if (bos < 0) bos = templateBos;
    if (bos < 0) bos = idOf("<s>");
    this.bosId = bos;
    let eos = idOf(cfg.eos_token);
    if (eos < 0) eos = idOf("</s>");
    this.eosId = eos;
    this.addBos = this.bosId >= 0 &&
      (typeof cfg.add_bos_token === "boolean"
        ? cfg.add_bos_token
        : templateBos >= 0 && templateBos === this.bosId);
    this.addEos = this.eosId >= 0 && cfg.add_eos_token === true;
    this.cleanSpaces = cfg.clean_up_tokenization_spaces === true;

    // End of generation: EOS, the caller's ids, and the tokens llama.cpp recognises by their text.
    const eog = new Set<number>();
    if (this.eosId >= 0) eog.add(this.eosId);
    for (const id of opts.eosIds ?? []) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) fail(`eos id ${id} out of range`);
      eog.add(id);
    }
    for (const t of EOG_TEXTS) {
      const id = idOf(t);
      if (id >= 0) eog.add(id);
    }
    this.eogIds = [...eog].sort((x, y) => x - y);

    const plan: DecoderPlan = { replace: [], byteFallback: false, byteLevel: false, stripStart: 0 };
    buildDecoder(json.decoder, plan);
    const special = new Set(this.#added.filter((t) => t.special).map((t) => t.id));
    const bytes: Uint8Array[] = [];
    for (let id = 0; id < this.vocabSize; id++) {
      if (special.has(id)) {
        bytes.push(new Uint8Array(0));
        continue;
      }
      let piece = this.#pieces[id];
      const byte = plan.byteFallback ? parseBytePiece(piece) : -1;
      if (byte >= 0) {
        bytes.push(Uint8Array.of(byte));
        continue;
      }
      for (const [from, to] of plan.replace) piece = piece.replaceAll(from, to);
      bytes.push(plan.byteLevel ? byteLevelDecode(piece) : utf8(piece));
    }
    this.#decodeTable = { bytes, stripSpaces: plan.stripStart, restartIds: new Set() };
  }

  protected encodeText(text: string, parseSpecial: boolean, out: number[]): void {
    let first = true;
    for (const seg of this.#splitAdded(text, parseSpecial)) {
      if (typeof seg === "number") {
        out.push(seg);
        first = false;
        continue;
      }
      const words = this.#preTokenize([this.#normalize(seg)], first);
      first = false;
      for (const w of words) for (const id of this.#bpeWord(w)) out.push(id);
    }
  }

  /**
   * Splits out added tokens, leftmost first and the longest at a position: non-special ones always, special
   * ones with `parseSpecial`; `lstrip`/`rstrip` tokens take the whitespace beside them along.
   */
  #splitAdded(text: string, parseSpecial: boolean): (string | number)[] {
    const maps = parseSpecial ? this.#addedByFirst : [this.#addedByFirst[0]];
    if (maps.every((m) => m.size === 0)) return text.length > 0 ? [text] : [];
    const out: (string | number)[] = [];
    let start = 0;
    for (let i = 0; i < text.length;) {
      let t: AddedToken | undefined;
      for (const m of maps) {
        const c = m.get(text[i])?.find((a) => text.startsWith(a.content, i));
        if (c && (!t || c.content.length > t.content.length)) t = c;
      }
      if (!t) {
        i++;
        continue;
      }
      let left = i;
      if (t.lstrip) { while (left > start && /\s/.test(text[left - 1])) left--; }
      if (left > start) out.push(text.slice(start, left));
      out.push(t.id);
      i += t.content.length;
      if (t.rstrip) { while (i < text.length && /\s/.test(text[i])) i++; }
      start = i;
    }
    if (start < text.length) out.push(text.slice(start));
    return out;
  }

  #bpeWord(word: string): number[] {
    if (word.length === 0) return [];
    return this.#merges.cached(word, () => {
      const whole = this.#ignoreMerges ? this.#vocab.get(word) : undefined;
      if (whole !== undefined) return [whole];
      const ids: number[] = [];
      const mergeable: number[] = [];
      const chars = Array.from(word);
      let lastUnk = false;
      chars.forEach((ch, i) => {
        let s = ch;
        if (i > 0) s = this.#prefix + s;
        if (i === chars.length - 1) s = s + this.#suffix;
        const id = this.#vocab.get(s);
        if (id !== undefined) {
          ids.push(id);
          mergeable.push(1);
          lastUnk = false;
          return;
        }
        if (this.#byteFallback) {
          const bs = utf8(ch);
          if (bs.every((b) => this.#byteIds[b] >= 0)) {
            for (const b of bs) {
              ids.push(this.#byteIds[b]);
              mergeable.push(1);
            }
            lastUnk = false;
            return;
          }
        }
        if (this.unkId < 0) throw new Error(`tokenizer: no token for ${JSON.stringify(ch)} and no unk token`);
        if (this.#fuseUnk && lastUnk) return;
        ids.push(this.unkId);
        mergeable.push(1);
        lastUnk = true;
      });
      return this.#merges.merge(ids, Uint8Array.from(mergeable));
    });
  }

  protected decodeTable(): PieceBytesTable {
    return this.#decodeTable;
  }

  protected pieceOf(id: number): string {
    return this.#pieces[id];
  }

  protected cleanUp(text: string): string {
    return cleanUpTokenizationSpaces(text);
  }

  /** Id of a vocabulary piece or added token, or -1. */
  tokenId(text: string): number {
    return this.#vocab.get(text) ?? this.#added.find((t) => t.content === text)?.id ?? -1;
  }
}

/** transformers' clean_up_tokenization. */
function cleanUpTokenizationSpaces(s: string): string {
  return s.replaceAll(" .", ".").replaceAll(" ?", "?").replaceAll(" !", "!").replaceAll(" ,", ",")
    .replaceAll(" ' ", "'").replaceAll(" n't", "n't").replaceAll(" 'm", "'m").replaceAll(" 's", "'s")
    .replaceAll(" 've", "'ve").replaceAll(" 're", "'re");
}

/** The id of the first special token of a TemplateProcessing `single` template (-1 when none leads it). */
function templateFirstSpecial(pp: unknown, idOf: (s: string) => number): number {
  if (!isObj(pp)) return -1;
  if (pp.type === "Sequence" && Array.isArray(pp.processors)) {
    for (const p of pp.processors) {
      const id = templateFirstSpecial(p, idOf);
      if (id >= 0) return id;
    }
    return -1;
  }
  if (pp.type !== "TemplateProcessing" || !Array.isArray(pp.single) || pp.single.length === 0) return -1;
  const first = pp.single[0];
  if (!isObj(first) || !isObj(first.SpecialToken)) return -1;
  const name = first.SpecialToken.id;
  if (typeof name !== "string") return -1;
  const st = isObj(pp.special_tokens) ? pp.special_tokens[name] : undefined;
  if (isObj(st) && Array.isArray(st.ids) && typeof st.ids[0] === "number") return st.ids[0];
  return idOf(name);
}

/** Builds the tokenizer from a parsed tokenizer.json (and optionally tokenizer_config.json). */
export function hfTokenizerFromJSON(
  json: unknown,
  tokenizerConfig?: unknown,
  opts?: HfTokenizerOptions,
): HfBpeTokenizer {
  return new HfBpeTokenizer(json, tokenizerConfig, opts);
}
