/**
 * Hugging Face model directory loader: config.json + safetensors (single or sharded) + tokenizer.json
 * (+ tokenizer_config.json, generation_config.json, chat template).
 *
 * Architectures: LlamaForCausalLM (and MistralForCausalLM, the same tensors) and Qwen2ForCausalLM (q/k/v
 * biases). HF llama applies RoPE with `rotate_half`, so `ropeStyle` is "half". Tied embeddings: a checkpoint may
 * store only `lm_head.weight` (the shared tinystories-656K does) or only `model.embed_tokens.weight`; either way
 * `tokenEmbd` and `output` are then the same tensor object. Every shape is checked against the config.
 */
import type { LayerWeights, ModelConfig, ModelWeights, Tensor } from "./types.ts";
import { ModelFormatError } from "./errors.ts";
import { readSafetensorsCheckpoint } from "./safetensors.ts";
import { hfTokenizerFromJSON } from "./tokenizer/hf_bpe.ts";
import type { Tokenizer } from "./tokenizer/types.ts";
import { join } from "node:path";

export interface HFModel {
  config: ModelConfig;
  weights: ModelWeights;
  tokenizer: Tokenizer;
  chatTemplate?: string;
  metadata: Record<string, unknown>;
}

const SUPPORTED_ARCHS = new Set(["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"]);

type Json = Record<string, unknown>;

