/**
 * llama-quantize's file types and its per-tensor type choice (llama.cpp src/llama-quant.cpp at c392e509:
 * llama_model_quantize_impl and llama_tensor_get_type), for the file types this runtime can write.
 *
 * A file type names a base tensor type; "mixes" (Q4_K_M …) give attn_v / ffn_down more bits on the layers
 * `useMoreBits` picks, the output (or the tied embedding) Q6_K, and every tensor whose rows are not a
 * multiple of its type's block size falls back to a 32-block type (Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0,
 * Q2_K/Q3_K/IQ4_XS→IQ4_NL; F16 when even 32 does not divide the row). Tensors are visited in llama-quantize's
 * order (by layer, then by name), which is also the order it writes them in.
 */
import { GGMLType } from "../types.ts";
import { GGML_TYPES } from "../ggml.ts";

/** A llama.cpp file type (LLAMA_FTYPE_*): its `general.file_type` value and its base tensor type. */
export interface FileType {
  /** llama-quantize's name, e.g. "Q4_K_M". */
  name: string;
  /** LLAMA_FTYPE value written to general.file_type. */
  ftype: number;
  base: GGMLType;
}

const T = GGMLType;
const ft = (name: string, ftype: number, base: GGMLType): FileType => ({ name, ftype, base });

/** The file types `quantize` writes, by lower-case name (llama-quantize's names). */
export const FILE_TYPES: Readonly<Record<string, FileType>> = {
  f32: ft("F32", 0, T.F32),
  f16: ft("F16", 1, T.F16),
  bf16: ft("BF16", 32, T.BF16),
  q4_0: ft("Q4_0", 2, T.Q4_0),
  q4_1: ft("Q4_1", 3, T.Q4_1),
  q5_0: ft("Q5_0", 8, T.Q5_0),
  q5_1: ft("Q5_1", 9, T.Q5_1),
  q8_0: ft("Q8_0", 7, T.Q8_0),
  q2_k: ft("Q2_K", 10, T.Q2_K),
  q3_k_s: ft("Q3_K_S", 11, T.Q3_K),
  q3_k_m: ft("Q3_K_M", 12, T.Q3_K),
  q3_k_l: ft("Q3_K_L", 13, T.Q3_K),
  q4_k_s: ft("Q4_K_S", 14, T.Q4_K),
  q4_k_m: ft("Q4_K_M", 15, T.Q4_K),
  q5_k_s: ft("Q5_K_S", 16, T.Q5_K),
  q5_k_m: ft("Q5_K_M", 17, T.Q5_K),
  q6_k: ft("Q6_K", 18, T.Q6_K),
  iq4_nl: ft("IQ4_NL", 25, T.IQ4_NL),
  iq4_xs: ft("IQ4_XS", 30, T.IQ4_XS),
};

/** llama-quantize's aliases: Q3_K, Q4_K and Q5_K mean the _M mixes. */
const ALIASES: Record<string, string> = { q3_k: "q3_k_m", q4_k: "q4_k_m", q5_k: "q5_k_m" };

/** The file type named `name` (case-insensitive, aliases resolved), or undefined. */
export function fileTypeByName(name: string): FileType | undefined {
  const k = name.toLowerCase();
  const key = Object.hasOwn(ALIASES, k) ? ALIASES[k] : k;
  return Object.hasOwn(FILE_TYPES, key) ? FILE_TYPES[key] : undefined;
}

/** Every accepted --type name, for usage lines. */
export function fileTypeNames(): string[] {
  return [...Object.keys(FILE_TYPES), ...Object.keys(ALIASES)];
}

/** What the type choice needs to know about the model (llama_model hparams). */
export interface QuantModelInfo {
  arch: string;
  nLayers: number;
  nHead: number;
  nHeadKV: number;
}

/** A tensor as the planner sees it. */
export interface QuantTensorIn {
  name: string;
  /** Row-major, outermost first (the last dim is the row, ggml's ne[0]). */
  shape: readonly number[];
  type: GGMLType;
}

export interface QuantTensorPlan extends QuantTensorIn {
  /** The type it is written in. */
  target: GGMLType;
  /** Whether it is re-encoded (false: copied as it is). */
  requantize: boolean;
}

