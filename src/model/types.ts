/**
 * Core model types shared by the loaders (GGUF, Hugging Face), the backends and the server.
 *
 * Tensor shapes are row-major, outermost first (numpy order): a linear layer mapping `in` to `out`
 * features has shape `[out, in]` and its bytes hold `out` rows of `in` values. GGUF lists dims innermost
 * first, so the GGUF reader reverses them.
 */

/** ggml tensor element types (values are the GGUF on-disk ids). */
export enum GGMLType {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ4_NL = 20,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  BF16 = 30,
}

/** A named tensor whose raw bytes are in `type`'s on-disk encoding. */
export interface Tensor {
  name: string;
  type: GGMLType;
  /** Row-major, outermost first. */
  shape: number[];
  /** Raw encoded bytes (a view into the model file where possible). */
  data: Uint8Array;
}

/**
 * RoPE pairing convention.
 * - `interleaved`: rotate pairs (x[2i], x[2i+1]); llama.cpp rope type NORM; llama2.c and its GGUFs.
 * - `half`: rotate pairs (x[i], x[i + d/2]); HF `rotate_half`, llama.cpp rope type NEOX.
 */
export type RopeStyle = "interleaved" | "half";

export interface ModelConfig {
  arch: "llama";
  dim: number;
  nLayers: number;
  nHeads: number;
  nKVHeads: number;
  headDim: number;
  ffnDim: number;
  vocabSize: number;
  /** Context length the model is meant to be run at (trained context where it is known). */
  contextLength: number;
  normEps: number;
  ropeTheta: number;
  ropeStyle: RopeStyle;
  /** -1 when the model has none. */
  bosId: number;
  /** -1 when the model has none. */
  eosId: number;
}

export interface LayerWeights {
  attnNorm: Tensor; // [dim]
  wq: Tensor; // [nHeads*headDim, dim]
  wk: Tensor; // [nKVHeads*headDim, dim]
  wv: Tensor; // [nKVHeads*headDim, dim]
  wo: Tensor; // [dim, nHeads*headDim]
  bq?: Tensor; // [nHeads*headDim] (Qwen2-style biases)
  bk?: Tensor;
  bv?: Tensor;
  ffnNorm: Tensor; // [dim]
  wGate: Tensor; // [ffnDim, dim]   (w1, ffn_gate)
  wUp: Tensor; // [ffnDim, dim]     (w3, ffn_up)
  wDown: Tensor; // [dim, ffnDim]   (w2, ffn_down)
}

export interface ModelWeights {
  tokenEmbd: Tensor; // [vocab, dim]
  layers: LayerWeights[];
  outputNorm: Tensor; // [dim]
  /** [vocab, dim]; the same object as tokenEmbd when embeddings are tied. */
  output: Tensor;
}
