/**
 * The reference backend: the whole llama forward pass in plain TypeScript loops over Float32Arrays, written
 * to be obviously correct (llama2.c style). Every other backend is checked against it.
 *
 * Weights of any supported type are dequantized to f32 once at construction. The KV cache is a
 * HostKVCache; attention runs over each layer's kept rows with their original positions.
 */
import {
  type Backend,
  type BackendOptions,
  checkBatch,
  type KVPrecision,
  type StepInput,
  type StepOutput,
} from "../backend.ts";
import { HostKVCache, type SequenceKV } from "../../kv/cache.ts";
import type { LayerWeights, ModelConfig, ModelWeights, Tensor } from "../../model/types.ts";
import { dequantize } from "../../model/ggml.ts";
import { applyRope, ropeFrequencies } from "./rope.ts";

interface F32Layer {
  attnNorm: Float32Array;
  wq: Float32Array;
  wk: Float32Array;
  wv: Float32Array;
  wo: Float32Array;
  bq?: Float32Array;
  bk?: Float32Array;
  bv?: Float32Array;
  ffnNorm: Float32Array;
  wGate: Float32Array;
  wUp: Float32Array;
  wDown: Float32Array;
}

function f32(t: Tensor): Float32Array {
  const n = t.shape.reduce((a, b) => a * b, 1);
  return dequantize(t.type, t.data, n);
}

/** out[r] = Σ_c w[r*cols + c] · x[c] for r < rows. */
export function matvec(
  out: Float32Array,
  w: Float32Array,
  x: Float32Array,
  rows: number,
  cols: number,
): void {
  for (let r = 0; r < rows; r++) {
    let s = 0;
    const base = r * cols;
    for (let c = 0; c < cols; c++) s += w[base + c] * x[c];
    out[r] = s;
  }
}