export interface PlanOptions {
  /** llama-quantize --pure: every quantized tensor gets the base type (row fallbacks still apply). */
  pure?: boolean;
}

/** Layer index of "blk.N.…", -1 for other names (llama_model_loader's weight_name_comparer). */
function layerOf(name: string): number {
  const m = /^blk\.(\d+)\./.exec(name);
  return m ? Number(m[1]) : -1;
}

/** llama-quantize's tensor order: by layer (non-layer tensors first), then by name (byte order). */
export function quantizeOrder<X extends { name: string }>(tensors: readonly X[]): X[] {
  return tensors.slice().sort((a, b) => {
    const la = layerOf(a.name), lb = layerOf(b.name);
    if (la !== lb) return la - lb;
    return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
  });
}

/** ggml_n_dims: dims after dropping trailing (outer) dims of size 1. */
function nDims(shape: readonly number[]): number {
  let n = shape.length;
  let i = 0;
  while (n > 1 && shape[i] === 1) {
    n--;
    i++;
  }
  return n;
}

/** Whether llama-quantize quantizes a tensor at all: 2-D+ weights other than norms, MoE gates and a few small ones. */
export function isQuantizable(name: string, shape: readonly number[]): boolean {
  if (nDims(shape) < 2 || !name.endsWith("weight")) return false;
  const excluded = [
    "_norm.weight",
    "ffn_gate_inp.weight",
    "ssm_conv1d.weight",
    "attn_rel_b.weight",
    "time_mix_first.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
  ];
  if (excluded.some((s) => name.includes(s))) return false;
  return name !== "position_embd.weight" && name !== "token_types.weight";
}

/** use_more_bits: the first and last eighth of the layers and every third one between. */
export function useMoreBits(i: number, n: number): boolean {
  return i < Math.trunc(n / 8) || i >= Math.trunc((7 * n) / 8) || (i - Math.trunc(n / 8)) % 3 === 2;
}

/**
 * The type a tensor of `type` is written in when its rows are not a multiple of the block: llama-quantize's
 * 32-block fallbacks for the 256-block types (F16 when 32 does not divide the row either). For the 32-block
 * types llama-quantize has no fallback and stops; this returns null and the tensor is copied unchanged.
 */
export function fallbackType(type: GGMLType, rowLength: number): GGMLType | null {
  if (rowLength % GGML_TYPES[type].blockSize === 0) return type;
  let t: GGMLType;
  switch (type) {
    case T.Q2_K:
    case T.Q3_K:
    case T.IQ4_XS:
      t = T.IQ4_NL;
      break;
    case T.Q4_K:
      t = T.Q5_0;
      break;
    case T.Q5_K:
      t = T.Q5_1;
      break;
    case T.Q6_K:
      t = T.Q8_0;
      break;
    default:
      return null;
  }
  return rowLength % GGML_TYPES[t].blockSize === 0 ? t : T.F16;
}

/** Mutable counters of llama-quantize's quantize_state_impl. */
interface State {
  nAttentionWv: number;
  iAttentionWv: number;
  iFfnDown: number;
  hasOutput: boolean;
}

