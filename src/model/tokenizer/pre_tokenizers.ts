/**
 * The byte-level BPE pre-tokenizer types, one table keyed by `tokenizer.ggml.pre` exactly as llama.cpp
 * (c392e509, plus the later `gpt-4o`) maps the names: each type's regexes (llama.cpp's strings verbatim, applied
 * in order, each splitting the pieces the previous one left — matches and the text between them both become
 * pieces) and its flags.
 *
 * Unicode: `\p{L}`, `\p{N}`, `\p{P}` are JavaScript's Unicode property classes (the `u` flag), so every script
 * is classified as llama.cpp's generated tables classify it. Whitespace is llama.cpp's: the Unicode White_Space
 * code points — llama.cpp maps the non-ASCII ones to U+000B before matching and lets `\s` match only
 * [\t\n\v\f\r ]; the splitter does the same (so JavaScript's extra `\s` member U+FEFF is not whitespace, and a
 * literal U+3000 in a character class never matches).
 */

export interface PreTokenizerType {
  /** `tokenizer.ggml.pre` values of this type. */
  names: string[];
  /** llama.cpp's regexes for it. */
  regexes: string[];
  /** A word that is itself a vocabulary token is emitted whole, without merges (llama3, tekken). */
  ignoreMerges?: boolean;
  /** Whether BOS is added unless the GGUF says otherwise (llama.cpp's per-type add_bos). */
  addBos?: boolean;
  /** llama.cpp's clean_spaces (clean_up_tokenization_spaces) for decoding; true unless the type clears it. */
  cleanSpaces: boolean;
}

const CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";
const R_GPT2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
const R_LLAMA3 = CONTRACTIONS +
  "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const R_QWEN2 = CONTRACTIONS +
  "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const R_BLOOM = " ?[^(\\s|.,!?\\u2026\\u3002\\uFF0C\\u3001\\u0964\\u06D4\\u060C)]+";
const R_CJK = "[\\u4E00-\\u9FA5\\u0800-\\u4E00\\uAC00-\\uD7FF]+";
const UPPER_LOWER = "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+";
const LOWER_UPPER = "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*";