async function readJSON(path: string, required: true): Promise<Json>;
async function readJSON(path: string, required: false): Promise<Json | undefined>;
async function readJSON(path: string, required: boolean): Promise<Json | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      if (required) throw new ModelFormatError(`${path}: file not found`);
      return undefined;
    }
    throw e;
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new ModelFormatError(`${path}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new ModelFormatError(`${path}: not a JSON object`);
  }
  return v as Json;
}

function positiveInt(cfg: Json, key: string, file: string, fallback?: number): number {
  const v = cfg[key] ?? fallback;
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
    throw new ModelFormatError(`${file}: ${key} must be a positive integer, got ${JSON.stringify(cfg[key])}`);
  }
  return v;
}

function positiveNumber(cfg: Json, key: string, file: string, fallback: number): number {
  const v = cfg[key] ?? fallback;
  if (typeof v !== "number" || !(v > 0) || !Number.isFinite(v)) {
    throw new ModelFormatError(`${file}: ${key} must be a positive number, got ${JSON.stringify(cfg[key])}`);
  }
  return v;
}

/** A token id field that may be a number, a list (first wins) or absent/null (-1). */
function tokenId(v: unknown): number | undefined {
  if (Array.isArray(v)) v = v[0];
  return typeof v === "number" && Number.isInteger(v) && v >= 0 ? v : undefined;
}

/** Every id of an `eos_token_id` that may be one id or a list (generation_config.json of Llama 3 and Qwen). */
function tokenIds(v: unknown): number[] {
  return (Array.isArray(v) ? v : [v]).filter((x): x is number =>
    typeof x === "number" && Number.isInteger(x) && x >= 0
  );
}

/** config.json → ModelConfig (throws ModelFormatError on anything unsupported). */
export function hfConfigToModelConfig(
  cfg: Json,
  generation: Json | undefined,
  file = "config.json",
): ModelConfig {
  const archs = Array.isArray(cfg.architectures) ? cfg.architectures : [];
  const arch = archs.find((a) => typeof a === "string" && SUPPORTED_ARCHS.has(a));
  if (!arch) {
    throw new ModelFormatError(
      `${file}: unsupported architectures ${JSON.stringify(cfg.architectures)} (supported: ${
        [...SUPPORTED_ARCHS].join(", ")
      })`,
    );
  }
  const act = cfg.hidden_act ?? "silu";
  if (act !== "silu") throw new ModelFormatError(`${file}: unsupported hidden_act ${JSON.stringify(act)}`);
  const rs = cfg.rope_scaling as Json | null | undefined;
  if (rs !== null && rs !== undefined) {
    const t = rs.rope_type ?? rs.type;
    if (t !== "default") {
      throw new ModelFormatError(`${file}: unsupported rope_scaling ${JSON.stringify(rs)}`);
    }
  }
  if (cfg.mlp_bias === true) throw new ModelFormatError(`${file}: mlp_bias is not supported`);
  const dim = positiveInt(cfg, "hidden_size", file);
  const nHeads = positiveInt(cfg, "num_attention_heads", file);
  const nKVHeads = positiveInt(cfg, "num_key_value_heads", file, nHeads);
  if (nHeads % nKVHeads !== 0) {
    throw new ModelFormatError(
      `${file}: num_attention_heads ${nHeads} is not a multiple of num_key_value_heads ${nKVHeads}`,
    );
  }
  let headDim: number;
  if (cfg.head_dim !== undefined && cfg.head_dim !== null) headDim = positiveInt(cfg, "head_dim", file);
  else {
    if (dim % nHeads !== 0) {
      throw new ModelFormatError(`${file}: hidden_size ${dim} not divisible by ${nHeads} heads`);
    }
    headDim = dim / nHeads;
  }
  if (headDim % 2 !== 0) {
    throw new ModelFormatError(`${file}: head dimension ${headDim} must be even for RoPE`);
  }
  return {
    arch: "llama",
    dim,
    nLayers: positiveInt(cfg, "num_hidden_layers", file),
    nHeads,
    nKVHeads,
    headDim,
    ffnDim: positiveInt(cfg, "intermediate_size", file),
    vocabSize: positiveInt(cfg, "vocab_size", file),
    contextLength: positiveInt(cfg, "max_position_embeddings", file, 2048),
    normEps: positiveNumber(cfg, "rms_norm_eps", file, 1e-6),
    ropeTheta: positiveNumber(cfg, "rope_theta", file, 10000),
    ropeStyle: "half",
    bosId: tokenId(cfg.bos_token_id) ?? tokenId(generation?.bos_token_id) ?? -1,
    eosId: tokenId(cfg.eos_token_id) ?? tokenId(generation?.eos_token_id) ?? -1,
  };
}

function chatTemplateOf(tc: Json | undefined): string | undefined {
  const t = tc?.chat_template;
  if (typeof t === "string") return t;
  if (Array.isArray(t)) {
    const named = t.filter((x): x is { name: string; template: string } =>
      typeof x === "object" && x !== null && typeof x.template === "string"
    );
    return (named.find((x) => x.name === "default") ?? named[0])?.template;
  }
  return undefined;
}

export async function loadHFModel(dir: string): Promise<HFModel> {
  try {
    const st = await Deno.stat(dir);
    if (!st.isDirectory) throw new ModelFormatError(`${dir}: not a directory`);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new ModelFormatError(`${dir}: model directory not found`);
    throw e;
  }
  const cfgPath = join(dir, "config.json");
  const cfgJson = await readJSON(cfgPath, true);
  const generation = await readJSON(join(dir, "generation_config.json"), false);
  const tokenizerConfig = await readJSON(join(dir, "tokenizer_config.json"), false);
  const config = hfConfigToModelConfig(cfgJson, generation, cfgPath);

  const tokenizer = await readTokenizer(dir, cfgJson, generation, tokenizerConfig);
  if (config.bosId < 0) config.bosId = tokenizer.bosId;
  if (config.eosId < 0) config.eosId = tokenizer.eosId;

  const ckpt = await readSafetensorsCheckpoint(dir);
  const weights = buildWeights(config, ckpt.tensors, cfgJson.tie_word_embeddings !== false, dir);

  let chatTemplate = chatTemplateOf(tokenizerConfig);
  if (chatTemplate === undefined) {
    try {
      chatTemplate = await Deno.readTextFile(join(dir, "chat_template.jinja"));
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  const metadata: Record<string, unknown> = {
    "hf.config": cfgJson,
    "safetensors.metadata": ckpt.metadata,
  };
  if (generation) metadata["hf.generation_config"] = generation;
  if (tokenizerConfig) metadata["hf.tokenizer_config"] = tokenizerConfig;
  return { config, weights, tokenizer, chatTemplate, metadata };
}

/** tokenizer.json with tokenizer_config.json; generation stops at EOS and at every EOS id the configs list. */
async function readTokenizer(
  dir: string,
  cfgJson: Json | undefined,
  generation: Json | undefined,
  tokenizerConfig: Json | undefined,
): Promise<Tokenizer> {
  const tokPath = join(dir, "tokenizer.json");
  const tokJson = await readJSON(tokPath, true);
  try {
    const eosIds = [...tokenIds(cfgJson?.eos_token_id), ...tokenIds(generation?.eos_token_id)];
    return hfTokenizerFromJSON(tokJson, tokenizerConfig, { eosIds });
  } catch (e) {
    throw new ModelFormatError(`${tokPath}: ${(e as Error).message}`);
  }
}

/** The tokenizer alone of a Hugging Face model directory (config.json and the weights may be absent). */
export async function loadHFTokenizer(dir: string): Promise<Tokenizer> {
  const opt = (f: string) => readJSON(join(dir, f), false);
  return readTokenizer(
    dir,
    await opt("config.json"),
    await opt("generation_config.json"),
    await opt("tokenizer_config.json"),
  );
}

/** Picks and shape-checks the llama tensors; ties embeddings as described in the module comment. */
export function buildWeights(
  c: ModelConfig,
  tensors: Map<string, Tensor>,
  tieWordEmbeddings: boolean,
  where: string,
): ModelWeights {
  const used = new Set<string>();
  const take = (name: string, shape: number[], optional = false): Tensor | undefined => {
    const t = tensors.get(name);
    if (!t) {
      if (optional) return undefined;
      throw new ModelFormatError(`${where}: missing tensor ${name}`);
    }
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new ModelFormatError(
        `${where}: tensor ${name} has shape [${t.shape}], config expects [${shape}]`,
      );
    }
    used.add(name);
    return t;
  };
  const need = (name: string, shape: number[]) => take(name, shape)!;
  const qDim = c.nHeads * c.headDim, kvDim = c.nKVHeads * c.headDim;
  const embd = take("model.embed_tokens.weight", [c.vocabSize, c.dim], true);
  const head = take("lm_head.weight", [c.vocabSize, c.dim], true);
  let tokenEmbd: Tensor, output: Tensor;
  if (embd && head) [tokenEmbd, output] = [embd, head];
  else if (head) tokenEmbd = output = head; // tied, stored only as lm_head
  else if (embd && tieWordEmbeddings) tokenEmbd = output = embd;
  else if (embd) {
    throw new ModelFormatError(`${where}: missing tensor lm_head.weight (tie_word_embeddings is false)`);
  } else {throw new ModelFormatError(
      `${where}: missing tensor model.embed_tokens.weight (and lm_head.weight)`,
    );}

  const layers: LayerWeights[] = [];
  for (let l = 0; l < c.nLayers; l++) {
    const p = `model.layers.${l}.`;
    const layer: LayerWeights = {
      attnNorm: need(`${p}input_layernorm.weight`, [c.dim]),
      wq: need(`${p}self_attn.q_proj.weight`, [qDim, c.dim]),
      wk: need(`${p}self_attn.k_proj.weight`, [kvDim, c.dim]),
      wv: need(`${p}self_attn.v_proj.weight`, [kvDim, c.dim]),
      wo: need(`${p}self_attn.o_proj.weight`, [c.dim, qDim]),
      ffnNorm: need(`${p}post_attention_layernorm.weight`, [c.dim]),
      wGate: need(`${p}mlp.gate_proj.weight`, [c.ffnDim, c.dim]),
      wUp: need(`${p}mlp.up_proj.weight`, [c.ffnDim, c.dim]),
      wDown: need(`${p}mlp.down_proj.weight`, [c.dim, c.ffnDim]),
    };
    const bq = take(`${p}self_attn.q_proj.bias`, [qDim], true);
    const bk = take(`${p}self_attn.k_proj.bias`, [kvDim], true);
    const bv = take(`${p}self_attn.v_proj.bias`, [kvDim], true);
    if (bq || bk || bv) {
      if (!bq || !bk || !bv) {
        throw new ModelFormatError(`${where}: layer ${l} has only some of the q/k/v biases`);
      }
      Object.assign(layer, { bq, bk, bv });
    }
    if (tensors.has(`${p}self_attn.o_proj.bias`)) {
      throw new ModelFormatError(`${where}: ${p}self_attn.o_proj.bias is not supported`);
    }
    layers.push(layer);
  }
  const outputNorm = need("model.norm.weight", [c.dim]);
  const extraLayer = [...tensors.keys()].find((n) => n.startsWith(`model.layers.${c.nLayers}.`));
  if (extraLayer) {
    throw new ModelFormatError(`${where}: tensor ${extraLayer} beyond num_hidden_layers ${c.nLayers}`);
  }
  return { tokenEmbd, layers, outputNorm, output };
}
