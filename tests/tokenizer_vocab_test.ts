/**
 * GGUF vocabularies against llama.cpp: its test pairs in ../shared/fixtures/vocab reproduced exactly, encode →
 * decode round trips for every vocabulary, BOS/EOS flags, special-token parsing on and off, the
 * end-of-generation sets, phi-3's RSTRIP rule and the pre-tokenizer errors.
 */
import assert from "node:assert/strict";
import { tokenizerFromGGUFMetadata } from "../src/model/tokenizer/from_gguf.ts";
import { BpeTokenizer } from "../src/model/tokenizer/bpe.ts";
import { SpmTokenizer } from "../src/model/tokenizer/spm.ts";
import type { VocabTokenizer } from "../src/model/tokenizer/vocab.ts";
import { loadModel, SHARED_MODELS } from "../src/model/loader.ts";
import { GGUFValueType, plainMetadata, readGGUFFile, tensorBytes } from "../src/model/gguf.ts";
import { writeGGUF } from "../src/model/gguf_writer.ts";
import { ModelFormatError } from "../src/model/errors.ts";
import {
  checkStreaming,
  DEV_TEXT,
  SHARED,
  vocabMetadata,
  vocabPairs,
  VOCABS,
  WITH_PAIRS,
} from "./support/tokenizer.ts";
import { resolve } from "node:path";

const devText = await Deno.readTextFile(DEV_TEXT);
const warnings = new Map<string, string[]>();
const toks = new Map<string, VocabTokenizer>();
for (const name of VOCABS) {
  const w: string[] = [];
  toks.set(name, tokenizerFromGGUFMetadata(await vocabMetadata(name), (m) => w.push(m)));
  warnings.set(name, w);
}
const tok = (name: string) => toks.get(name)!;
const pieces = (t: VocabTokenizer, ids: number[]) => ids.map((i) => t.piece(i));

/** A tokenizer from a vocabulary's metadata with some keys replaced (undefined deletes a key). */
async function variant(name: string, patch: Record<string, unknown>, warn?: (m: string) => void) {
  const meta = await vocabMetadata(name);
  for (const [k, v] of Object.entries(patch)) {
    if (v === undefined) delete meta[k];
    else meta[k] = v;
  }
  return tokenizerFromGGUFMetadata(meta, warn ?? (() => {}));
}

Deno.test("vocab: the families follow tokenizer.ggml.model", () => {
  for (const name of VOCABS) {
    const spm = ["phi-3", "llama-spm", "baichuan"].includes(name);
    assert.ok(tok(name) instanceof (spm ? SpmTokenizer : BpeTokenizer), name);
  }
});

for (const name of WITH_PAIRS) {
  Deno.test(`vocab: ${name} reproduces llama.cpp's 46 test pairs exactly`, async () => {
    const pairs = await vocabPairs(name);
    assert.equal(pairs.length, 46);
    const t = tok(name);
    for (const { text, ids } of pairs) {
      assert.deepEqual(t.encode(text), ids, `${name} ${JSON.stringify(text.slice(0, 60))}`);
      // The same ids with the older switch off and with parse_special off explicitly.
      assert.deepEqual(t.encode(text, { addSpecial: false, parseSpecial: false }), ids);
    }
  });
}

for (const name of VOCABS) {
  Deno.test(`vocab: ${name} round-trips the dev text and llama.cpp's test inputs`, async () => {
    const t = tok(name);
    const ids = t.encode(devText);
    assert.ok(ids.length > 100000 && ids.length < devText.length / 2, `${ids.length} tokens`);
    assert.equal(t.decode(ids), devText);
    const stories = devText.split(/\n\n+/).filter((s) => s.length > 0).slice(0, 200);
    for (const s of stories) assert.equal(t.decode(t.encode(s, { addSpecial: true })), s);
    // Multi-script inputs (emoji, Khmer, Cyrillic, CJK, Vietnamese, tabs and newlines).
    for (const { text } of await vocabPairs("gpt-2")) {
      const enc = t.encode(text, { addSpecial: true });
      assert.equal(t.decode(enc), text, `${name} ${JSON.stringify(text.slice(0, 40))}`);
    }
    checkStreaming(t, t.encode(" this is 🦙.cpp нещо 我想在apple工作1314151天～"));
  });
}

