/**
 * Synthetic models in the exact geometry of the models people run: the shape table (architecture, dims,
 * RoPE, ties, biases, q/k norms) and the vocabulary families (a real vocabulary from
 * ../shared/fixtures/vocab, the family's special tokens at their real ids, its pre-tokenizer and its chat
 * template). `make-model` (src/cli/make_model.ts) writes them with seeded random weights.
 *
 * Real vocabularies of Qwen2 and Llama 3 are not in the shared fixtures (4 MiB+), so those families take the
 * GPT-2 vocabulary and merges, place the family's special tokens at their real ids and pad the rest with
 * `[PAD<i>]` tokens of type UNUSED (as llama.cpp's converter pads Qwen's vocabulary), so the embedding matrix
 * and the ids of every control token are exactly the real model's.
 */
import { resolve } from "node:path";
import { readGGUFFile } from "./gguf.ts";
import { type GGUFKV, GGUFValueType, metaValue } from "./gguf.ts";
import { REPO_ROOT } from "./loader.ts";

/** llama.cpp token types (tokenizer.ggml.token_type). */
export const TokenType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

export interface Llama3Rope {
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalContext: number;
}

export interface ModelShape {
  /** general.architecture: the GGUF key prefix and the forward-pass variant. */
  arch: "llama" | "qwen2" | "qwen3";
  nLayers: number;
  dim: number;
  nHeads: number;
  nKVHeads: number;
  /** Per-head dimension; dim / nHeads unless given (Qwen3: 128 with dim 1024 and 16 heads). */
  headDim?: number;
  ffnDim: number;
  vocabSize: number;
  contextLength: number;
  ropeTheta: number;
  normEps: number;
  /** Tied embeddings: no output.weight tensor. */
  tied: boolean;
  /** q/k/v biases (Qwen2). */
  qkvBias?: boolean;
  /** Per-head RMS norms of q and k before RoPE (Qwen3). */
  qkNorm?: boolean;
  /** Llama 3.1/3.2 RoPE scaling, written as the rope_freqs.weight tensor like llama.cpp's converter. */
  llama3Rope?: Llama3Rope;
  /** Vocabulary family (FAMILIES). */
  family: string;
}

export const SHAPES: Record<string, ModelShape> = {
  "smollm2-135m": {
    arch: "llama",
    nLayers: 30,
    dim: 576,
    nHeads: 9,
    nKVHeads: 3,
    ffnDim: 1536,
    vocabSize: 49152,
    contextLength: 8192,
    ropeTheta: 100000,
    normEps: 1e-5,
    tied: true,
    family: "smollm2",
  },
  "qwen2.5-0.5b": {
    arch: "qwen2",
    nLayers: 24,
    dim: 896,
    nHeads: 14,
    nKVHeads: 2,
    ffnDim: 4864,
    vocabSize: 151936,
    contextLength: 32768,
    ropeTheta: 1e6,
    normEps: 1e-6,
    tied: true,
    qkvBias: true,
    family: "qwen2.5",
  },
  "r1-distill-qwen-1.5b": {
    arch: "qwen2",
    nLayers: 28,
    dim: 1536,
    nHeads: 12,
    nKVHeads: 2,
    ffnDim: 8960,
    vocabSize: 151936,
    contextLength: 131072,
    ropeTheta: 10000,
    normEps: 1e-6,
    tied: false,
    qkvBias: true,
    family: "r1-distill-qwen",
  },
  "qwen3-0.6b": {
    arch: "qwen3",
    nLayers: 28,
    dim: 1024,
    nHeads: 16,
    nKVHeads: 8,
    headDim: 128,
    ffnDim: 3072,
    vocabSize: 151936,
    contextLength: 40960,
    ropeTheta: 1e6,
    normEps: 1e-6,
    tied: true,
    qkNorm: true,
    family: "qwen3",
  },
  "llama-3.2-1b": {
    arch: "llama",
    nLayers: 16,
    dim: 2048,
    nHeads: 32,
    nKVHeads: 8,
    ffnDim: 8192,
    vocabSize: 128256,
    contextLength: 131072,
    ropeTheta: 500000,
    normEps: 1e-5,
    tied: true,
    llama3Rope: { factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalContext: 8192 },
    family: "llama3",
  },
  // CI-sized models in the real families (architecture features, vocabulary, special tokens, chat template)
  // for end-to-end tests that would be slow at real size.
  "qwen2.5-tiny": {
    arch: "qwen2",
    nLayers: 2,
    dim: 64,
    nHeads: 4,
    nKVHeads: 2,
    ffnDim: 128,
    vocabSize: 151936,
    contextLength: 4096,
    ropeTheta: 1e6,
    normEps: 1e-6,
    tied: true,
    qkvBias: true,
    family: "qwen2.5",
  },
  "r1-distill-qwen-tiny": {
    arch: "qwen2",
    nLayers: 2,
    dim: 64,
    nHeads: 4,
    nKVHeads: 2,
    ffnDim: 128,
    vocabSize: 151936,
    contextLength: 4096,
    ropeTheta: 10000,
    normEps: 1e-6,
    tied: false,
    qkvBias: true,
    family: "r1-distill-qwen",
  },
  mid: {
    arch: "llama",
    nLayers: 8,
    dim: 512,
    nHeads: 8,
    nKVHeads: 4,
    ffnDim: 1408,
    vocabSize: 4096,
    contextLength: 4096,
    ropeTheta: 10000,
    normEps: 1e-5,
    tied: false,
    family: "spm",
  },
  tiny: {
    arch: "llama",
    nLayers: 4,
    dim: 128,
    nHeads: 4,
    nKVHeads: 2,
    ffnDim: 384,
    vocabSize: 512,
    contextLength: 2048,
    ropeTheta: 10000,
    normEps: 1e-5,
    tied: true,
    family: "spm",
  },
};

