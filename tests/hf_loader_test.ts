import assert from "node:assert/strict";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { loadHFModel } from "../src/model/hf.ts";
import { encodeSafetensors, type SafetensorsEntry } from "../src/model/safetensors.ts";
import { ModelFormatError } from "../src/model/errors.ts";
import { GGMLType } from "../src/model/types.ts";

const SHARED = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "shared");
const HF_DIR = Deno.env.get("LETHE_MODEL_HF") ?? resolve(SHARED, "models", "tinystories-656K");

Deno.test("hf loader: shared tinystories-656K loads with the right config and tied embeddings", async () => {
  const m = await loadHFModel(HF_DIR);
  assert.deepEqual(m.config, {
    arch: "llama",
    dim: 128,
    nLayers: 2,
    nHeads: 8,
    nKVHeads: 4,
    headDim: 16,
    ffnDim: 384,
    vocabSize: 2048,
    contextLength: 512,
    normEps: 1e-6,
    ropeTheta: 10000,
    ropeStyle: "half",
    bosId: 1,
    eosId: 2,
  });
  const w = m.weights;
  assert.equal(w.tokenEmbd, w.output, "tied: the same tensor object");
  assert.equal(w.output.name, "lm_head.weight");
  assert.deepEqual(w.tokenEmbd.shape, [2048, 128]);
  assert.equal(w.tokenEmbd.type, GGMLType.F32);
  assert.equal(w.layers.length, 2);
  const l = w.layers[1];
  assert.deepEqual(l.wq.shape, [128, 128]);
  assert.deepEqual(l.wk.shape, [64, 128]);
  assert.deepEqual(l.wv.shape, [64, 128]);
  assert.deepEqual(l.wo.shape, [128, 128]);
  assert.deepEqual(l.wGate.shape, [384, 128]);
  assert.deepEqual(l.wUp.shape, [384, 128]);
  assert.deepEqual(l.wDown.shape, [128, 384]);
  assert.deepEqual(l.attnNorm.shape, [128]);
  assert.equal(l.bq, undefined);
  assert.deepEqual(w.outputNorm.shape, [128]);
  const emb = new Float32Array(w.tokenEmbd.data.slice().buffer);
  assert.ok(emb.every(Number.isFinite) && emb.some((x) => x !== 0));
  assert.equal(m.tokenizer.vocabSize, 2048);
  assert.equal(m.tokenizer.bosId, 1);
  assert.equal(
    m.tokenizer.decode(m.tokenizer.encode("Once upon a time", { addBos: true })),
    "Once upon a time",
  );
  assert.equal(m.chatTemplate, undefined);
  assert.equal((m.metadata["hf.config"] as { model_type: string }).model_type, "llama");
});

// A tiny synthetic model directory: dim 8, 2 heads (1 KV head), head_dim 4, ffn 12, vocab = the shared tokenizer's.
const V = 2048, D = 8, F = 12;
function zeros(shape: number[], name: string): SafetensorsEntry {
  return { name, dtype: "F32", shape, data: new Uint8Array(shape.reduce((a, b) => a * b, 1) * 4) };
}
function tinyTensors(opts: { biases?: boolean; embed?: boolean; head?: boolean } = {}): SafetensorsEntry[] {
  const t: SafetensorsEntry[] = [];
  if (opts.embed ?? true) t.push(zeros([V, D], "model.embed_tokens.weight"));
  if (opts.head) t.push(zeros([V, D], "lm_head.weight"));
  const p = "model.layers.0.";
  t.push(zeros([D], `${p}input_layernorm.weight`), zeros([D], `${p}post_attention_layernorm.weight`));
  t.push(zeros([8, D], `${p}self_attn.q_proj.weight`), zeros([4, D], `${p}self_attn.k_proj.weight`));
  t.push(zeros([4, D], `${p}self_attn.v_proj.weight`), zeros([D, 8], `${p}self_attn.o_proj.weight`));
  if (opts.biases) {
    t.push(zeros([8], `${p}self_attn.q_proj.bias`), zeros([4], `${p}self_attn.k_proj.bias`));
    t.push(zeros([4], `${p}self_attn.v_proj.bias`));
  }
  t.push(zeros([F, D], `${p}mlp.gate_proj.weight`), zeros([F, D], `${p}mlp.up_proj.weight`));
  t.push(zeros([D, F], `${p}mlp.down_proj.weight`), zeros([D], "model.norm.weight"));
  return t;
}
const tinyConfig = {
  architectures: ["Qwen2ForCausalLM"],
  hidden_size: D,
  num_attention_heads: 2,
  num_key_value_heads: 1,
  head_dim: 4,
  intermediate_size: F,
  num_hidden_layers: 1,
  vocab_size: V,
  max_position_embeddings: 64,
  rms_norm_eps: 1e-5,
  rope_theta: 1000000,
  tie_word_embeddings: true,
  eos_token_id: [2, 5],
};

