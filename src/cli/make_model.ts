/**
 * Write a llama GGUF with seeded random weights in the real shapes of small models (for benchmarks and
 * tests): `deno task make-model --shape smollm2-135m|mid|tiny --out FILE [--type f32|f16|q8_0|q4_0]
 * [--seed N] [--ctx N]`.
 *
 * Matrices are normal with std 0.02, norms are 1. The file carries SentencePiece-style tokenizer metadata
 * (`tokenizer.ggml.model` = "llama": <unk>, <s>, </s>, the 256 byte tokens, then "▁"-prefixed pieces and
 * letters). Tensors are generated and streamed to disk one at a time; the write is atomic.
 */
import { parseArgs } from "node:util";
import { GGMLType } from "../model/types.ts";
import { quantize } from "../model/ggml.ts";
import { type GGUFKV, GGUFValueType } from "../model/gguf.ts";
import { type GGUFTensorDesc, writeGGUFFile } from "../model/gguf_writer.ts";

export interface ModelShape {
  nLayers: number;
  dim: number;
  nHeads: number;
  nKVHeads: number;
  ffnDim: number;
  vocabSize: number;
  contextLength: number;
  ropeTheta: number;
  normEps: number;
  /** Tied embeddings: no output.weight tensor. */
  tied: boolean;
}

export const SHAPES: Record<string, ModelShape> = {
  "smollm2-135m": {
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
  },
  mid: {
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
  },
  tiny: {
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
  },
};

/** Weight type per --type, with llama.cpp's LLAMA_FTYPE for general.file_type. */
export const WEIGHT_TYPES: Record<string, { type: GGMLType; fileType: number }> = {
  f32: { type: GGMLType.F32, fileType: 0 },
  f16: { type: GGMLType.F16, fileType: 1 },
  q8_0: { type: GGMLType.Q8_0, fileType: 7 },
  q4_0: { type: GGMLType.Q4_0, fileType: 2 },
};

/** A fast seeded PRNG (xoshiro128**) with a Box-Muller normal sampler. */
export class Rng {
  private s = new Uint32Array(4);
  constructor(seed: number) {
    // splitmix32 to spread the seed over the state
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
    if ((this.s[0] | this.s[1] | this.s[2] | this.s[3]) === 0) this.s[0] = 1;
  }
  nextU32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }
  /** Uniform in (0, 1). */
  uniform(): number {
    return (this.nextU32() + 0.5) / 4294967296;
  }
  /** Fill `out` with normal(0, std) samples. */
  fillNormal(out: Float32Array, std: number): void {
    const n = out.length;
    for (let i = 0; i < n; i += 2) {
      const r = std * Math.sqrt(-2 * Math.log(this.uniform()));
      const th = 2 * Math.PI * this.uniform();
      out[i] = r * Math.cos(th);
      if (i + 1 < n) out[i + 1] = r * Math.sin(th);
    }
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** SentencePiece-style vocabulary of exactly `n` tokens (n ≥ 300). */
export function buildVocab(n: number): { tokens: string[]; scores: number[]; types: number[] } {
  if (n < 300) throw new RangeError(`vocab size ${n} is too small (need at least 300)`);
  const tokens = ["<unk>", "<s>", "</s>"];
  const types = [2, 3, 3];
  const scores = [0, 0, 0];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(6);
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
    types.push(1);
    scores.push(-rank++);
  }
  return { tokens, scores, types };
}

/** Metadata (with GGUF types) of a synthetic llama model. */
export function syntheticMetadata(
  name: string,
  s: ModelShape,
  fileType: number,
): Record<string, GGUFKV> {
  const u32 = (value: number): GGUFKV => ({ type: GGUFValueType.UINT32, value });
  const f32 = (value: number): GGUFKV => ({ type: GGUFValueType.FLOAT32, value });
  const str = (value: string): GGUFKV => ({ type: GGUFValueType.STRING, value });
  const vocab = buildVocab(s.vocabSize);
  return {
    "general.architecture": str("llama"),
    "general.name": str(`synthetic-${name}`),
    "general.file_type": u32(fileType),
    "llama.context_length": u32(s.contextLength),
    "llama.embedding_length": u32(s.dim),
    "llama.block_count": u32(s.nLayers),
    "llama.feed_forward_length": u32(s.ffnDim),
    "llama.attention.head_count": u32(s.nHeads),
    "llama.attention.head_count_kv": u32(s.nKVHeads),
    "llama.attention.layer_norm_rms_epsilon": f32(s.normEps),
    "llama.rope.freq_base": f32(s.ropeTheta),
    "llama.rope.dimension_count": u32(s.dim / s.nHeads),
    "llama.vocab_size": u32(s.vocabSize),
    "tokenizer.ggml.model": str("llama"),
    "tokenizer.ggml.tokens": {
      type: GGUFValueType.ARRAY,
      value: { itemType: GGUFValueType.STRING, items: vocab.tokens },
    },
    "tokenizer.ggml.scores": {
      type: GGUFValueType.ARRAY,
      value: { itemType: GGUFValueType.FLOAT32, items: vocab.scores },
    },
    "tokenizer.ggml.token_type": {
      type: GGUFValueType.ARRAY,
      value: { itemType: GGUFValueType.INT32, items: vocab.types },
    },
    "tokenizer.ggml.unknown_token_id": u32(0),
    "tokenizer.ggml.bos_token_id": u32(1),
    "tokenizer.ggml.eos_token_id": u32(2),
    "tokenizer.ggml.add_bos_token": { type: GGUFValueType.BOOL, value: true },
  };
}

