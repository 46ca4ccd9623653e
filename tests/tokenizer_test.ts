import assert from "node:assert/strict";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Tokenizer as HfReference } from "@huggingface/tokenizers";
import { plainMetadata, readGGUFFile } from "../src/model/gguf.ts";
import { spmFromGGUFMetadata, SpmTokenizer } from "../src/model/tokenizer/spm.ts";
import { HfBpeTokenizer, hfTokenizerFromJSON } from "../src/model/tokenizer/hf_bpe.ts";
import type { Tokenizer } from "../src/model/tokenizer/types.ts";
import { checkStreaming, streamed } from "./support/tokenizer.ts";

const SHARED = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "shared");
const GGUF_PATH = Deno.env.get("LETHE_MODEL_GGUF") ?? resolve(SHARED, "models", "stories260K.gguf");
const HF_DIR = Deno.env.get("LETHE_MODEL_HF") ?? resolve(SHARED, "models", "tinystories-656K");
const DEV_TEXT = resolve(SHARED, "data", "tinystories_val_dev.txt");
const GOLDEN = resolve(SHARED, "golden", "stories260K_greedy.json");

const spm = spmFromGGUFMetadata(plainMetadata(await readGGUFFile(GGUF_PATH)));
const hfJson = JSON.parse(await Deno.readTextFile(resolve(HF_DIR, "tokenizer.json")));
const hfConfig = JSON.parse(await Deno.readTextFile(resolve(HF_DIR, "tokenizer_config.json")));
const hf = hfTokenizerFromJSON(hfJson, hfConfig);
const devText = await Deno.readTextFile(DEV_TEXT);
const stories = devText.split(/\n\n+/).filter((s) => s.length > 0);

const pieces = (t: Tokenizer, ids: number[]) => ids.map((i) => t.piece(i));

const EDGE_CASES = [
  "",
  " ",
  "  ",
  "a",
  " a",
  "  two leading",
  "trailing  ",
  "many    spaces   here",
  "\n",
  "a\nb",
  "\n\nLily\n",
  " \n ",
  "Hello, world!",
];

// ---------------------------------------------------------------------------------------------------------
// SentencePiece (stories260K.gguf)

Deno.test("spm: metadata and special ids", () => {
  assert.ok(spm instanceof SpmTokenizer);
  assert.equal(spm.vocabSize, 512);
  assert.equal(spm.bosId, 1);
  assert.equal(spm.eosId, 2);
  assert.equal(spm.unkId, 0);
  assert.equal(spm.piece(1), "<s>");
  assert.equal(spm.piece(13), "<0x0A>");
});

Deno.test("spm: golden prompt encodes to the expected pieces", () => {
  // "▁Once", "▁upon", "▁a", "▁time" are all vocabulary pieces and no piece spans a "▁" inside a word pair
  // (pieces start with "▁" only), so the prompt is four word tokens after BOS.
  const ids = spm.encode("Once upon a time", { addBos: true });
  assert.deepEqual(pieces(spm, ids), ["<s>", "▁Once", "▁upon", "▁a", "▁time"]);
  assert.deepEqual(ids, [1, 403, 407, 261, 378]);
  assert.equal(spm.decode(ids), "Once upon a time");
  // Without the space prefix rule the first word would not get its "▁".
  const raw = new SpmTokenizer({
    tokens: Array.from({ length: 512 }, (_, i) => spm.piece(i)),
    scores: Array.from({ length: 512 }, (_, i) => spm.score(i)),
    tokenTypes: Array.from({ length: 512 }, (_, i) => spm.tokenType(i)),
    bosId: 1,
    eosId: 2,
    unkId: 0,
    addSpacePrefix: false,
  });
  assert.deepEqual(pieces(raw, raw.encode("Once upon")), ["O", "n", "ce", "▁upon"]);
});

Deno.test("spm: merges follow scores, ties leftmost", () => {
  // "▁the" (score -6) and "▁Lily" (-58), "▁said" (-77) are single pieces.
  assert.deepEqual(pieces(spm, spm.encode("the")), ["▁the"]);
  assert.deepEqual(pieces(spm, spm.encode("Lily said")), ["▁Lily", "▁said"]);
  // Tiny hand-built vocabulary: "aaa" with "aa" in the vocabulary merges the leftmost pair first.
  const t = new SpmTokenizer({
    tokens: ["<unk>", "<s>", "</s>", "a", "aa", "b", "ab", "▁"],
    scores: [0, 0, 0, -1, -2, -1, -1, -1],
    bosId: 1,
    eosId: 2,
    unkId: 0,
    addSpacePrefix: false,
  });
  assert.deepEqual(pieces(t, t.encode("aaa")), ["aa", "a"]);
  // "aab": pairs aa (-2) and ab (-1): ab has the higher score and wins although aa is further left.
  assert.deepEqual(pieces(t, t.encode("aab")), ["a", "ab"]);
  // Missing byte tokens fall back to unk.
  assert.deepEqual(t.encode("c"), [0]);
});