export function headDimOf(s: ModelShape): number {
  return s.headDim ?? s.dim / s.nHeads;
}

/** A special token at its real id: [id, text, token type]. */
type Special = [number, string, number];

export interface VocabFamily {
  /** A byte-level BPE vocabulary of ../shared/fixtures/vocab, or "spm" for the built-in SentencePiece one. */
  base: string;
  pre?: string;
  specials: Special[];
  bos: number;
  eos: number;
  pad?: number;
  addBos: boolean;
  /** The family's chat template: a file of ../shared/fixtures/chat_templates, or of src/model/templates. */
  template?: { fixture: string } | { file: string };
}

const C = TokenType.CONTROL, U = TokenType.USER_DEFINED;

/** Qwen2.5's added tokens (151643…151664), the ids its GGUFs carry. */
const QWEN_SPECIALS: Special[] = [
  [151643, "<|endoftext|>", C],
  [151644, "<|im_start|>", C],
  [151645, "<|im_end|>", C],
  [151646, "<|object_ref_start|>", C],
  [151647, "<|object_ref_end|>", C],
  [151648, "<|box_start|>", C],
  [151649, "<|box_end|>", C],
  [151650, "<|quad_start|>", C],
  [151651, "<|quad_end|>", C],
  [151652, "<|vision_start|>", C],
  [151653, "<|vision_end|>", C],
  [151654, "<|vision_pad|>", C],
  [151655, "<|image_pad|>", C],
  [151656, "<|video_pad|>", C],
  [151657, "<tool_call>", U],
  [151658, "</tool_call>", U],
  [151659, "<|fim_prefix|>", U],
  [151660, "<|fim_middle|>", U],
  [151661, "<|fim_suffix|>", U],
  [151662, "<|fim_pad|>", U],
  [151663, "<|repo_name|>", U],
  [151664, "<|file_sep|>", U],
];

function llama3Specials(): Special[] {
  const named: Record<number, string> = {
    128000: "<|begin_of_text|>",
    128001: "<|end_of_text|>",
    128004: "<|finetune_right_pad_id|>",
    128006: "<|start_header_id|>",
    128007: "<|end_header_id|>",
    128008: "<|eom_id|>",
    128009: "<|eot_id|>",
    128010: "<|python_tag|>",
  };
  const out: Special[] = [];
  let reserved = 0;
  for (let id = 128000; id < 128256; id++) {
    out.push([id, named[id] ?? `<|reserved_special_token_${reserved++}|>`, C]);
  }
  return out;
}

