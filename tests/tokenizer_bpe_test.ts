/**
 * Byte-level BPE pieces: the pre-tokenizer table (llama.cpp's names, flags and regexes with llama.cpp's
 * whitespace), ignore_merges, one BPE serving GGUF and tokenizer.json alike (checked against
 * @huggingface/tokenizers), tokenizer.json special tokens, and the word-by-word SentencePiece shortcut.
 */
import assert from "node:assert/strict";
import { Tokenizer as HfReference } from "@huggingface/tokenizers";
import { PRE_TOKENIZERS, preTokenizerFor, RegexSplitter } from "../src/model/tokenizer/pre_tokenizers.ts";
import { BpeTokenizer } from "../src/model/tokenizer/bpe.ts";
import { hfTokenizerFromJSON } from "../src/model/tokenizer/hf_bpe.ts";
import { spmFromGGUFMetadata, SpmTokenizer } from "../src/model/tokenizer/spm.ts";
import { tokenizerFromGGUFMetadata } from "../src/model/tokenizer/from_gguf.ts";
import { checkStreaming, DEV_TEXT, SHARED, vocabMetadata, vocabPairs } from "./support/tokenizer.ts";
import { loadModel } from "../src/model/loader.ts";
import { ModelFormatError } from "../src/model/errors.ts";
import { resolve } from "node:path";

const devText = await Deno.readTextFile(DEV_TEXT);
const stories = devText.split(/\n\n+/).filter((s) => s.length > 0);
const pairTexts = (await vocabPairs("gpt-2")).map((p) => p.text);
const split = (pre: string, text: string) => new RegexSplitter(preTokenizerFor(pre).type.regexes).split(text);

Deno.test("pre-tokenizers: every llama.cpp name resolves, with its type's flags", () => {
  const names = [
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "dbrx",
    "smaug-bpe",
    "chatglm-bpe",
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "falcon",
    "mpt",
    "starcoder",
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
    "refact",
    "command-r",
    "qwen2",
    "deepseek-r1-qwen",
    "stablelm2",
    "olmo",
    "poro-chat",
    "viking",
    "jais",
    "tekken",
    "smollm",
    "codeshell",
    "bloom",
    "gpt3-finnish",
    "exaone",
    "chameleon",
    "minerva-7b",
    "megrez",
    "gpt-4o",
    "default",
  ];
  for (const n of names) assert.ok(preTokenizerFor(n).type.regexes.length > 0, n);
  assert.equal(
    new Set(PRE_TOKENIZERS.flatMap((t) => t.names)).size,
    names.length,
    "no extra or duplicate names",
  );
  const llama3 = preTokenizerFor("llama-bpe").type;
  assert.ok(llama3.ignoreMerges && llama3.addBos && llama3.cleanSpaces);
  for (
    const n of [
      "qwen2",
      "deepseek-r1-qwen",
      "smollm",
      "command-r",
      "deepseek-llm",
      "deepseek-coder",
      "gpt-4o",
    ]
  ) {
    assert.equal(preTokenizerFor(n).type.cleanSpaces, false, n);
  }
  for (const n of ["gpt-2", "starcoder", "refact", "falcon", "default", "mpt", "stablelm2"]) {
    assert.equal(preTokenizerFor(n).type.cleanSpaces, true, n);
  }
  assert.equal(preTokenizerFor(undefined).type, preTokenizerFor("default").type);
  assert.match(preTokenizerFor("").warning!, /'default'/);
  assert.equal(preTokenizerFor("gpt-2").warning, undefined);
  assert.throws(() => preTokenizerFor("qwen3"), /unknown pre-tokenizer type "qwen3"/);
});