Deno.test("vocab: BOS/EOS flags from metadata (and llama.cpp's per-family defaults)", () => {
  const withBos = new Set(["deepseek-coder", "deepseek-llm", "phi-3", "llama-spm", "baichuan"]);
  for (const name of VOCABS) {
    const t = tok(name);
    assert.equal(t.addBos, withBos.has(name), name);
    assert.equal(t.addEos, false, name);
    assert.deepEqual(t.encode("", { addSpecial: true }), withBos.has(name) ? [t.bosId] : [], name);
    assert.deepEqual(t.encode(""), []);
    // The older switch is the BOS half of addSpecial: gpt-2's BOS (= its EOS) is not added.
    assert.deepEqual(t.encode("", { addBos: true }), withBos.has(name) ? [t.bosId] : [], name);
  }
  assert.equal(tok("deepseek-coder").bosId, 32013);
  assert.equal(tok("baichuan").bosId, 1); // baichuan has no add_bos_token: the SentencePiece default
  const hi = tok("llama-spm").encode("Hello", { addSpecial: true });
  assert.deepEqual(hi, [1, ...tok("llama-spm").encode("Hello")]);
});

Deno.test("vocab: add_eos_token appends EOS with addSpecial", async () => {
  const t = await variant("gpt-2", { "tokenizer.ggml.add_eos_token": true });
  assert.equal(t.addEos, true);
  assert.deepEqual(t.encode("Hi", { addSpecial: true }), [17250, 50256]);
  assert.deepEqual(t.encode("Hi"), [17250]);
  await assert.rejects(
    () =>
      variant("gpt-2", { "tokenizer.ggml.add_bos_token": true, "tokenizer.ggml.bos_token_id": undefined }),
    /add_bos_token is true but there is no BOS id/,
  );
});

Deno.test("vocab: control tokens are parsed only with parseSpecial, and never split", () => {
  const g = tok("gpt-2");
  // Off (raw completions): the text of <|endoftext|> is ordinary text.
  const off = g.encode("<|endoftext|>Hi");
  assert.deepEqual(pieces(g, off), ["<", "|", "end", "of", "text", "|", ">", "Hi"]);
  assert.equal(g.decode(off), "<|endoftext|>Hi");
  // On (chat templates): one control token, the text on each side tokenized on its own.
  assert.deepEqual(g.encode("<|endoftext|>Hi", { parseSpecial: true }), [50256, 17250]);
  assert.deepEqual(g.encode("Hi<|endoftext|>Hi", { parseSpecial: true }), [17250, 50256, 17250]);
  assert.equal(g.decode([17250, 50256, 17250]), "HiHi", "control tokens are dropped by decode");
  const dc = tok("deepseek-coder");
  const bos = "<｜begin▁of▁sentence｜>";
  assert.ok(!dc.encode(bos + "x").includes(32013));
  assert.deepEqual(dc.encode(bos + "x", { parseSpecial: true }), [32013, 87]);
  assert.equal(dc.tokenId(bos), 32013);
  assert.equal(dc.tokenId("no such token"), -1);
});

Deno.test("vocab: user-defined tokens are always matched and decode as written", () => {
  const dc = tok("deepseek-coder");
  // deepseek-coder's "<|EOT|>" and "ü" are user-defined: cut out even with parse_special off (the test pairs'
  // "Führer" depends on it).
  assert.deepEqual(dc.encode("x<|EOT|>y"), [87, 32021, 88]);
  assert.deepEqual(pieces(dc, dc.encode("Führer")), ["F", "ü", "h", "rer"]);
  assert.equal(dc.decode([87, 32021, 88]), "x<|EOT|>y");
  // mpt's runs of spaces are user-defined tokens, longest first.
  const mpt = tok("mpt");
  assert.deepEqual(pieces(mpt, mpt.encode("a   b")), ["a", "   ", "b"]);
  assert.equal(mpt.decode(mpt.encode("a      b\n  c")), "a      b\n  c");
});

Deno.test("vocab: phi-3's special tokens swallow the whitespace after them only for general.name Phi3", async () => {
  const chat = "<|user|>\nHi<|end|>\n<|assistant|>";
  const phi = tok("phi-3");
  assert.deepEqual(pieces(phi, phi.encode(chat, { parseSpecial: true })), [
    "<|user|>",
    "▁Hi",
    "<|end|>",
    "<|assistant|>",
  ]);
  // <|endoftext|> is exempt; the user-defined </s> is not, and is matched without parse_special.
  assert.deepEqual(pieces(phi, phi.encode("<|endoftext|>\nHi", { parseSpecial: true })), [
    "<|endoftext|>",
    "▁",
    "<0x0A>",
    "Hi",
  ]);
  assert.deepEqual(pieces(phi, phi.encode("Hi</s>  x")), ["▁Hi", "</s>", "▁x"]);
  // The same tokenizer.* keys under another name keep the whitespace.
  const other = await variant("phi-3", { "general.name": "llama" });
  assert.deepEqual(pieces(other, other.encode(chat, { parseSpecial: true })), [
    "<|user|>",
    "▁",
    "<0x0A>",
    "Hi",
    "<|end|>",
    "▁",
    "<0x0A>",
    "<|assistant|>",
  ]);
  assert.deepEqual(pieces(other, other.encode("Hi</s>  x")), ["▁Hi", "</s>", "▁▁", "▁x"]);
});