export const FAMILIES: Record<string, VocabFamily> = {
  "qwen2.5": {
    base: "ggml-vocab-gpt-2.gguf",
    pre: "qwen2",
    specials: QWEN_SPECIALS,
    bos: 151643,
    eos: 151645,
    pad: 151643,
    addBos: false,
    template: { fixture: "Qwen-Qwen2.5-7B-Instruct.jinja" },
  },
  qwen3: {
    base: "ggml-vocab-gpt-2.gguf",
    pre: "qwen2",
    specials: [
      ...QWEN_SPECIALS,
      [151665, "<tool_response>", U],
      [151666, "</tool_response>", U],
      [151667, "<think>", U],
      [151668, "</think>", U],
    ],
    bos: 151643,
    eos: 151645,
    pad: 151643,
    addBos: false,
    template: { file: "qwen3.jinja" },
  },
  "r1-distill-qwen": {
    base: "ggml-vocab-gpt-2.gguf",
    pre: "deepseek-r1-qwen",
    specials: [
      [151643, "<｜end▁of▁sentence｜>", C],
      [151644, "<｜User｜>", U],
      [151645, "<｜Assistant｜>", U],
      [151646, "<｜begin▁of▁sentence｜>", C],
      [151647, "<|EOT|>", C],
      [151648, "<think>", U],
      [151649, "</think>", U],
      ...QWEN_SPECIALS.filter(([id]) => id >= 151650),
    ],
    bos: 151646,
    eos: 151643,
    pad: 151643,
    addBos: true,
    template: { fixture: "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja" },
  },
  llama3: {
    base: "ggml-vocab-gpt-2.gguf",
    pre: "llama-bpe",
    specials: llama3Specials(),
    bos: 128000,
    eos: 128009,
    addBos: true,
    template: { fixture: "meta-llama-Llama-3.2-3B-Instruct.jinja" },
  },
  smollm2: {
    base: "ggml-vocab-starcoder.gguf",
    pre: "smollm",
    specials: [[0, "<|endoftext|>", C], [1, "<|im_start|>", C], [2, "<|im_end|>", C]],
    bos: 1,
    eos: 2,
    pad: 2,
    addBos: false,
    template: { file: "smollm2.jinja" },
  },
  spm: { base: "spm", specials: [], bos: 1, eos: 2, addBos: true },
};

export const SHARED_FIXTURES = resolve(REPO_ROOT, "..", "shared", "fixtures");

export interface FamilyPaths {
  /** Folder of the vocabulary GGUFs (default ../shared/fixtures/vocab). */
  vocabDir?: string;
  /** Folder of the chat-template fixtures (default ../shared/fixtures/chat_templates). */
  templateDir?: string;
}

const u32 = (value: number): GGUFKV => ({ type: GGUFValueType.UINT32, value });
const str = (value: string): GGUFKV => ({ type: GGUFValueType.STRING, value });
const bool = (value: boolean): GGUFKV => ({ type: GGUFValueType.BOOL, value });
const arr = (itemType: GGUFValueType, items: (string | number)[]): GGUFKV => ({
  type: GGUFValueType.ARRAY,
  value: { itemType, items },
});

/** SentencePiece-style vocabulary of exactly `n` tokens (n ≥ 300): <unk>, <s>, </s>, bytes, pieces. */
export function buildSpmVocab(n: number): { tokens: string[]; scores: number[]; types: number[] } {
  if (n < 300) throw new RangeError(`vocab size ${n} is too small (need at least 300)`);
  const tokens = ["<unk>", "<s>", "</s>"];
  const types: number[] = [TokenType.UNKNOWN, C, C];
  const scores = [0, 0, 0];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(TokenType.BYTE);
    scores.push(0);
  }
  const lower = "abcdefghijklmnopqrstuvwxyz";
  const chars = lower + lower.toUpperCase() + "0123456789.,!?'\"-:;()";
  function* pieces(): Generator<string> {
    yield "▁";
    for (const c of chars) yield c;
    for (const c of chars) yield `▁${c}`;
    for (let len = 2;; len++) {
      const idx = new Array(len).fill(0);
      while (true) {
        const s = idx.map((i) => lower[i]).join("");
        yield `▁${s}`;
        yield s;
        let k = len - 1;
        while (k >= 0 && ++idx[k] === lower.length) idx[k--] = 0;
        if (k < 0) break;
      }
    }
  }
  let rank = 0;
  for (const p of pieces()) {
    if (tokens.length >= n) break;
    tokens.push(p);
    types.push(TokenType.NORMAL);
    scores.push(-rank++);
  }
  return { tokens, scores, types };
}

/**
 * A byte-level BPE vocabulary of exactly `n` tokens: the base vocabulary's tokens and merges, the family's
 * special tokens at their ids (a base token whose text a special token takes elsewhere becomes padding), and
 * `[PAD<i>]` UNUSED tokens everywhere else.
 */