/** llama_tensor_get_type for the file types in FILE_TYPES (no importance matrix, one expert). */
function tensorType(
  s: State,
  info: QuantModelInfo,
  f: FileType,
  name: string,
  rowLength: number,
): GGMLType | null {
  let t = f.base;
  const F = f.name;
  const nGqa = info.nHead / info.nHeadKV;
  const falcon = info.arch === "falcon";
  const is70B = info.arch === "llama" && info.nLayers === 80 && info.nHead !== info.nHeadKV;
  if (name === "output.weight" || (!s.hasOutput && name === "token_embd.weight")) {
    // the output (or the tied embedding): Q6_K, or Q8_0 when the base type's block does not divide the row
    if (falcon || rowLength % GGML_TYPES[t].blockSize !== 0) t = T.Q8_0;
    else if (t !== T.Q8_0) t = T.Q6_K;
  } else if (name.includes("attn_v.weight")) {
    if (F === "Q2_K") t = nGqa >= 4 ? T.Q4_K : T.Q3_K;
    else if (F === "Q3_K_M") t = s.iAttentionWv < 2 ? T.Q5_K : T.Q4_K;
    else if (F === "Q3_K_L") t = T.Q5_K;
    else if ((F === "IQ4_NL" || F === "IQ4_XS") && nGqa >= 4) t = T.Q5_K;
    else if ((F === "Q4_K_M" || F === "Q5_K_M") && useMoreBits(s.iAttentionWv, s.nAttentionWv)) t = T.Q6_K;
    else if (F === "Q4_K_S" && s.iAttentionWv < 4) t = T.Q5_K;
    if (is70B && (t === T.Q3_K || t === T.Q4_K)) t = T.Q5_K;
    s.iAttentionWv++;
  } else if (name.includes("ffn_down")) {
    const i = s.iFfnDown, n = info.nLayers;
    if (F === "Q2_K") t = T.Q3_K;
    else if (F === "Q3_K_M") {
      t = i < Math.trunc(n / 16) ? T.Q5_K : !falcon || useMoreBits(i, n) ? T.Q4_K : T.Q3_K;
    } else if (F === "Q3_K_L") t = falcon ? T.Q4_K : T.Q5_K;
    else if (F === "Q4_K_M") {
      if (falcon) t = i < Math.trunc(n / 16) ? T.Q6_K : useMoreBits(i, n) ? T.Q5_K : T.Q4_K;
      else if (useMoreBits(i, n)) t = T.Q6_K;
    } else if (i < Math.trunc(n / 8) && (F === "IQ4_NL" || F === "IQ4_XS")) t = T.Q5_K;
    else if (F === "Q5_K_M" && useMoreBits(i, n)) t = T.Q6_K;
    else if (F === "Q4_K_S" && !falcon && i < Math.trunc(n / 8)) t = T.Q5_K;
    s.iFfnDown++;
  } else if (name.includes("attn_output.weight")) {
    if (!falcon) {
      if (F === "Q2_K") t = T.Q3_K;
      else if (F === "Q3_K_M") t = T.Q4_K;
      else if (F === "Q3_K_L") t = T.Q5_K;
    } else if (F === "Q3_K_L") t = T.Q4_K;
  } else if (name.includes("attn_qkv.weight")) {
    if (F === "Q3_K_M" || F === "Q3_K_L") t = T.Q4_K;
    else if (F === "Q4_K_M") t = T.Q5_K;
    else if (F === "Q5_K_M") t = T.Q6_K;
  }
  return fallbackType(t, rowLength);
}

/**
 * The type of every tensor when quantizing to `f`, in llama-quantize's order. Tensors it does not quantize
 * (norms, biases, 1-D tensors) keep their type; a tensor already in its target type is copied.
 */
export function planQuantization(
  tensors: readonly QuantTensorIn[],
  info: QuantModelInfo,
  f: FileType,
  opts: PlanOptions = {},
): QuantTensorPlan[] {
  const ordered = quantizeOrder(tensors);
  const s: State = {
    nAttentionWv: ordered.filter((t) => /attn_(v|qkv|kv_b)\.weight/.test(t.name)).length,
    iAttentionWv: 0,
    iFfnDown: 0,
    hasOutput: ordered.some((t) => t.name === "output.weight"),
  };
  if (s.nAttentionWv !== 0 && s.nAttentionWv !== info.nLayers) {
    throw new RangeError(`${s.nAttentionWv} attention value tensors for ${info.nLayers} layers`);
  }
  const quantizedBase = GGML_TYPES[f.base].blockSize > 1;
  return ordered.map((t) => {
    if (!isQuantizable(t.name, t.shape)) return { ...t, target: t.type, requantize: false };
    const row = t.shape[t.shape.length - 1];
    let target: GGMLType | null = f.base;
    if (quantizedBase) target = opts.pure ? fallbackType(f.base, row) : tensorType(s, info, f, t.name, row);
    if (target === null) return { ...t, target: t.type, requantize: false };
    return { ...t, target, requantize: target !== t.type };
  });
}
