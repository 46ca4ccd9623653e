import assert from "node:assert/strict";
import { resolve } from "node:path";
import { makeModel, SHAPES, syntheticMetadata, syntheticTensors } from "../src/cli/make_model.ts";
import { ggufTensor, metaValue, readGGUFFile, tensorBytes } from "../src/model/gguf.ts";
import { dequantize, ggmlTypeName, quantize } from "../src/model/ggml.ts";
import { FILE_TYPES, planQuantization } from "../src/model/quant/mix.ts";
import { modelFromGGUF } from "../src/model/gguf_model.ts";
import { createTsBackend } from "../src/engine/ts/backend.ts";
import { FAMILIES, llama3RopeFactors, SHARED_FIXTURES, TokenType } from "../src/model/synthetic.ts";
import { GGMLType } from "../src/model/types.ts";

const count = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

Deno.test("make-model shapes have the real models' parameter counts", () => {
  // Published parameter counts (Llama 3.2 + its 32 rope factors, which the HF checkpoint computes at load).
  const want: Record<string, number> = {
    "smollm2-135m": 134_515_008,
    "qwen2.5-0.5b": 494_032_768,
    "r1-distill-qwen-1.5b": 1_777_088_000,
    "qwen3-0.6b": 596_049_920,
    "llama-3.2-1b": 1_235_814_400 + 32,
  };
  for (const [name, n] of Object.entries(want)) {
    const total = syntheticTensors(SHAPES[name], GGMLType.F32).reduce((a, t) => a + count(t.shape), 0);
    assert.equal(total, n, name);
  }
});

Deno.test("make-model: architecture tensors and keys (qwen2 biases, qwen3 q/k norms and key_length, llama3 rope)", async () => {
  const names = (s: string) => new Set(syntheticTensors(SHAPES[s], GGMLType.F32).map((t) => t.name));
  assert.ok(names("qwen2.5-0.5b").has("blk.23.attn_v.bias"));
  assert.ok(!names("qwen2.5-0.5b").has("output.weight"));
  assert.ok(names("r1-distill-qwen-1.5b").has("output.weight"));
  const q3 = syntheticTensors(SHAPES["qwen3-0.6b"], GGMLType.F32);
  assert.deepEqual(q3.find((t) => t.name === "blk.0.attn_q.weight")!.shape, [2048, 1024]);
  assert.deepEqual(q3.find((t) => t.name === "blk.0.attn_k_norm.weight")!.shape, [128]);
  assert.ok(!names("qwen3-0.6b").has("blk.0.attn_q.bias"));
  assert.deepEqual(
    syntheticTensors(SHAPES["llama-3.2-1b"], GGMLType.F32).find((t) => t.name === "rope_freqs.weight")!.shape,
    [32],
  );
  const md = await syntheticMetadata("qwen3-0.6b", SHAPES["qwen3-0.6b"], 0);
  assert.equal(md["general.architecture"].value, "qwen3");
  assert.equal(md["qwen3.attention.key_length"].value, 128);
  assert.equal(md["qwen3.embedding_length"].value, 1024);
  assert.equal(md["tokenizer.ggml.pre"].value, "qwen2");
  assert.match(md["tokenizer.chat_template"].value as string, /enable_thinking/);
});

Deno.test("llama 3 rope factors are bit-identical to the converter's (the llama3_rope_scaled fixture)", async () => {
  const g = await readGGUFFile(resolve(SHARED_FIXTURES, "arch", "llama3_rope_scaled.gguf"));
  const t = ggufTensor(g, g.tensors.find((x) => x.name === "rope_freqs.weight")!);
  const ref = new Float32Array(t.data.slice().buffer);
  const r = { factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalContext: 8192 };
  assert.deepEqual(llama3RopeFactors(64, 500000, r), ref);
});

