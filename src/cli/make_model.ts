/**
 * Write a GGUF with seeded random weights in the exact geometry of a real model (for benchmarks and
 * end-to-end tests): `deno task make-model --shape NAME --out FILE [--type TYPE] [--seed N] [--ctx N]
 * [--vocab-dir DIR] [--template-dir DIR]`. TYPE is any file type `quantize` writes (f32 by default; q4_k_m
 * etc. pick each tensor's type with llama-quantize's rules, as a real download has them). Shapes and vocabulary families: src/model/synthetic.ts
 * (real-model shapes carry a real byte-level BPE vocabulary, their special tokens at the real ids and the
 * family's chat template; `mid` and `tiny` a built-in SentencePiece one).
 *
 * Matrices and biases are normal with std 0.02, norms are 1, Llama 3 rope factors are computed. Tensors are
 * generated and streamed to disk one at a time; the write is atomic.
 */
import { parseArgs } from "node:util";
import { GGMLType } from "../model/types.ts";
import { fileTypeByName, fileTypeNames, planQuantization } from "../model/quant/mix.ts";
import { QuantizePool } from "../model/quant/pool.ts";
import { type GGUFKV, GGUFValueType } from "../model/gguf.ts";
import { type GGUFTensorDesc, writeGGUFFile } from "../model/gguf_writer.ts";
import {
  type FamilyPaths,
  headDimOf,
  llama3RopeFactors,
  type ModelShape,
  SHAPES,
  tokenizerMetadata,
} from "../model/synthetic.ts";

export { type ModelShape, SHAPES } from "../model/synthetic.ts";

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

/** Metadata (with GGUF types) of a synthetic model of shape `s`: architecture keys, then its vocabulary. */
export async function syntheticMetadata(
  name: string,
  s: ModelShape,
  fileType: number,
  paths: FamilyPaths = {},
): Promise<Record<string, GGUFKV>> {
  const u32 = (value: number): GGUFKV => ({ type: GGUFValueType.UINT32, value });
  const f32 = (value: number): GGUFKV => ({ type: GGUFValueType.FLOAT32, value });
  const str = (value: string): GGUFKV => ({ type: GGUFValueType.STRING, value });
  const a = s.arch, hd = headDimOf(s);
  const md: Record<string, GGUFKV> = {
    "general.architecture": str(a),
    "general.name": str(`synthetic-${name}`),
    "general.file_type": u32(fileType),
    [`${a}.context_length`]: u32(s.contextLength),
    [`${a}.embedding_length`]: u32(s.dim),
    [`${a}.block_count`]: u32(s.nLayers),
    [`${a}.feed_forward_length`]: u32(s.ffnDim),
    [`${a}.attention.head_count`]: u32(s.nHeads),
    [`${a}.attention.head_count_kv`]: u32(s.nKVHeads),
    [`${a}.attention.layer_norm_rms_epsilon`]: f32(s.normEps),
    [`${a}.rope.freq_base`]: f32(s.ropeTheta),
    [`${a}.rope.dimension_count`]: u32(hd),
    [`${a}.vocab_size`]: u32(s.vocabSize),
  };
  if (s.headDim !== undefined) {
    md[`${a}.attention.key_length`] = u32(hd);
    md[`${a}.attention.value_length`] = u32(hd);
  }
  return { ...md, ...await tokenizerMetadata(s, paths) };
}