Deno.test("spm: byte fallback for characters outside the vocabulary round-trips", () => {
  const text = "héllo wörld 🙂 中文";
  const ids = spm.encode(text);
  const p = pieces(spm, ids);
  assert.ok(p.includes("é"), "é is in the vocabulary");
  const o = p.indexOf("<0xC3>");
  assert.deepEqual(p.slice(o, o + 2), ["<0xC3>", "<0xB6>"], "ö = C3 B6 as bytes");
  assert.ok(p.join("").includes("<0xF0><0x9F><0x99><0x82>"), "🙂 as four bytes");
  assert.ok(p.join("").includes("<0xE4><0xB8><0xAD><0xE6><0x96><0x87>"), "中文 as six bytes");
  assert.equal(spm.decode(ids), text);
  assert.equal(spm.decode([1, ...ids, 2]), text);
  checkStreaming(spm, [1, ...ids]);
});

Deno.test("spm: decode drops control tokens and strips the first space after BOS", () => {
  const once = 403;
  assert.equal(spm.decode([once]), "Once");
  assert.equal(spm.decode([1, once, 2]), "Once");
  assert.equal(spm.decode([1, once, once]), "Once Once");
  assert.equal(spm.decode([1, once, 2, 1, once]), "OnceOnce");
  assert.equal(spm.decode([0, 1, 2]), "");
  assert.equal(spm.decode([]), "");
  // Invalid UTF-8 bytes become U+FFFD at flush, in both modes.
  assert.equal(spm.decode([0xc3 + 3]), "\uFFFD");
  assert.equal(streamed(spm, [0xc3 + 3]), "\uFFFD");
});

Deno.test("spm: edge cases round-trip and stream", () => {
  assert.deepEqual(spm.encode(""), []);
  assert.deepEqual(spm.encode("", { addBos: true }), [1]);
  assert.deepEqual(pieces(spm, spm.encode("  ")), ["▁", "▁", "▁"]);
  for (const s of EDGE_CASES) {
    const ids = spm.encode(s, { addBos: true });
    assert.equal(spm.decode(ids), s, JSON.stringify(s));
    checkStreaming(spm, ids);
  }
  assert.deepEqual(pieces(spm, spm.encode("a\nb")), ["▁a", "<0x0A>", "b"]);
});

Deno.test("spm: golden output text round-trips", async () => {
  const golden = JSON.parse(await Deno.readTextFile(GOLDEN));
  const text: string = golden.cases[0].text;
  const ids = spm.encode(text, { addBos: true });
  assert.equal(spm.decode(ids), text);
  checkStreaming(spm, ids.slice(0, 60));
});

Deno.test("spm: every dev story round-trips; the whole file encodes fast", () => {
  for (const s of stories) assert.equal(spm.decode(spm.encode(s, { addBos: true })), s);
  const t0 = performance.now();
  const all = spm.encode(devText);
  const ms = performance.now() - t0;
  assert.ok(ms < 3000, `encoding 475 KB took ${ms.toFixed(0)} ms`);
  assert.equal(spm.decode(all), devText);
});

// ---------------------------------------------------------------------------------------------------------
// tokenizer.json BPE (tinystories-656K)

const ref = new HfReference(hfJson, hfConfig);

Deno.test("hf: config and special ids", () => {
  assert.ok(hf instanceof HfBpeTokenizer);
  assert.equal(hf.vocabSize, 2048);
  assert.equal(hf.bosId, 1);
  assert.equal(hf.eosId, 2);
  assert.equal(hf.unkId, 0);
  assert.equal(hf.piece(1), "<|start_story|>");
  assert.equal(hf.addBosByDefault, true);
});

Deno.test("hf: ' Once upon a time' merges into the expected pieces", () => {
  // Normalizer: Prepend "▁", spaces → "▁": "▁Once▁upon▁a▁time" is one word (no pre-tokenizer). The vocabulary
  // has no "▁O" and no "time" piece outside the "▁<|start_story|>Once▁upon▁a▁time,▁" family: merges by rank
  // give "▁", "On" (147), "ce▁" (201), "upon▁a▁tim" (282), "e".
  const ids = hf.encode("Once upon a time", { addBos: true });
  assert.deepEqual(pieces(hf, ids), ["<|start_story|>", "▁", "On", "ce▁", "upon▁a▁tim", "e"]);
  assert.deepEqual(ids, [1, 80, 147, 201, 282, 57]);
  assert.equal(hf.decode(ids), "Once upon a time");
  assert.deepEqual(pieces(hf, hf.encode(" Once upon a time")), ["▁", "▁", "On", "ce▁", "upon▁a▁tim", "e"]);
  // "▁the▁" is one piece (id 108, rank 24 merge "▁ the▁"), "dog" another.
  assert.deepEqual(pieces(hf, hf.encode("the dog")), ["▁the▁", "dog"]);
});