export function rmsnorm(out: Float32Array, x: Float32Array, w: Float32Array, eps: number): void {
  const n = x.length;
  let ss = 0;
  for (let i = 0; i < n; i++) ss += x[i] * x[i];
  const scale = 1 / Math.sqrt(ss / n + eps);
  for (let i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

export class TsBackend implements Backend {
  readonly name = "ts" as const;
  readonly config: ModelConfig;
  readonly description: string;
  readonly kvPrecision: KVPrecision;
  private readonly embd: Float32Array;
  private readonly out: Float32Array;
  private readonly outNorm: Float32Array;
  private readonly layers: F32Layer[];
  private readonly freqs: Float64Array;

  constructor(config: ModelConfig, weights: ModelWeights, opts: BackendOptions = {}) {
    this.config = config;
    this.kvPrecision = opts.kvPrecision ?? "f32";
    this.embd = f32(weights.tokenEmbd);
    this.out = weights.output === weights.tokenEmbd ? this.embd : f32(weights.output);
    this.outNorm = f32(weights.outputNorm);
    this.layers = weights.layers.map((l: LayerWeights) => ({
      attnNorm: f32(l.attnNorm),
      wq: f32(l.wq),
      wk: f32(l.wk),
      wv: f32(l.wv),
      wo: f32(l.wo),
      bq: l.bq && f32(l.bq),
      bk: l.bk && f32(l.bk),
      bv: l.bv && f32(l.bv),
      ffnNorm: f32(l.ffnNorm),
      wGate: f32(l.wGate),
      wUp: f32(l.wUp),
      wDown: f32(l.wDown),
    }));
    this.freqs = ropeFrequencies(config.headDim, config.ropeTheta);
    this.description =
      `TypeScript reference (f32 weights, ${this.kvPrecision} KV, ${config.nLayers} layers, dim ${config.dim})`;
  }

  createKV(): SequenceKV {
    const c = this.config;
    return new HostKVCache(
      { nLayers: c.nLayers, nKVHeads: c.nKVHeads, headDim: c.headDim },
      undefined,
      this.kvPrecision,
    );
  }

  forward(batch: StepInput[]): Promise<StepOutput[]> {
    try {
      checkBatch(
        batch,
        this,
        (kv) => kv instanceof HostKVCache && kv.live() && kv.precision === this.kvPrecision,
      );
      return Promise.resolve(batch.map((input) => this.forwardOne(input)));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  private forwardOne(input: StepInput): StepOutput {
    const kv = input.kv as HostKVCache;
    if (input.compact) kv.compact(input.compact); // the previous step's prune plan, before the new tokens
    const c = this.config;
    const { dim, nHeads, nKVHeads, headDim, ffnDim, vocabSize } = c;
    const T = input.tokens.length;
    const kvDim = nKVHeads * headDim;
    const qDim = nHeads * headDim;
    const groups = nHeads / nKVHeads;
    const x = new Float32Array(dim);
    const xb = new Float32Array(dim);
    const q = new Float32Array(qDim);
    const k = new Float32Array(kvDim);
    const v = new Float32Array(kvDim);
    const att = new Float32Array(qDim);
    const proj = new Float32Array(dim);
    const gate = new Float32Array(ffnDim);
    const up = new Float32Array(ffnDim);
    const nLogits = input.logits === "all" ? T : input.logits === "last" ? 1 : 0;
    const logits = new Float32Array(nLogits * vocabSize);
    const sreq = input.scores;
    const scoreAcc: Float64Array[] | undefined = sreq
      ? c.nLayers > 0 ? Array.from({ length: c.nLayers }, (_, l) => new Float64Array(kv.length(l) + T)) : []
      : undefined;
    const invSqrt = 1 / Math.sqrt(headDim);
    for (let l = 0; l < c.nLayers; l++) kv.reserve(l, T);

    for (let t = 0; t < T; t++) {
      const token = input.tokens[t];
      const pos = kv.nextPos;
      x.set(this.embd.subarray(token * dim, token * dim + dim));
      const weight = sreq && T - 1 - t < sreq.window ? Math.pow(sreq.decay, T - 1 - t) : 0;
      for (let l = 0; l < c.nLayers; l++) {
        const L = this.layers[l];
        rmsnorm(xb, x, L.attnNorm, c.normEps);
        matvec(q, L.wq, xb, qDim, dim);
        matvec(k, L.wk, xb, kvDim, dim);
        matvec(v, L.wv, xb, kvDim, dim);
        if (L.bq) { for (let i = 0; i < qDim; i++) q[i] += L.bq[i]; }
        if (L.bk) { for (let i = 0; i < kvDim; i++) k[i] += L.bk[i]; }
        if (L.bv) { for (let i = 0; i < kvDim; i++) v[i] += L.bv[i]; }
        applyRope(q, nHeads, headDim, pos, this.freqs, c.ropeStyle);
        applyRope(k, nKVHeads, headDim, pos, this.freqs, c.ropeStyle);
        kv.append(l, k, v, pos);

        const n = kv.length(l);
        const K = kv.k[l], V = kv.v[l];
        const p = new Float64Array(n);
        const acc = scoreAcc && weight > 0 ? scoreAcc[l] : undefined;
        for (let h = 0; h < nHeads; h++) {
          const kvh = Math.floor(h / groups);
          const qo = h * headDim;
          let max = -Infinity;
          for (let j = 0; j < n; j++) {
            const ko = j * kvDim + kvh * headDim;
            let s = 0;
            for (let d = 0; d < headDim; d++) s += q[qo + d] * K[ko + d];
            s *= invSqrt;
            p[j] = s;
            if (s > max) max = s;
          }
          let sum = 0;
          for (let j = 0; j < n; j++) {
            p[j] = Math.exp(p[j] - max);
            sum += p[j];
          }
          const out = att.subarray(qo, qo + headDim);
          out.fill(0);
          for (let j = 0; j < n; j++) {
            const pj = p[j] / sum;
            if (acc) acc[j] += weight * pj;
            const vo = j * kvDim + kvh * headDim;
            for (let d = 0; d < headDim; d++) out[d] += pj * V[vo + d];
          }
        }
        matvec(proj, L.wo, att, dim, qDim);
        for (let i = 0; i < dim; i++) x[i] += proj[i];

        rmsnorm(xb, x, L.ffnNorm, c.normEps);
        matvec(gate, L.wGate, xb, ffnDim, dim);
        matvec(up, L.wUp, xb, ffnDim, dim);
        for (let i = 0; i < ffnDim; i++) {
          const g = gate[i];
          gate[i] = (g / (1 + Math.exp(-g))) * up[i];
        }
        matvec(proj, L.wDown, gate, dim, ffnDim);
        for (let i = 0; i < dim; i++) x[i] += proj[i];
      }
      kv.nextPos = pos + 1;
      const row = input.logits === "all" ? t : input.logits === "last" && t === T - 1 ? 0 : -1;
      if (row >= 0) {
        rmsnorm(xb, x, this.outNorm, c.normEps);
        matvec(logits.subarray(row * vocabSize, (row + 1) * vocabSize), this.out, xb, vocabSize, dim);
      }
    }
    const out: StepOutput = { logits };
    if (scoreAcc) {
      out.scores = scoreAcc.map((a, l) => Float32Array.from(a.subarray(0, kv.length(l))));
    }
    return out;
  }

  dispose(): void {}
}

export function createTsBackend(
  config: ModelConfig,
  weights: ModelWeights,
  opts: BackendOptions = {},
): Backend {
  return new TsBackend(config, weights, opts);
}