/** Tensor list (row-major shapes) of a llama model; 1-D norms are always F32. */
export function syntheticTensors(s: ModelShape, type: GGMLType): GGUFTensorDesc[] {
  const headDim = s.dim / s.nHeads;
  const q = s.nHeads * headDim, kv = s.nKVHeads * headDim;
  const m = (name: string, shape: number[]): GGUFTensorDesc => ({ name, type, shape });
  const v = (name: string, n: number): GGUFTensorDesc => ({ name, type: GGMLType.F32, shape: [n] });
  const out: GGUFTensorDesc[] = [m("token_embd.weight", [s.vocabSize, s.dim])];
  for (let l = 0; l < s.nLayers; l++) {
    const p = `blk.${l}.`;
    out.push(
      v(`${p}attn_norm.weight`, s.dim),
      m(`${p}attn_q.weight`, [q, s.dim]),
      m(`${p}attn_k.weight`, [kv, s.dim]),
      m(`${p}attn_v.weight`, [kv, s.dim]),
      m(`${p}attn_output.weight`, [s.dim, q]),
      v(`${p}ffn_norm.weight`, s.dim),
      m(`${p}ffn_gate.weight`, [s.ffnDim, s.dim]),
      m(`${p}ffn_up.weight`, [s.ffnDim, s.dim]),
      m(`${p}ffn_down.weight`, [s.dim, s.ffnDim]),
    );
  }
  out.push(v("output_norm.weight", s.dim));
  if (!s.tied) out.push(m("output.weight", [s.vocabSize, s.dim]));
  return out;
}

export interface MakeModelOptions {
  shape: string;
  out: string;
  type?: string;
  seed?: number;
  ctx?: number;
}

/** Generate and write a synthetic model; returns the file size and parameter count. */
export async function makeModel(opts: MakeModelOptions): Promise<{ bytes: number; params: number }> {
  const base = SHAPES[opts.shape];
  if (!base || !Object.hasOwn(SHAPES, opts.shape)) throw new RangeError(`unknown shape "${opts.shape}"`);
  const wt = WEIGHT_TYPES[opts.type ?? "f32"];
  if (!wt || !Object.hasOwn(WEIGHT_TYPES, opts.type ?? "f32")) {
    throw new RangeError(`unknown type "${opts.type}"`);
  }
  const shape = { ...base, contextLength: opts.ctx ?? base.contextLength };
  const seed = opts.seed ?? 0;
  const tensors = syntheticTensors(shape, wt.type);
  let params = 0;
  for (const t of tensors) params += t.shape.reduce((a, b) => a * b, 1);
  const bytes = await writeGGUFFile(
    opts.out,
    { metadata: syntheticMetadata(opts.shape, shape, wt.fileType), tensors },
    (i, desc) => {
      const n = desc.shape.reduce((a, b) => a * b, 1);
      const x = new Float32Array(n);
      if (desc.shape.length === 1) x.fill(1);
      else new Rng((seed * 1000003 + i * 7919 + 1) >>> 0).fillNormal(x, 0.02);
      return desc.type === GGMLType.F32 ? new Uint8Array(x.buffer) : quantize(desc.type, x);
    },
  );
  return { bytes, params };
}

const USAGE = `usage: deno task make-model --shape ${Object.keys(SHAPES).join("|")} --out FILE ` +
  `[--type f32|f16|q8_0|q4_0] [--seed N] [--ctx N]`;

function intFlag(name: string, v: string | undefined, min: number): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v) || Number(v) < min || !Number.isSafeInteger(Number(v))) {
    throw new RangeError(`--${name} must be an integer ≥ ${min}, got "${v}"`);
  }
  return Number(v);
}

async function main(args: string[]): Promise<number> {
  let opts: MakeModelOptions;
  try {
    const { values } = parseArgs({
      args,
      options: {
        shape: { type: "string" },
        out: { type: "string" },
        type: { type: "string" },
        seed: { type: "string" },
        ctx: { type: "string" },
        help: { type: "boolean" },
      },
      strict: true,
      allowPositionals: false,
    });
    if (values.help) {
      console.log(USAGE);
      return 0;
    }
    if (!values.shape || !values.out) throw new RangeError("--shape and --out are required");
    if (!Object.hasOwn(SHAPES, values.shape)) throw new RangeError(`unknown --shape "${values.shape}"`);
    const type = (values.type ?? "f32").toLowerCase();
    if (!Object.hasOwn(WEIGHT_TYPES, type)) throw new RangeError(`unknown --type "${values.type}"`);
    opts = {
      shape: values.shape,
      out: values.out,
      type,
      seed: intFlag("seed", values.seed, 0),
      ctx: intFlag("ctx", values.ctx, 1),
    };
  } catch (e) {
    console.error(`make-model: ${(e as Error).message.split("\n")[0]} (${USAGE})`);
    return 2;
  }
  try {
    const t0 = performance.now();
    const r = await makeModel(opts);
    console.log(
      `make-model: ${opts.shape} ${opts.type} ${(r.params / 1e6).toFixed(1)}M params, ` +
        `${(r.bytes / 1e6).toFixed(1)} MB -> ${opts.out} (${((performance.now() - t0) / 1000).toFixed(1)} s)`,
    );
    return 0;
  } catch (e) {
    console.error(`make-model: ${((e as Error).message ?? String(e)).split("\n")[0]}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