Deno.test("hf: characters outside the vocabulary become (fused) unk: no byte tokens in this vocabulary", () => {
  // byte_fallback is on but the vocabulary has no <0xXX> pieces, so tokenizers falls back to unk, fusing runs.
  const ids = hf.encode("héllo wörld 🙂 中文");
  assert.deepEqual(pieces(hf, ids), [
    "▁h",
    "<unk>",
    "ll",
    "o▁",
    "w",
    "<unk>",
    "r",
    "ld▁",
    "<unk>",
    "▁",
    "<unk>",
  ]);
  assert.equal(hf.decode(ids), "hllo wrld  ");
});

Deno.test("hf: byte fallback round-trips when the vocabulary has byte tokens", () => {
  const vocab: Record<string, number> = { "<unk>": 0, "<s>": 1, "</s>": 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`] = 3 + b;
  for (const p of ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "▁he", "ll", "▁hell", "▁hello"]) {
    vocab[p] = Object.keys(vocab).length;
  }
  const json = {
    added_tokens: [
      { id: 0, content: "<unk>", special: true },
      { id: 1, content: "<s>", special: true },
      { id: 2, content: "</s>", special: true },
    ],
    normalizer: null,
    pre_tokenizer: { type: "Metaspace", replacement: "▁", prepend_scheme: "first", split: false },
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
    },
    decoder: {
      type: "Sequence",
      decoders: [{ type: "ByteFallback" }, { type: "Fuse" }, {
        type: "Metaspace",
        replacement: "▁",
        prepend_scheme: "first",
        split: false,
      }],
    },
    model: {
      type: "BPE",
      unk_token: "<unk>",
      byte_fallback: true,
      fuse_unk: true,
      vocab,
      merges: [["▁", "h"], ["▁h", "e"], ["l", "l"], ["▁he", "ll"], ["▁hell", "o"]],
    },
  };
  const t = hfTokenizerFromJSON(json);
  assert.equal(t.bosId, 1);
  assert.equal(t.addBosByDefault, true);
  const text = "hello wörld 🙂";
  const ids = t.encode(text, { addBos: true });
  assert.deepEqual(pieces(t, ids).slice(0, 4), ["<s>", "▁hello", "▁", "w"]);
  assert.ok(pieces(t, ids).join("").includes("<0xC3><0xB6>"));
  assert.equal(t.decode(ids), text);
  checkStreaming(t, ids);
  const reference = new HfReference(json, {});
  assert.deepEqual(ids.slice(1), reference.encode(text, { add_special_tokens: false }).ids);
  assert.equal(reference.decode(ids, { skip_special_tokens: true }), text);
  // The legacy "a b" string form of merges gives the same tokenizer.
  const stringForm = { ...json, model: { ...json.model, merges: json.model.merges.map((m) => m.join(" ")) } };
  assert.deepEqual(hfTokenizerFromJSON(stringForm).encode(text, { addBos: true }), ids);
});

Deno.test("hf: edge cases round-trip and stream", () => {
  assert.deepEqual(hf.encode(""), []);
  assert.deepEqual(hf.encode("", { addBos: true }), [1]);
  for (const s of EDGE_CASES) {
    const ids = hf.encode(s, { addBos: true });
    assert.equal(hf.decode(ids), s, JSON.stringify(s));
    checkStreaming(hf, ids);
  }
  // Special-token text is plain text here (the contract): it goes through BPE like any other characters.
  const ids = hf.encode("<|start_story|>Once");
  assert.ok(!ids.includes(1));
  assert.equal(hf.decode(ids), "<|start_story|>Once");
  assert.equal(hf.decode([1, 2, 0]), "");
});

Deno.test("hf: every dev story round-trips and matches @huggingface/tokenizers id for id", () => {
  let tokens = 0;
  for (const s of stories) {
    const ids = hf.encode(s, { addBos: true });
    tokens += ids.length;
    assert.equal(hf.decode(ids), s);
    assert.deepEqual(ids, ref.encode(s).ids, JSON.stringify(s.slice(0, 60)));
  }
  assert.ok(tokens > 100000);
  const first = hf.encode(stories[1], { addBos: true });
  checkStreaming(hf, first.slice(0, 60));
});
