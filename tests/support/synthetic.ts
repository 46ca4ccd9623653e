/** Small in-memory models with random weights for the backend tests (both RoPE styles, biases, tying). */
import {
  GGMLType,
  type LayerWeights,
  type ModelConfig,
  type ModelWeights,
  type Tensor,
} from "../../src/model/types.ts";
import { quantize, quantizeQ4_0, quantizeQ8_0 } from "../../src/model/ggml.ts";

/** xorshift32: the same stream on every run. */
export class Rng {
  s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 1;
  }
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s / 0x100000000;
  }
  normal(): number {
    return Math.sqrt(-2 * Math.log(this.next() + 1e-12)) * Math.cos(2 * Math.PI * this.next());
  }
}

export function randomTokens(rng: Rng, n: number, vocab: number): number[] {
  return Array.from({ length: n }, () => Math.floor(rng.next() * vocab));
}

function f32Tensor(name: string, shape: number[], x: Float32Array): Tensor {
  return { name, type: GGMLType.F32, shape, data: new Uint8Array(x.buffer, x.byteOffset, x.byteLength) };
}

export interface SynthOptions {
  rope: "interleaved" | "half";
  bias: boolean;
  tied: boolean;
  seed: number;
}

/** dim 64, 3 layers, 4 query heads over 2 KV heads of 16, FFN 96, vocab 96; f32 weights. */
export function synthModel(opts: SynthOptions): { config: ModelConfig; weights: ModelWeights } {
  const config: ModelConfig = {
    arch: "llama",
    dim: 64,
    nLayers: 3,
    nHeads: 4,
    nKVHeads: 2,
    headDim: 16,
    ffnDim: 96,
    vocabSize: 96,
    contextLength: 256,
    normEps: 1e-5,
    ropeTheta: 10000,
    ropeStyle: opts.rope,
    bosId: 1,
    eosId: 2,
  };
  const rng = new Rng(opts.seed);
  const rand = (name: string, shape: number[], scale: number, offset = 0) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const x = new Float32Array(n);
    for (let i = 0; i < n; i++) x[i] = offset + scale * rng.normal();
    return f32Tensor(name, shape, x);
  };
  const { dim, nHeads, nKVHeads, headDim, ffnDim, vocabSize } = config;
  const qd = nHeads * headDim, kvd = nKVHeads * headDim;
  const layers: LayerWeights[] = [];
  for (let l = 0; l < config.nLayers; l++) {
    const s = 1 / Math.sqrt(dim);
    layers.push({
      attnNorm: rand(`l${l}.attn_norm`, [dim], 0.1, 1),
      wq: rand(`l${l}.wq`, [qd, dim], 3 * s),
      wk: rand(`l${l}.wk`, [kvd, dim], 3 * s),
      wv: rand(`l${l}.wv`, [kvd, dim], s),
      wo: rand(`l${l}.wo`, [dim, qd], s),
      bq: opts.bias ? rand(`l${l}.bq`, [qd], 0.5) : undefined,
      bk: opts.bias ? rand(`l${l}.bk`, [kvd], 0.5) : undefined,
      bv: opts.bias ? rand(`l${l}.bv`, [kvd], 0.5) : undefined,
      ffnNorm: rand(`l${l}.ffn_norm`, [dim], 0.1, 1),
      wGate: rand(`l${l}.w_gate`, [ffnDim, dim], s),
      wUp: rand(`l${l}.w_up`, [ffnDim, dim], s),
      wDown: rand(`l${l}.w_down`, [dim, ffnDim], 1 / Math.sqrt(ffnDim)),
    });
  }
  const tokenEmbd = rand("tok_embd", [vocabSize, dim], 1);
  const output = opts.tied ? tokenEmbd : rand("output", [vocabSize, dim], 1 / Math.sqrt(dim));
  return { config, weights: { tokenEmbd, layers, outputNorm: rand("out_norm", [dim], 0.1, 1), output } };
}

/** The same model with every matrix stored as `type` (F16, BF16, Q8_0, Q4_0 via the shared quantizers). */
export function requantize(w: ModelWeights, type: GGMLType): ModelWeights {
  if (type === GGMLType.F32) return w;
  const q = (t: Tensor): Tensor => {
    if (t.shape.length !== 2) return t;
    const x = new Float32Array(t.data.slice().buffer);
    const data = type === GGMLType.Q8_0
      ? quantizeQ8_0(x)
      : type === GGMLType.Q4_0
      ? quantizeQ4_0(x)
      : quantize(type, x);
    return { ...t, type, data };
  };
  const tokenEmbd = q(w.tokenEmbd);
  return {
    tokenEmbd,
    outputNorm: w.outputNorm,
    output: w.output === w.tokenEmbd ? tokenEmbd : q(w.output),
    layers: w.layers.map((L) => ({
      ...L,
      wq: q(L.wq),
      wk: q(L.wk),
      wv: q(L.wv),
      wo: q(L.wo),
      wGate: q(L.wGate),
      wUp: q(L.wUp),
      wDown: q(L.wDown),
    })),
  };
}
