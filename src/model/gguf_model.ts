/**
 * Map a parsed GGUF file onto the runtime's ModelConfig and ModelWeights (llama and qwen2 architectures).
 *
 * llama-arch GGUFs (llama.cpp's converter permutes Q/K for it; llama2.c exports are native) use the
 * interleaved-pair RoPE (llama.cpp rope type NORM); qwen2 uses the half-split NEOX RoPE and Q/K/V biases.
 * Every tensor's shape is checked against the config.
 */
import type { LayerWeights, ModelConfig, ModelWeights, RopeStyle, Tensor } from "./types.ts";
import { ModelFormatError } from "./errors.ts";
import { type GGUFFile, ggufTensor, plainMetadata } from "./gguf.ts";

export interface GGUFModel {
  config: ModelConfig;
  weights: ModelWeights;
  /** Every metadata value as plain JS (see gguf.ts plainValue); e.g. for the context-length override. */
  metadata: Record<string, unknown>;
}

const SUPPORTED: Record<string, { ropeStyle: RopeStyle }> = {
  llama: { ropeStyle: "interleaved" },
  qwen2: { ropeStyle: "half" },
};

function fail(msg: string): never {
  throw new ModelFormatError(`GGUF model: ${msg}`);
}

function num(meta: Record<string, unknown>, key: string, def?: number): number {
  const v = meta[key];
  if (v === undefined) {
    if (def === undefined) fail(`missing metadata key "${key}"`);
    return def;
  }
  if (typeof v !== "number" || !Number.isFinite(v)) fail(`metadata "${key}" is not a number (${String(v)})`);
  return v;
}

function posInt(meta: Record<string, unknown>, key: string, def?: number): number {
  const v = num(meta, key, def);
  if (!Number.isInteger(v) || v <= 0) fail(`metadata "${key}" must be a positive integer, got ${v}`);
  return v;
}

/** Build config and weights from a parsed GGUF file (weights are views into the file's bytes). */
export function modelFromGGUF(file: GGUFFile): GGUFModel {
  const meta = plainMetadata(file);
  const arch = meta["general.architecture"];
  if (typeof arch !== "string") fail(`missing or non-string "general.architecture"`);
  const archInfo = Object.hasOwn(SUPPORTED, arch) ? SUPPORTED[arch] : undefined;
  if (!archInfo) {
    fail(`unsupported architecture "${arch}" (supported: ${Object.keys(SUPPORTED).join(", ")})`);
  }
  const k = (s: string) => `${arch}.${s}`;
  const dim = posInt(meta, k("embedding_length"));
  const nLayers = posInt(meta, k("block_count"));
  const ffnDim = posInt(meta, k("feed_forward_length"));
  const nHeads = posInt(meta, k("attention.head_count"));
  const nKVHeads = posInt(meta, k("attention.head_count_kv"), nHeads);
  const contextLength = posInt(meta, k("context_length"));
  const normEps = num(meta, k("attention.layer_norm_rms_epsilon"), 1e-5);
  const ropeTheta = num(meta, k("rope.freq_base"), 10000);
  if (dim % nHeads !== 0) fail(`embedding_length ${dim} is not divisible by head_count ${nHeads}`);
  if (nHeads % nKVHeads !== 0) fail(`head_count ${nHeads} is not divisible by head_count_kv ${nKVHeads}`);
  const headDim = dim / nHeads;
  const ropeDim = posInt(meta, k("rope.dimension_count"), headDim);
  if (ropeDim !== headDim) {
    fail(`rope.dimension_count ${ropeDim} differs from head dim ${headDim} (partial RoPE is not supported)`);
  }
  if (headDim % 2 !== 0) fail(`head dim ${headDim} must be even for RoPE`);
  if (!(normEps > 0)) fail(`layer_norm_rms_epsilon must be positive, got ${normEps}`);
  if (!(ropeTheta > 0)) fail(`rope.freq_base must be positive, got ${ropeTheta}`);

  const byName = new Map(file.tensors.map((t) => [t.name, t]));
  const get = (name: string, shape: number[]): Tensor => {
    const info = byName.get(name);
    if (!info) fail(`missing tensor "${name}"`);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      fail(`tensor "${name}" has shape [${info.shape}], expected [${shape}]`);
    }
    return ggufTensor(file, info);
  };
  const opt = (name: string, shape: number[]): Tensor | undefined =>
    byName.has(name) ? get(name, shape) : undefined;

  const embInfo = byName.get("token_embd.weight");
  if (!embInfo) fail(`missing tensor "token_embd.weight"`);
  if (embInfo.shape.length !== 2) {
    fail(`tensor "token_embd.weight" must be 2-D, has shape [${embInfo.shape}]`);
  }
  const vocabSize = embInfo.shape[0];
  const tokenEmbd = get("token_embd.weight", [vocabSize, dim]);

  const qDim = nHeads * headDim;
  const kvDim = nKVHeads * headDim;
  const layers: LayerWeights[] = [];
  for (let l = 0; l < nLayers; l++) {
    const p = `blk.${l}.`;
    const layer: LayerWeights = {
      attnNorm: get(`${p}attn_norm.weight`, [dim]),
      wq: get(`${p}attn_q.weight`, [qDim, dim]),
      wk: get(`${p}attn_k.weight`, [kvDim, dim]),
      wv: get(`${p}attn_v.weight`, [kvDim, dim]),
      wo: get(`${p}attn_output.weight`, [dim, qDim]),
      ffnNorm: get(`${p}ffn_norm.weight`, [dim]),
      wGate: get(`${p}ffn_gate.weight`, [ffnDim, dim]),
      wUp: get(`${p}ffn_up.weight`, [ffnDim, dim]),
      wDown: get(`${p}ffn_down.weight`, [dim, ffnDim]),
    };
    const bq = opt(`${p}attn_q.bias`, [qDim]);
    const bk = opt(`${p}attn_k.bias`, [kvDim]);
    const bv = opt(`${p}attn_v.bias`, [kvDim]);
    if (bq) layer.bq = bq;
    if (bk) layer.bk = bk;
    if (bv) layer.bv = bv;
    layers.push(layer);
  }
  const outputNorm = get("output_norm.weight", [dim]);
  const output = opt("output.weight", [vocabSize, dim]) ?? tokenEmbd;

  const idOr = (key: string): number => {
    const v = meta[key];
    if (v === undefined) return -1;
    if (typeof v !== "number" || !Number.isInteger(v)) fail(`metadata "${key}" is not an integer`);
    return v >= 0 && v < vocabSize ? v : -1;
  };

  const config: ModelConfig = {
    arch: "llama",
    dim,
    nLayers,
    nHeads,
    nKVHeads,
    headDim,
    ffnDim,
    vocabSize,
    contextLength,
    normEps,
    ropeTheta,
    ropeStyle: archInfo.ropeStyle,
    bosId: idOr("tokenizer.ggml.bos_token_id"),
    eosId: idOr("tokenizer.ggml.eos_token_id"),
  };
  return { config, weights: { tokenEmbd, layers, outputNorm, output }, metadata: meta };
}