async function withDir(
  files: { config?: unknown; tensors?: SafetensorsEntry[]; tokenizer?: boolean; tc?: unknown },
  fn: (dir: string) => Promise<void>,
) {
  const dir = await Deno.makeTempDir({ prefix: "lethe_hf_" });
  try {
    if (files.config) await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(files.config));
    if (files.tensors) await Deno.writeFile(join(dir, "model.safetensors"), encodeSafetensors(files.tensors));
    if (files.tokenizer ?? true) {
      await Deno.copyFile(join(HF_DIR, "tokenizer.json"), join(dir, "tokenizer.json"));
    }
    if (files.tc) await Deno.writeTextFile(join(dir, "tokenizer_config.json"), JSON.stringify(files.tc));
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const rejectsFormat = (p: Promise<unknown>, re: RegExp) =>
  assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof ModelFormatError, `expected ModelFormatError, got ${e}`);
    assert.match((e as Error).message, re);
    return true;
  });

Deno.test("hf loader: qwen2-style biases, embed-only tied weights, head_dim, eos list, chat template", async () => {
  await withDir({
    config: tinyConfig,
    tensors: tinyTensors({ biases: true }),
    tc: { bos_token: "<|start_story|>", chat_template: "{{ messages }}" },
  }, async (dir) => {
    const m = await loadHFModel(dir);
    assert.equal(m.config.headDim, 4);
    assert.equal(m.config.ropeTheta, 1000000);
    assert.equal(m.config.eosId, 2);
    assert.equal(m.config.bosId, 1, "bos from the tokenizer when config has none");
    assert.equal(m.weights.output, m.weights.tokenEmbd);
    assert.equal(m.weights.output.name, "model.embed_tokens.weight");
    assert.deepEqual(m.weights.layers[0].bq?.shape, [8]);
    assert.deepEqual(m.weights.layers[0].bk?.shape, [4]);
    assert.equal(m.chatTemplate, "{{ messages }}");
  });
  await withDir({
    config: { ...tinyConfig, tie_word_embeddings: false },
    tensors: tinyTensors({ head: true }),
  }, async (dir) => {
    const m = await loadHFModel(dir);
    assert.notEqual(m.weights.output, m.weights.tokenEmbd);
    assert.equal(m.weights.output.name, "lm_head.weight");
  });
});

Deno.test("hf loader: clear errors for missing files, tensors and wrong shapes", async () => {
  await rejectsFormat(loadHFModel("/nonexistent/model"), /model directory not found/);
  await withDir(
    { tensors: tinyTensors() },
    (dir) => rejectsFormat(loadHFModel(dir), /config\.json: file not found/),
  );
  await withDir(
    { config: tinyConfig, tensors: tinyTensors(), tokenizer: false },
    (dir) => rejectsFormat(loadHFModel(dir), /tokenizer\.json: file not found/),
  );
  await withDir(
    { config: tinyConfig },
    (dir) => rejectsFormat(loadHFModel(dir), /no model\.safetensors and no model\.safetensors\.index\.json/),
  );
  await withDir(
    { config: tinyConfig, tensors: tinyTensors().filter((t) => !t.name.includes("up_proj")) },
    (dir) => rejectsFormat(loadHFModel(dir), /missing tensor model\.layers\.0\.mlp\.up_proj\.weight/),
  );
  await withDir(
    { config: { ...tinyConfig, intermediate_size: 16 }, tensors: tinyTensors() },
    (dir) =>
      rejectsFormat(loadHFModel(dir), /mlp\.gate_proj\.weight has shape \[12,8\], config expects \[16,8\]/),
  );
  await withDir(
    { config: { ...tinyConfig, tie_word_embeddings: false }, tensors: tinyTensors() },
    (dir) =>
      rejectsFormat(loadHFModel(dir), /missing tensor lm_head\.weight \(tie_word_embeddings is false\)/),
  );
  await withDir(
    { config: { ...tinyConfig, architectures: ["GPT2LMHeadModel"] }, tensors: tinyTensors() },
    (dir) => rejectsFormat(loadHFModel(dir), /unsupported architectures \["GPT2LMHeadModel"\]/),
  );
  await withDir(
    { config: { ...tinyConfig, rope_scaling: { rope_type: "llama3", factor: 8 } }, tensors: tinyTensors() },
    (dir) => rejectsFormat(loadHFModel(dir), /unsupported rope_scaling/),
  );
  await withDir(
    { config: { ...tinyConfig, hidden_size: "8" }, tensors: tinyTensors() },
    (dir) => rejectsFormat(loadHFModel(dir), /hidden_size must be a positive integer/),
  );
});