/** Tensor list (row-major shapes) of a synthetic model; 1-D tensors (norms, biases, rope factors) are F32. */
export function syntheticTensors(s: ModelShape, type: GGMLType): GGUFTensorDesc[] {
  const hd = headDimOf(s);
  const q = s.nHeads * hd, kv = s.nKVHeads * hd;
  const m = (name: string, shape: number[]): GGUFTensorDesc => ({ name, type, shape });
  const v = (name: string, n: number): GGUFTensorDesc => ({ name, type: GGMLType.F32, shape: [n] });
  const out: GGUFTensorDesc[] = [m("token_embd.weight", [s.vocabSize, s.dim])];
  if (s.llama3Rope) out.push(v("rope_freqs.weight", hd / 2));
  for (let l = 0; l < s.nLayers; l++) {
    const p = `blk.${l}.`;
    out.push(v(`${p}attn_norm.weight`, s.dim), m(`${p}attn_q.weight`, [q, s.dim]));
    if (s.qkvBias) out.push(v(`${p}attn_q.bias`, q));
    out.push(m(`${p}attn_k.weight`, [kv, s.dim]));
    if (s.qkvBias) out.push(v(`${p}attn_k.bias`, kv));
    out.push(m(`${p}attn_v.weight`, [kv, s.dim]));
    if (s.qkvBias) out.push(v(`${p}attn_v.bias`, kv));
    if (s.qkNorm) out.push(v(`${p}attn_q_norm.weight`, hd), v(`${p}attn_k_norm.weight`, hd));
    out.push(
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

/** Seeded values of tensor `i`: normal(0, 0.02) matrices and biases, unit norms, computed rope factors. */
function syntheticValues(s: ModelShape, desc: GGUFTensorDesc, i: number, seed: number): Float32Array {
  if (desc.name === "rope_freqs.weight") return llama3RopeFactors(headDimOf(s), s.ropeTheta, s.llama3Rope!);
  const n = desc.shape.reduce((a, b) => a * b, 1);
  const x = new Float32Array(n);
  if (desc.shape.length === 1 && !desc.name.endsWith(".bias")) x.fill(1);
  else new Rng((seed * 1000003 + i * 7919 + 1) >>> 0).fillNormal(x, 0.02);
  return x;
}

export interface MakeModelOptions {
  shape: string;
  out: string;
  type?: string;
  seed?: number;
  ctx?: number;
  /** Where the vocabulary and chat-template fixtures are (default ../shared/fixtures/…). */
  paths?: FamilyPaths;
}

/** Generate and write a synthetic model; returns the file size and parameter count. */
export async function makeModel(opts: MakeModelOptions): Promise<{ bytes: number; params: number }> {
  const base = SHAPES[opts.shape];
  if (!base || !Object.hasOwn(SHAPES, opts.shape)) throw new RangeError(`unknown shape "${opts.shape}"`);
  const ft = fileTypeByName(opts.type ?? "f32");
  if (!ft) throw new RangeError(`unknown type "${opts.type}"`);
  const shape = { ...base, contextLength: opts.ctx ?? base.contextLength };
  const seed = opts.seed ?? 0;
  // each tensor's type as llama-quantize would choose it for an F32 original
  const info = { arch: shape.arch, nLayers: shape.nLayers, nHead: shape.nHeads, nHeadKV: shape.nKVHeads };
  const f32 = syntheticTensors(shape, GGMLType.F32);
  const typeOf = new Map(planQuantization(f32, info, ft).map((p) => [p.name, p.target]));
  const tensors = f32.map((t) => ({ ...t, type: typeOf.get(t.name)! }));
  let params = 0;
  for (const t of tensors) params += t.shape.reduce((a, b) => a * b, 1);
  const metadata = await syntheticMetadata(opts.shape, shape, ft.ftype, opts.paths);
  if (ft.base !== GGMLType.F32) {
    metadata["general.quantization_version"] = { type: GGUFValueType.UINT32, value: 2 };
  }
  const pool = new QuantizePool();
  try {
    const bytes = await writeGGUFFile(opts.out, { metadata, tensors }, (i, desc) => {
      const x = syntheticValues(shape, desc, i, seed);
      return desc.type === GGMLType.F32 ? new Uint8Array(x.buffer) : pool.quantize(desc.type, x);
    });
    return { bytes, params };
  } finally {
    pool.close();
  }
}

const USAGE = `usage: deno task make-model --shape ${Object.keys(SHAPES).join("|")} --out FILE ` +
  `[--type ${fileTypeNames().join("|")}] [--seed N] [--ctx N] [--vocab-dir DIR] [--template-dir DIR]`;

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
        "vocab-dir": { type: "string" },
        "template-dir": { type: "string" },
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
    if (!fileTypeByName(type)) throw new RangeError(`unknown --type "${values.type}"`);
    opts = {
      shape: values.shape,
      out: values.out,
      type,
      seed: intFlag("seed", values.seed, 0),
      ctx: intFlag("ctx", values.ctx, 1),
      paths: { vocabDir: values["vocab-dir"], templateDir: values["template-dir"] },
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