Deno.test("pre-tokenizers: words of one text under each type", () => {
  const t = "Hello, y'all! 12345  ok\n";
  const gpt2 = ["Hello", ",", " y", "'", "all", "!", " 12345", " ", " ok", "\n"];
  assert.deepEqual(split("gpt-2", t), gpt2);
  assert.deepEqual(split("mpt", t), gpt2);
  // llama3: the apostrophe may lead a word, digits in threes, a lone space before digits.
  assert.deepEqual(split("llama-bpe", t), [
    "Hello",
    ",",
    " y",
    "'all",
    "!",
    " ",
    "123",
    "45",
    " ",
    " ok",
    "\n",
  ]);
  assert.deepEqual(split("gpt-4o", t), split("llama-bpe", t));
  // qwen2 / deepseek-r1-qwen: the same with one digit at a time.
  const qwen = ["Hello", ",", " y", "'all", "!", " ", "1", "2", "3", "4", "5", " ", " ok", "\n"];
  assert.deepEqual(split("qwen2", t), qwen);
  assert.deepEqual(split("deepseek-r1-qwen", t), qwen);
  // smollm / starcoder / refact: digits split off first, then GPT-2's regex.
  const digitsFirst = ["Hello", ",", " y", "'", "all", "!", " ", "1", "2", "3", "4", "5", " ", " ok", "\n"];
  for (const n of ["smollm", "starcoder", "refact"]) assert.deepEqual(split(n, t), digitsFirst, n);
  assert.deepEqual(split("deepseek-coder", t), digitsFirst);
  assert.deepEqual(split("deepseek-llm", t), [
    "Hello",
    ",",
    " y",
    "'",
    "all",
    "!",
    " ",
    "12345",
    " ",
    " ok",
    "\n",
  ]);
  const threes = ["Hello", ",", " y", "'", "all", "!", " ", "123", "45", " ", " ok", "\n"];
  assert.deepEqual(split("falcon", t), threes);
  assert.deepEqual(split("default", t), threes);
  // gpt-4o splits at case changes and keeps contractions on the word; llama3 does neither.
  assert.deepEqual(split("gpt-4o", "HelloWorld can't CAN'T"), ["Hello", "World", " can't", " CAN'T"]);
  assert.deepEqual(split("llama3", "HelloWorld can't CAN'T"), ["HelloWorld", " can", "'t", " CAN", "'T"]);
  // CJK, Cyrillic and other scripts are letters; the words always concatenate back to the text.
  assert.deepEqual(split("gpt-2", "нещо на Български 我想在apple工作"), [
    "нещо",
    " на",
    " Български",
    " 我想在apple工作",
  ]);
  // deepseek-coder: letters first (CJK included), then the CJK ranges split the run again.
  assert.deepEqual(split("deepseek-coder", "我想在apple工作"), ["我想在", "apple", "工作"]);
  for (const p of PRE_TOKENIZERS) {
    for (const s of pairTexts) {
      assert.equal(split(p.names[0], s).join(""), s, `${p.names[0]} ${JSON.stringify(s)}`);
    }
  }
});

Deno.test("pre-tokenizers: whitespace is llama.cpp's (Unicode White_Space), not JavaScript's \\s", () => {
  // NBSP and EM SPACE are whitespace (never the optional leading space of a word); U+FEFF is not whitespace.
  assert.deepEqual(split("gpt-2", "a\u00a0b\ufeffc \u2003d"), [
    "a",
    "\u00a0",
    "b",
    "\ufeff",
    "c",
    " ",
    "\u2003",
    "d",
  ]);
  // llama.cpp matches U+3000 as whitespace, so the literal U+3000 in deepseek-llm's class never matches it.
  assert.deepEqual(split("deepseek-llm", "x\u3000\u3002y"), ["x", "\u3000", "\u3002", "y"]);
  assert.deepEqual(split("deepseek-llm", "x\u3001\u3002y"), ["x", "\u3001\u3002", "y"]);
});