Deno.test("make-model vocabularies: real BPE tokens and merges, the family's specials at their real ids", async () => {
  for (
    const [shape, checks] of Object.entries({
      "qwen2.5-0.5b": {
        151643: "<|endoftext|>",
        151644: "<|im_start|>",
        151645: "<|im_end|>",
        151664: "<|file_sep|>",
      },
      "qwen3-0.6b": { 151667: "<think>", 151668: "</think>" },
      "r1-distill-qwen-1.5b": {
        151646: "<｜begin▁of▁sentence｜>",
        151643: "<｜end▁of▁sentence｜>",
        151648: "<think>",
      },
      "llama-3.2-1b": {
        128000: "<|begin_of_text|>",
        128009: "<|eot_id|>",
        128255: "<|reserved_special_token_247|>",
      },
      "smollm2-135m": { 0: "<|endoftext|>", 1: "<|im_start|>", 2: "<|im_end|>" },
    })
  ) {
    const s = SHAPES[shape];
    const md = await syntheticMetadata(shape, s, 0);
    const tokens = (md["tokenizer.ggml.tokens"].value as { items: string[] }).items;
    const types = (md["tokenizer.ggml.token_type"].value as { items: number[] }).items;
    assert.equal(tokens.length, s.vocabSize, shape);
    assert.equal(types.length, s.vocabSize, shape);
    for (const [id, text] of Object.entries(checks)) assert.equal(tokens[Number(id)], text, `${shape} ${id}`);
    assert.equal(new Set(tokens).size, tokens.length, `${shape}: token texts are unique`);
    const fam = FAMILIES[s.family];
    assert.equal(md["tokenizer.ggml.bos_token_id"].value, fam.bos);
    assert.equal(md["tokenizer.ggml.eos_token_id"].value, fam.eos);
    assert.equal(md["tokenizer.ggml.add_bos_token"].value, fam.addBos);
    const merges = (md["tokenizer.ggml.merges"].value as { items: string[] }).items;
    assert.ok(merges.length > 40000, shape);
    if (s.family !== "smollm2") {
      assert.equal(tokens[0], "!"); // the GPT-2 base vocabulary
      if (s.vocabSize === 151936) assert.equal(types[151935], TokenType.UNUSED, shape); // Qwen's padding
    }
  }
});

Deno.test("make-model writes a real-vocabulary GGUF that reads back with its template", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const out = `${dir}/s.gguf`;
    await makeModel({ shape: "smollm2-135m", out, type: "q8_0" });
    const g = await readGGUFFile(out);
    assert.equal(metaValue(g, "tokenizer.ggml.model"), "gpt2");
    assert.equal(metaValue(g, "tokenizer.ggml.pre"), "smollm");
    assert.match(metaValue(g, "tokenizer.chat_template") as string, /<\|im_start\|>/);
    assert.equal(g.tensors.length, 2 + 30 * 9);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("make-model --type: every file type quantize writes, tensor types chosen as llama-quantize would", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const f32Path = resolve(dir, "f32.gguf");
    await makeModel({ shape: "tiny", out: f32Path, type: "f32", seed: 5 });
    const f32 = await readGGUFFile(f32Path);
    const f32Values = new Map(
      f32.tensors.map((t) => [t.name, dequantize(t.type, tensorBytes(f32, t), t.nElements)]),
    );
    const s = SHAPES.tiny;
    const info = { arch: s.arch, nLayers: s.nLayers, nHead: s.nHeads, nHeadKV: s.nKVHeads };
    // a file type of each family (the K mixes on tiny's rows exercise every fallback type)
    for (const name of ["f16", "bf16", "q4_1", "q5_1", "q3_k_m", "q4_k_m", "q6_k", "iq4_xs"]) {
      const ft = FILE_TYPES[name];
      const out = resolve(dir, `${name}.gguf`);
      await makeModel({ shape: "tiny", out, type: name, seed: 5 });
      const g = await readGGUFFile(out);
      assert.equal(metaValue(g, "general.file_type"), ft.ftype, name);
      const plan = new Map(planQuantization(f32.tensors, info, ft).map((p) => [p.name, p.target]));
      for (const t of g.tensors) {
        assert.equal(ggmlTypeName(t.type), ggmlTypeName(plan.get(t.name)!), `${name} ${t.name}`);
        // the same seeded values, encoded by the reference quantizer of the tensor's type
        if (t.name.startsWith("blk.0.")) {
          assert.deepEqual(
            tensorBytes(g, t),
            quantize(t.type, f32Values.get(t.name)!),
            `${name} ${t.name}: bytes`,
          );
        }
      }
      const m = modelFromGGUF(g);
      const be = createTsBackend(m.config, m.weights);
      const [o] = await be.forward([{ kv: be.createKV(), tokens: [1, 300, 301], logits: "last" }]);
      assert.ok(o.logits.every(Number.isFinite), `${name}: the ts backend runs it`);
      be.dispose();
    }
    // tiny's rows of 128 and 384 fit no 256-block: Q4_K_M falls back to Q5_0 and (Q6_K) Q8_0 throughout
    const q4km = await readGGUFFile(resolve(dir, "q4_k_m.gguf"));
    const types = new Set(q4km.tensors.map((t) => ggmlTypeName(t.type)));
    assert.deepEqual([...types].sort(), ["F32", "Q5_0", "Q8_0"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