Deno.test("vocab: end-of-generation sets", async () => {
  assert.deepEqual(tok("phi-3").eogIds, [32000, 32007]); // <|endoftext|> (EOS) and <|end|>
  assert.deepEqual(tok("llama-spm").eogIds, [2]);
  assert.deepEqual(tok("gpt-2").eogIds, [50256]);
  assert.deepEqual(tok("deepseek-coder").eogIds, [32014]);
  assert.ok(tok("phi-3").isEog(32007) && !tok("phi-3").isEog(32010) && !tok("phi-3").isEog(-1));
  // A Qwen-style vocabulary: EOG = EOS <|im_end|>, <|endoftext|> and the FIM pad / repo / file-separator tokens.
  const meta = await vocabMetadata("gpt-2");
  const extra = ["<|im_start|>", "<|im_end|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<think>"];
  const base = (meta["tokenizer.ggml.tokens"] as string[]).length;
  const t = await variant("gpt-2", {
    "tokenizer.ggml.tokens": [...(meta["tokenizer.ggml.tokens"] as string[]), ...extra],
    "tokenizer.ggml.token_type": [
      ...Array.from(meta["tokenizer.ggml.token_type"] as ArrayLike<number>),
      3,
      3,
      3,
      3,
      3,
      4,
    ],
    "tokenizer.ggml.pre": "qwen2",
    "tokenizer.ggml.eos_token_id": base + 1,
  });
  assert.deepEqual(t.eogIds, [50256, base + 1, base + 2, base + 3, base + 4]);
  // <think> is user-defined (Qwen3): matched in any prompt and rendered by decode; <|im_start|> needs parseSpecial.
  const think = t.tokenId("<think>");
  assert.equal(think, base + 5);
  assert.deepEqual(t.encode("<think>Hi"), [think, 17250]);
  assert.ok(!t.encode("<|im_start|>").includes(base));
  assert.deepEqual(t.encode("<|im_start|><think>\n", { parseSpecial: true }), [base, think, 198]);
  assert.equal(t.decode([base, think, 198, base + 1]), "<think>\n");
});

Deno.test("vocab: digits and the pre-tokenizer table change real tokenizations", async () => {
  const ids = async (pre: string) =>
    (await variant("gpt-2", { "tokenizer.ggml.pre": pre })).encode(" 1234567");
  // gpt-2: one word " 1234567"; qwen2: one digit at a time; llama3: up to three; starcoder: digits first.
  assert.deepEqual(pieces(tok("gpt-2"), await ids("gpt-2")), ["Ġ123", "45", "67"]);
  assert.deepEqual(pieces(tok("gpt-2"), await ids("qwen2")), ["Ġ", "1", "2", "3", "4", "5", "6", "7"]);
  assert.deepEqual(await ids("deepseek-r1-qwen"), await ids("qwen2"));
  assert.deepEqual(pieces(tok("gpt-2"), await ids("llama-bpe")), ["Ġ", "123", "456", "7"]);
  assert.deepEqual(pieces(tok("gpt-2"), await ids("smollm")), ["Ġ", "1", "2", "3", "4", "5", "6", "7"]);
});

Deno.test("vocab: a missing pre-tokenizer warns and uses llama.cpp's default; an unknown one is an error", async () => {
  assert.equal(warnings.get("gpt-neox")!.length, 1);
  assert.match(warnings.get("gpt-neox")![0], /no tokenizer\.ggml\.pre.*'default'/);
  assert.deepEqual(warnings.get("gpt-2"), []);
  // default: punctuation runs first, then GPT-2's regex, then digits in threes.
  const neox = tok("gpt-neox");
  assert.deepEqual(pieces(neox, neox.encode("a 123456!!!")), ["a", "Ġ", "123", "456", "!!!"]);
  await assert.rejects(
    () => variant("gpt-2", { "tokenizer.ggml.pre": "no-such-pre" }),
    /unknown pre-tokenizer type "no-such-pre"/,
  );
  await assert.rejects(
    () => variant("gpt-2", { "tokenizer.ggml.model": "t5" }),
    /unsupported GGUF tokenizer model "t5"/,
  );
  await assert.rejects(
    () => variant("gpt-2", { "tokenizer.ggml.merges": undefined }),
    /no tokenizer\.ggml\.merges/,
  );
  await assert.rejects(
    () => variant("gpt-2", { "tokenizer.ggml.tokens": "x" }),
    /tokenizer\.ggml\.tokens: expected an array/,
  );
  await assert.rejects(
    () => variant("gpt-2", { "tokenizer.ggml.token_type": [1, 1] }),
    /50257 tokens but 2 token types/,
  );
});