export const PRE_TOKENIZERS: readonly PreTokenizerType[] = [
  {
    names: ["llama3", "llama-v3", "llama-bpe", "falcon3"],
    regexes: [R_LLAMA3],
    ignoreMerges: true,
    addBos: true,
    cleanSpaces: true,
  },
  { names: ["dbrx", "smaug-bpe"], regexes: [R_LLAMA3], cleanSpaces: true },
  { names: ["chatglm-bpe"], regexes: [R_LLAMA3], cleanSpaces: true },
  {
    names: ["deepseek-llm"],
    regexes: [
      "[\r\n]",
      "\\s?[A-Za-z\\u00B5\\u00C0-\\u00D6\\u00D8-\\u00F6\\u00F8-\\u01BA\\u01BC-\\u01BF\\u01C4-\\u0293\\u0295-\\u02AF\\u0370-\\u0373\\u0376\\u0377\\u037B-\\u037D\\u037F\\u0386\\u0388-\\u038A\\u038C\\u038E-\\u03A1\\u03A3-\\u03F5\\u03F7-\\u0481\\u048A-\\u052F\\u0531-\\u0556\\u10A0-\\u10C5\\u13A0-\\u13F5\\u13F8-\\u13FD\\u1C90-\\u1CBA\\u1CBD-\\u1CBF\\u1D00-\\u1D2B\\u1D6B-\\u1D77\\u1D79-\\u1D9A\\u1E00-\\u1F15\\u1F18-\\u1F1D\\u1F20-\\u1F45\\u1F48-\\u1F4D\\u1F50-\\u1F57\\u1F59\\u1F5B\\u1F5D\\u1F5F-\\u1F7D\\u1F80-\\u1FB4\\u1FB6-\\u1FBC\\u1FBE\\u1FC2-\\u1FC4\\u1FC6-\\u1FCC\\u1FD0-\\u1FD3\\u1FD6-\\u1FDB\\u1FE0-\\u1FEC\\u1FF2-\\u1FF4\\u1FF6-\\u1FFC\\u2102\\u2107\\u210A-\\u2113\\u2115\\u2119-\\u211D\\u2124\\u2126\\u2128\\u212A-\\u212D\\u212F-\\u2134\\u2139\\u213C-\\u213F\\u2145-\\u2149\\u214E\\u2183\\u2184\\u2C00-\\u2C7B\\u2C7E-\\u2CE4\\u2CEB-\\u2CEE\\u2CF2\\u2CF3\\uA640-\\uA66D\\uA680-\\uA69B\\uA722-\\uA76F\\uA771-\\uA787\\uA78B-\\uA78E\\uAB70-\\uABBF\\uFB00-\\uFB06\\uFB13-\\uFB17\\uFF21-\\uFF3A\\uFF41-\\uFF5A\\u{10400}-\\u{1044F}\\u{104B0}-\\u{104D3}\\u{104D8}-\\u{104FB}\\u{10C80}-\\u{10CB2}\\u{10CC0}-\\u{10CF2}\\u{118A0}-\\u{118DF}\\u{1E900}-\\u{1E943}]+",
      "\\s?[!-/:-~\\uFF01-\\uFF0F\\uFF1A-\\uFF5E\\u2018-\\u201F\\u3000-\\u3002]+",
      "\\s+$",
      R_CJK,
      "\\p{N}+",
    ],
    cleanSpaces: false,
  },
  {
    names: ["deepseek-coder"],
    regexes: ["[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", R_CJK, "\\p{N}"],
    cleanSpaces: false,
  },
  {
    names: ["deepseek-v3"],
    regexes: [
      "\\p{N}{1,3}",
      "[\\u4E00-\\u9FA5\\u3040-\\u309F\\u30A0-\\u30FF]+",
      "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
    ],
    cleanSpaces: false,
  },
  {
    names: ["falcon"],
    regexes: ["[\\p{P}\\$\\+<=>\\^~\\|`]+", R_GPT2, "[0-9][0-9][0-9]"],
    cleanSpaces: true,
  },
  {
    names: ["starcoder", "refact", "codeshell", "exaone", "minerva-7b"],
    regexes: ["\\p{N}", R_GPT2],
    cleanSpaces: true,
  },
  { names: ["smollm", "command-r"], regexes: ["\\p{N}", R_GPT2], cleanSpaces: false },
  {
    names: [
      "gpt-2",
      "phi-2",
      "jina-es",
      "jina-de",
      "gigachat",
      "jina-v1-en",
      "jina-v2-es",
      "jina-v2-de",
      "jina-v2-code",
      "roberta-bpe",
      "mpt",
      "olmo",
      "jais",
    ],
    regexes: [R_GPT2],
    cleanSpaces: true,
  },
  { names: ["qwen2", "deepseek-r1-qwen"], regexes: [R_QWEN2], cleanSpaces: false },
  { names: ["stablelm2", "megrez"], regexes: [R_QWEN2], cleanSpaces: true },
  { names: ["poro-chat"], regexes: [R_BLOOM], cleanSpaces: false },
  { names: ["bloom", "gpt3-finnish"], regexes: [R_BLOOM], cleanSpaces: true },
  { names: ["viking"], regexes: [R_BLOOM, "\\p{N}"], cleanSpaces: false },
  {
    names: ["tekken"],
    regexes: [
      UPPER_LOWER + "|" + LOWER_UPPER +
      "|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ],
    ignoreMerges: true,
    addBos: true,
    cleanSpaces: false,
  },
  {
    names: ["chameleon"],
    regexes: [
      "<sentinel:[0-9]+>",
      "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
      "([\\t\\n]|    |  )",
      "\\p{N}",
      "[\\p{P}!-/:-@\\[-`{-~]",
      R_GPT2,
    ],
    addBos: true,
    cleanSpaces: false,
  },
  {
    names: ["gpt-4o"],
    regexes: [
      UPPER_LOWER + CONTRACTIONS + "?|" + LOWER_UPPER + CONTRACTIONS +
      "?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ],
    cleanSpaces: false,
  },
  {
    names: ["default"],
    regexes: ["[\\p{P}\\$\\+<=>\\^~\\|]+", R_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"],
    cleanSpaces: true,
  },
];

const BY_NAME = new Map(PRE_TOKENIZERS.flatMap((t) => t.names.map((n) => [n, t] as const)));

/**
 * The pre-tokenizer type for a `tokenizer.ggml.pre` value. A missing or empty value is llama.cpp's `default`
 * with its warning (returned, for the caller to log); an unknown value is an error.
 */
export function preTokenizerFor(pre: string | undefined): { type: PreTokenizerType; warning?: string } {
  if (pre === undefined || pre === "") {
    return {
      type: BY_NAME.get("default")!,
      warning: "GGUF has no tokenizer.ggml.pre: using the 'default' pre-tokenizer (as llama.cpp does); " +
        "generation quality may be degraded",
    };
  }
  const type = BY_NAME.get(pre);
  if (!type) {
    throw new Error(
      `unknown pre-tokenizer type ${JSON.stringify(pre)} (tokenizer.ggml.pre; supported: ${
        [...BY_NAME.keys()].join(", ")
      })`,
    );
  }
  return { type };
}

// ---------------------------------------------------------------------------------------------------------
// Splitting

/** Non-ASCII White_Space code points, which llama.cpp matches as U+000B. */
const WIDE_SPACE = /[\x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]/g;
const ASCII_SPACE_CLASS = "\\t-\\r ";

/** Rewrites a llama.cpp regex for JavaScript: `\s`/`\S` become llama.cpp's (post-mapping) ASCII classes. */
export function translateRegex(src: string): RegExp {
  let out = "";
  let inClass = false;
  for (let i = 0; i < src.length; i++) {
    const c = src[i];
    if (c === "\\" && i + 1 < src.length) {
      const e = src[++i];
      if (e === "s") out += inClass ? ASCII_SPACE_CLASS : `[${ASCII_SPACE_CLASS}]`;
      else if (e === "S") {
        if (inClass) throw new Error(`pre-tokenizer regex: \\S inside a class is not supported: ${src}`);
        out += `[^${ASCII_SPACE_CLASS}]`;
      } else out += c + e;
      continue;
    }
    if (c === "[" && !inClass) inClass = true;
    else if (c === "]" && inClass) inClass = false;
    out += c;
  }
  return new RegExp(out, "gu");
}

/** Splits text into pre-tokenizer words with a sequence of regexes (llama.cpp's unicode_regex_split). */
export class RegexSplitter {
  readonly #regexes: RegExp[];

  constructor(regexes: readonly string[]) {
    this.#regexes = regexes.map(translateRegex);
  }

  /** The words of `text`, in order; they concatenate to `text`. */
  split(text: string): string[] {
    if (text.length === 0) return [];
    // Matching runs on a copy with wide spaces as U+000B (same length); words are cut from the original.
    const m = text.replace(WIDE_SPACE, "\v");
    let bounds = [0, text.length];
    for (const re of this.#regexes) {
      const next = [0];
      for (let k = 0; k + 1 < bounds.length; k++) {
        const from = bounds[k], to = bounds[k + 1];
        const piece = from === 0 && to === m.length ? m : m.slice(from, to);
        re.lastIndex = 0;
        let last = 0;
        for (let r = re.exec(piece); r !== null; r = re.exec(piece)) {
          const end = r.index + r[0].length;
          if (end === r.index) {
            re.lastIndex = r.index + 1;
            continue;
          }
          if (r.index > last) next.push(from + r.index);
          next.push(from + end);
          last = end;
        }
        if (last < piece.length) next.push(to);
      }
      bounds = next;
    }
    const words: string[] = new Array(bounds.length - 1);
    for (let k = 0; k + 1 < bounds.length; k++) words[k] = text.slice(bounds[k], bounds[k + 1]);
    return words;
  }
}