Deno.test("bpe: ignore_merges emits a word that is a token whole", () => {
  // Merges can build "ab" and "bc" but not "abc"; "abc" is nevertheless a token.
  const tokens = ["a", "b", "c", "ab", "bc", "abc"];
  const mk = (pre: string) =>
    new BpeTokenizer({
      tokens,
      tokenTypes: tokens.map(() => 1),
      merges: ["b c", "a b"],
      preType: preTokenizerFor(pre).type,
      addBos: false,
      addEos: false,
    });
  assert.deepEqual(mk("gpt-2").encode("abc"), [0, 4]); // "b c" has the lower rank: a + bc
  assert.deepEqual(mk("llama-bpe").encode("abc"), [5]);
  assert.deepEqual(mk("llama-bpe").encode("abcab"), [0, 4, 3]); // not a token: merged as usual
  // tokenizer.json's model.ignore_merges (Llama 3) does the same, as @huggingface/tokenizers.
  for (const ignore of [false, true]) {
    const json = {
      added_tokens: [],
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
      model: {
        type: "BPE",
        vocab: Object.fromEntries(tokens.map((t, i) => [t, i])),
        merges: ["b c", "a b"],
        ignore_merges: ignore,
      },
    };
    const want = new HfReference(json, {}).encode("abc", { add_special_tokens: false }).ids;
    assert.deepEqual(want, ignore ? [5] : [0, 4]);
    assert.deepEqual(hfTokenizerFromJSON(json).encode("abc"), want);
  }
});

Deno.test("bpe: merges through pieces outside the vocabulary, as llama.cpp's text-keyed ranks", () => {
  // "ab" is no token, but the rules build "abc" through it; a leftover "ab" falls back to its one-byte tokens.
  const tokens = ["a", "b", "c", "abc"];
  const t = new BpeTokenizer({
    tokens,
    tokenTypes: tokens.map(() => 1),
    merges: ["a b", "ab c"],
    preType: preTokenizerFor("gpt-2").type,
    addBos: false,
    addEos: false,
  });
  assert.deepEqual(t.encode("abc"), [3]);
  assert.deepEqual(t.encode("ab"), [0, 1]);
  assert.deepEqual(t.encode("abcab"), [3, 0, 1]);
  assert.equal(t.decode([3, 0, 1]), "abcab");
});

// ---------------------------------------------------------------------------------------------------------
// One BPE for GGUF and tokenizer.json

const gpt2Meta = await vocabMetadata("gpt-2");
const vocab: Record<string, number> = {};
(gpt2Meta["tokenizer.ggml.tokens"] as string[]).forEach((t, i) => (vocab[t] = i));
const QWEN2_TOKENIZER_JSON_REGEX = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|" +
  " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/** A tokenizer.json of GPT-2's vocabulary and merges with the given pre-tokenizer. */
const tokenizerJson = (preTokenizer: unknown, added: unknown[] = []) => ({
  version: "1.0",
  added_tokens: [
    { id: 50256, content: "<|endoftext|>", special: true, lstrip: false, rstrip: false, normalized: false },
    ...added,
  ],
  normalizer: null,
  pre_tokenizer: preTokenizer,
  post_processor: null,
  decoder: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
  model: {
    type: "BPE",
    unk_token: null,
    continuing_subword_prefix: "",
    end_of_word_suffix: "",
    fuse_unk: false,
    byte_fallback: false,
    vocab,
    merges: gpt2Meta["tokenizer.ggml.merges"],
  },
});
const BYTE_LEVEL = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true };
const QWEN_STYLE = {
  type: "Sequence",
  pretokenizers: [
    { type: "Split", pattern: { Regex: QWEN2_TOKENIZER_JSON_REGEX }, behavior: "Isolated", invert: false },
    { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false },
  ],
};

for (const [pre, preTokenizer] of [["gpt-2", BYTE_LEVEL], ["qwen2", QWEN_STYLE]] as const) {
  Deno.test(`bpe: a ${pre}-style tokenizer.json, @huggingface/tokenizers and the GGUF vocabulary agree`, () => {
    const json = tokenizerJson(preTokenizer);
    const ref = new HfReference(json, {});
    const hf = hfTokenizerFromJSON(json, {});
    const gguf = tokenizerFromGGUFMetadata({ ...gpt2Meta, "tokenizer.ggml.pre": pre });
    for (const s of [...pairTexts, ...stories.slice(0, 300)]) {
      const want = ref.encode(s, { add_special_tokens: false }).ids;
      assert.deepEqual(hf.encode(s), want, JSON.stringify(s.slice(0, 60)));
      assert.deepEqual(gguf.encode(s), want, JSON.stringify(s.slice(0, 60)));
      assert.equal(hf.decode(want), s);
    }
    const whole = ref.encode(devText, { add_special_tokens: false }).ids;
    assert.ok(whole.length > 100000);
    assert.deepEqual(hf.encode(devText), whole);
    assert.deepEqual(gguf.encode(devText), whole);
    checkStreaming(hf, hf.encode("🦙 Führer 你好"));
  });
}