Deno.test("vocab: byte-level decoding streams exactly, holding back incomplete UTF-8", () => {
  const g = tok("gpt-2");
  const ids = g.encode("🦙 Führer 你好 ½");
  // The llama emoji is four byte tokens in GPT-2's vocabulary: nothing is emitted until the last one.
  const d = g.streamDecoder();
  const emitted = ids.map((id) => d.push(id));
  assert.equal(emitted[0], "");
  assert.equal(emitted.join("") + d.flush(), "🦙 Führer 你好 ½");
  checkStreaming(g, ids);
});

Deno.test("vocab: cleanSpaces applies llama.cpp's detokenize rule only where the type enables it", () => {
  const g = tok("gpt-2"), dc = tok("deepseek-coder");
  assert.equal(g.cleanSpaces, true);
  assert.equal(dc.cleanSpaces, false);
  const text = "Hello , world ! it 's ok";
  assert.equal(g.decode(g.encode(text)), text);
  assert.equal(g.decode(g.encode(text), { cleanSpaces: true }), "Hello, world! it's ok");
  assert.equal(dc.decode(dc.encode(text), { cleanSpaces: true }), text);
});

Deno.test("vocab: llama.cpp's prompt tokens of the arch fixtures (add_special and parse_special on)", async () => {
  for (const name of ["qwen2_gpt2vocab", "llama3_rope_scaled", "qwen3_headdim"]) {
    const path = resolve(SHARED, "fixtures", "arch", `${name}.gguf`);
    const t = tokenizerFromGGUFMetadata(plainMetadata(await readGGUFFile(path)));
    const golden = JSON.parse(
      await Deno.readTextFile(resolve(SHARED, "fixtures", "arch", `${name}.golden.json`)),
    );
    for (const c of golden.cases) {
      const ids = t.encode(c.prompt, { addSpecial: true, parseSpecial: true });
      assert.deepEqual(ids, c.prompt_tokens, `${name} ${c.prompt}`);
      checkStreaming(t, c.tokens.slice(0, 24));
    }
  }
});

Deno.test("vocab: a GGUF model with a gpt2 vocabulary loads with the byte-level BPE tokenizer", async () => {
  const model = await loadModel(resolve(SHARED, "fixtures", "arch", "qwen2_gpt2vocab.gguf"));
  assert.ok(model.tokenizer instanceof BpeTokenizer);
  assert.deepEqual(model.tokenizer.encode("Once upon a time"), [7454, 2402, 257, 640]);
  assert.ok(model.tokenizer.isEog(50256));
});

Deno.test("vocab: the model loader reports a bad tokenizer as a model-format error", async () => {
  const f = await readGGUFFile(SHARED_MODELS.stories260K);
  const path = await Deno.makeTempFile({ suffix: ".gguf" });
  try {
    const cases = [["tokenizer.ggml.model", "t5", /tokenizer model "t5"/], [
      "tokenizer.ggml.tokens",
      "x",
      /tokens/,
    ]];
    for (const [key, value, message] of cases as [string, string, RegExp][]) {
      await Deno.writeFile(
        path,
        writeGGUF({
          metadata: { ...f.metadata, [key]: { type: GGUFValueType.STRING, value } },
          tensors: f.tensors.map((t) => ({ ...t, data: tensorBytes(f, t) })),
        }),
      );
      await assert.rejects(() => loadModel(path), (e) => {
        assert.ok(e instanceof ModelFormatError);
        assert.match(e.message, message);
        return true;
      });
    }
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("vocab: tokenBytes gives a token's bytes as llama.cpp's token_to_piece with special text", () => {
  const g = tok("gpt-2"), spm = tok("llama-spm");
  const text = (t: VocabTokenizer, id: number) => new TextDecoder().decode(t.tokenBytes(id));
  assert.equal(text(g, g.encode(" world")[0]), " world");
  assert.equal(text(g, 50256), "<|endoftext|>", "a control token dropped by decode gives its text");
  assert.equal(text(g, g.encode("\n")[0]), "\n");
  // Part of a UTF-8 sequence: the raw byte (llama.cpp's /tokenize reports such pieces as byte lists).
  const ids = g.encode("🦙");
  assert.ok(ids.length > 1);
  assert.deepEqual(
    ids.flatMap((id) => Array.from(g.tokenBytes(id))),
    Array.from(new TextEncoder().encode("🦙")),
  );
  assert.equal(text(spm, spm.encode("Hello")[0]), " Hello", "SentencePiece's ▁ is a space");
  assert.equal(text(spm, spm.bosId), "<s>");
  assert.deepEqual(Array.from(spm.tokenBytes(spm.tokenId("<0x0A>"))), [10]);
});