export async function buildBpeVocab(
  fam: VocabFamily,
  n: number,
  vocabDir: string,
): Promise<{ tokens: string[]; types: number[]; merges: string[] }> {
  const file = await readGGUFFile(resolve(vocabDir, fam.base));
  const baseTokens = metaValue(file, "tokenizer.ggml.tokens") as string[] | undefined;
  const baseTypes = metaValue(file, "tokenizer.ggml.token_type") as number[] | undefined;
  const merges = metaValue(file, "tokenizer.ggml.merges") as string[] | undefined;
  if (!baseTokens || !baseTypes || !merges) {
    throw new Error(`${fam.base}: not a byte-level BPE vocabulary (tokens, token_type and merges needed)`);
  }
  const specialText = new Map(fam.specials.map(([id, text]) => [text, id]));
  const tokens: string[] = [], types: number[] = [];
  for (let i = 0; i < n; i++) {
    const taken = i < baseTokens.length && specialText.has(baseTokens[i]) &&
      specialText.get(baseTokens[i]) !== i;
    if (i < baseTokens.length && !taken) {
      tokens.push(baseTokens[i]);
      types.push(baseTypes[i]);
    } else {
      tokens.push(`[PAD${i}]`);
      types.push(TokenType.UNUSED);
    }
  }
  for (const [id, text, type] of fam.specials) {
    if (id >= n) throw new RangeError(`special token ${text} (id ${id}) does not fit a vocabulary of ${n}`);
    tokens[id] = text;
    types[id] = type;
  }
  return { tokens, types, merges };
}

/** The family's chat template text, or undefined when it has none. */
export async function familyTemplate(fam: VocabFamily, templateDir: string): Promise<string | undefined> {
  if (!fam.template) return undefined;
  const path = "fixture" in fam.template
    ? resolve(templateDir, fam.template.fixture)
    : resolve(REPO_ROOT, "src", "model", "templates", fam.template.file);
  return await Deno.readTextFile(path);
}

/** tokenizer.* metadata of a shape's vocabulary family. */
export async function tokenizerMetadata(
  s: ModelShape,
  paths: FamilyPaths = {},
): Promise<Record<string, GGUFKV>> {
  const fam = FAMILIES[s.family];
  if (!fam) throw new RangeError(`unknown vocabulary family "${s.family}"`);
  const md: Record<string, GGUFKV> = {};
  if (fam.base === "spm") {
    const v = buildSpmVocab(s.vocabSize);
    md["tokenizer.ggml.model"] = str("llama");
    md["tokenizer.ggml.tokens"] = arr(GGUFValueType.STRING, v.tokens);
    md["tokenizer.ggml.scores"] = arr(GGUFValueType.FLOAT32, v.scores);
    md["tokenizer.ggml.token_type"] = arr(GGUFValueType.INT32, v.types);
    md["tokenizer.ggml.unknown_token_id"] = u32(0);
  } else {
    const v = await buildBpeVocab(fam, s.vocabSize, paths.vocabDir ?? resolve(SHARED_FIXTURES, "vocab"));
    md["tokenizer.ggml.model"] = str("gpt2");
    md["tokenizer.ggml.pre"] = str(fam.pre ?? "default");
    md["tokenizer.ggml.tokens"] = arr(GGUFValueType.STRING, v.tokens);
    md["tokenizer.ggml.token_type"] = arr(GGUFValueType.INT32, v.types);
    md["tokenizer.ggml.merges"] = arr(GGUFValueType.STRING, v.merges);
  }
  md["tokenizer.ggml.bos_token_id"] = u32(fam.bos);
  md["tokenizer.ggml.eos_token_id"] = u32(fam.eos);
  if (fam.pad !== undefined) md["tokenizer.ggml.padding_token_id"] = u32(fam.pad);
  md["tokenizer.ggml.add_bos_token"] = bool(fam.addBos);
  const tmpl = await familyTemplate(fam, paths.templateDir ?? resolve(SHARED_FIXTURES, "chat_templates"));
  if (tmpl !== undefined) md["tokenizer.chat_template"] = str(tmpl);
  return md;
}

/**
 * Llama 3's rope scaling as llama.cpp's converter bakes it into rope_freqs.weight: one factor per rotary
 * pair that divides the pair's frequency (computed in float32).
 */
export function llama3RopeFactors(headDim: number, theta: number, r: Llama3Rope): Float32Array {
  const f = Math.fround;
  const lowWavelen = f(r.originalContext / r.lowFreqFactor);
  const highWavelen = f(r.originalContext / r.highFreqFactor);
  const out = new Float32Array(headDim / 2);
  for (let i = 0; i < headDim / 2; i++) {
    const freq = f(1 / f(Math.pow(theta, f((2 * i) / headDim))));
    const wavelen = f(f(2 * Math.PI) / freq);
    if (wavelen < highWavelen) out[i] = 1;
    else if (wavelen > lowWavelen) out[i] = r.factor;
    else {
      const smooth = f(
        f(f(r.originalContext / wavelen) - r.lowFreqFactor) / (r.highFreqFactor - r.lowFreqFactor),
      );
      out[i] = f(1 / f(f(f(1 - smooth) / r.factor) + smooth));
    }
  }
  return out;
}