Deno.test("bpe: tokenizer.json special tokens need parseSpecial; lstrip/rstrip as @huggingface/tokenizers", () => {
  const tag = { id: 50257, content: "<tag>", special: false, lstrip: true, rstrip: true, normalized: false };
  const json = tokenizerJson(BYTE_LEVEL, [tag]);
  const ref = new HfReference(json, {});
  const hf = hfTokenizerFromJSON(json, {});
  const text = "a <|endoftext|> b  <tag>  c<tag>d";
  // The reference always matches special tokens: that is parseSpecial on.
  assert.deepEqual(
    hf.encode(text, { parseSpecial: true }),
    ref.encode(text, { add_special_tokens: false }).ids,
  );
  const off = hf.encode(text);
  assert.ok(!off.includes(50256) && off.filter((id) => id === 50257).length === 2);
  assert.equal(hf.decode(off), "a <|endoftext|> b<tag>c<tag>d");
  assert.equal(hf.tokenId("<tag>"), 50257);
  assert.equal(hf.tokenId("<|endoftext|>"), 50256);
});

Deno.test("bpe: tokenizer.json end of generation: EOS, generation_config ids and the EOG texts", () => {
  const json = tokenizerJson(BYTE_LEVEL, [
    { id: 50257, content: "<|im_end|>", special: true },
    { id: 50258, content: "<|im_start|>", special: true },
  ]);
  const hf = hfTokenizerFromJSON(json, { eos_token: "<|endoftext|>" }, { eosIds: [50258] });
  assert.equal(hf.eosId, 50256);
  assert.deepEqual(hf.eogIds, [50256, 50257, 50258]);
  assert.ok(hf.isEog(50257) && !hf.isEog(11));
  assert.throws(() => hfTokenizerFromJSON(json, {}, { eosIds: [1 << 20] }), /eos id 1048576 out of range/);
});

Deno.test("spm: merging word by word gives the same ids as merging the whole text", async () => {
  const meta = await vocabMetadata("llama-spm");
  const fast = spmFromGGUFMetadata(meta);
  // A token with an inner "▁" that never occurs in the texts turns the shortcut off.
  const tokens = [...(meta["tokenizer.ggml.tokens"] as string[]), "\u0001\u2581"];
  const slow = spmFromGGUFMetadata({
    ...meta,
    "tokenizer.ggml.tokens": tokens,
    "tokenizer.ggml.scores": [...Array.from(meta["tokenizer.ggml.scores"] as ArrayLike<number>), -1e9],
    "tokenizer.ggml.token_type": [...Array.from(meta["tokenizer.ggml.token_type"] as ArrayLike<number>), 1],
  });
  assert.ok(fast instanceof SpmTokenizer && slow instanceof SpmTokenizer);
  for (const s of [...pairTexts, ...stories.slice(0, 100), "  a  b   c\n\n  d", "▁x ▁▁y"]) {
    assert.deepEqual(fast.encode(s), slow.encode(s), JSON.stringify(s.slice(0, 60)));
  }
});

Deno.test("hf loader: every generation_config.json eos_token_id ends generation", async () => {
  const src = resolve(SHARED, "models", "tinystories-656K");
  const dir = await Deno.makeTempDir();
  try {
    for (const f of ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]) {
      await Deno.symlink(resolve(src, f), resolve(dir, f));
    }
    await Deno.writeTextFile(
      resolve(dir, "generation_config.json"),
      JSON.stringify({ eos_token_id: [2, 7] }),
    );
    const model = await loadModel(dir);
    assert.deepEqual(model.tokenizer.eogIds, [2, 7]);
    await Deno.writeTextFile(
      resolve(dir, "generation_config.json"),
      JSON.stringify({ eos_token_id: 1 << 20 }),
    );
    await assert.rejects(
      () => loadModel(dir),
      (e) => e instanceof ModelFormatError && /eos id/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
