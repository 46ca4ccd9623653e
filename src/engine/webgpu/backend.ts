/**
 * The WebGPU backend: the llama forward pass as WGSL compute shaders (`shaders/*.wgsl`).
 *
 * Weights and every sequence's KV cache live in GPU buffers across steps. One `forward` call records the
 * batch's prune plans (StepInput.compact: every compacted layer of every sequence, in place, from one keep
 * buffer) and then all layers of all sequences into one command encoder (one compute pass), submits once and
 * reads logits, attention scores and the new KV rows (for the host mirror) back with one mapAsync.
 *
 * Per layer: rmsnorm → fused q|k|v matmul (+bias) → rope → per sequence: KV append, attention logits with
 * causal masking by position, softmax, attention output, score sums → wo matmul (+residual) → rmsnorm →
 * fused gate|up matmul → silu·mul → down matmul (+residual). Final rmsnorm + output matmul run only on the
 * rows whose logits were requested.
 *
 * KV precision "f16" (`kvPrecision`): K/V values are rounded to f16 (ties to even, bit-exact with Math.f16round
 * and the ts reference's f16 cache) by the append kernel and stored as f16 when the adapter has shader-f16
 * (half the KV memory and attention bandwidth), else as the rounded values in f32 words.
 */
import type { ModelConfig, ModelWeights, Tensor } from "../../model/types.ts";
import { type Backend, checkBatch, type KVPrecision, type StepInput, type StepOutput } from "../backend.ts";
import { type Binding, F32, GpuKernels, type KVStorage, StepRecorder } from "./kernels.ts";
import { WebGPUKV } from "./kv.ts";
import { fromF16Bits } from "../../model/f16.ts";
import { destroyMatrix, type GpuMatrix, tensorToF32, uploadF32, uploadMatrix } from "./weights.ts";

export { WebGPUKV } from "./kv.ts";

export interface WebGPUBackendOptions {
  /**
   * KV element precision (default "f32"). "f16" rounds K/V to half precision as they enter the cache and stores
   * them as f16 when the device has shader-f16 (and `f16` is not false), else as f32 words.
   */
  kvPrecision?: KVPrecision;
  /** Use this adapter instead of requesting one. */
  adapter?: GPUAdapter;
  powerPreference?: GPUPowerPreference;
  /** Use shader-f16 when the adapter has it (default true): F16 weights and f16 KV elements stay f16. */
  f16?: boolean;
  /** Mirror each KV cache on the host so `toHost()` is synchronous (default true). */
  hostMirror?: boolean;
  /** Split weight matrices into row chunks of at most this many bytes (default: the device limit). */
  maxWeightBinding?: number;
  /** Use the fused one-workgroup attention kernel for one-token (decode) steps (default false: it is ~5× slower on lavapipe, whose workgroup barriers are costly; meant for real GPUs). */
  fusedDecode?: boolean;
  /** Bytes of attention-probability scratch per dispatch chunk (default 64 MiB; prefill is chunked to fit). */
  attScratchBytes?: number;
}

interface LayerBuffers {
  attnNorm: GPUBuffer;
  ffnNorm: GPUBuffer;
  qkv: GpuMatrix;
  qkvBias: GPUBuffer | null;
  wo: GpuMatrix;
  gateUp: GpuMatrix;
  down: GpuMatrix;
}

/** Default bytes of attention-probability scratch per dispatch chunk. */
const ATT_SCRATCH_CAP = 64 << 20;

/** Whether WebGPU is usable here; returns the reason when it is not. */
export async function webgpuAvailable(): Promise<
  { ok: true; adapter: GPUAdapter } | { ok: false; reason: string }
> {
  if (typeof navigator === "undefined" || !("gpu" in navigator) || !navigator.gpu) {
    return { ok: false, reason: "navigator.gpu is missing (enable Deno's unstable webgpu feature)" };
  }
  let adapter: GPUAdapter | null = null;
  try {
    adapter = await navigator.gpu.requestAdapter();
  } catch (e) {
    return { ok: false, reason: `requestAdapter failed: ${(e as Error).message}` };
  }
  if (!adapter) {
    return {
      ok: false,
      reason:
        "no WebGPU adapter (no GPU driver; on Linux install mesa-vulkan-drivers for the lavapipe CPU driver)",
    };
  }
  return { ok: true, adapter };
}

/** Open a device and upload the model's weights. Throws a clear error when there is no adapter. */
export async function openWebGPUBackend(
  config: ModelConfig,
  weights: ModelWeights,
  opts: WebGPUBackendOptions = {},
): Promise<WebGPUBackend> {
  const kvPrecision = opts.kvPrecision ?? "f32";
  if (kvPrecision !== "f32" && kvPrecision !== "f16") {
    throw new Error(`webgpu backend: unknown kvPrecision "${kvPrecision}" (f32 or f16)`);
  }
  let adapter = opts.adapter ?? null;
  if (!adapter) {
    if (typeof navigator === "undefined" || !navigator.gpu) {
      throw new Error("webgpu: navigator.gpu is missing (run Deno with --unstable-webgpu)");
    }
    adapter = await navigator.gpu.requestAdapter({ powerPreference: opts.powerPreference });
    if (!adapter) {
      throw new Error(
        "webgpu: no GPU adapter found (no GPU driver; on Linux install mesa-vulkan-drivers for the lavapipe CPU driver)",
      );
    }
  }
  const f16 = (opts.f16 ?? true) && adapter.features.has("shader-f16");
  const device = await adapter.requestDevice({
    requiredFeatures: f16 ? ["shader-f16"] : [],
    requiredLimits: {
      maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
      maxBufferSize: adapter.limits.maxBufferSize,
      maxStorageBuffersPerShaderStage: Math.min(8, adapter.limits.maxStorageBuffersPerShaderStage),
    },
  });
  const kernels = await GpuKernels.load(device, f16);
  const info = adapter.info;
  const name = info?.description || info?.device || info?.vendor || "unknown adapter";
  return new WebGPUBackend(
    config,
    weights,
    kernels,
    `${name}${f16 ? ", shader-f16" : ""}`,
    opts,
  );
}

function checkConfig(c: ModelConfig, w: ModelWeights): void {
  const bad = (m: string) => {
    throw new Error(`webgpu: bad model config: ${m}`);
  };
  if (c.headDim % 2 !== 0) bad(`headDim ${c.headDim} must be even`);
  if (c.nHeads % c.nKVHeads !== 0) bad(`nHeads ${c.nHeads} not a multiple of nKVHeads ${c.nKVHeads}`);
  if (w.layers.length !== c.nLayers) bad(`${w.layers.length} layer weights for nLayers ${c.nLayers}`);
  const expect = (t: Tensor, shape: number[]) => {
    const n = t.shape.reduce((a, b) => a * b, 1);
    const m = shape.reduce((a, b) => a * b, 1);
    if (n !== m || t.shape[t.shape.length - 1] !== shape[shape.length - 1]) {
      bad(`tensor ${t.name} has shape [${t.shape}], expected [${shape}]`);
    }
  };
  const q = c.nHeads * c.headDim, kv = c.nKVHeads * c.headDim;
  expect(w.tokenEmbd, [c.vocabSize, c.dim]);
  expect(w.output, [c.vocabSize, c.dim]);
  expect(w.outputNorm, [c.dim]);
  for (const l of w.layers) {
    expect(l.attnNorm, [c.dim]);
    expect(l.ffnNorm, [c.dim]);
    expect(l.wq, [q, c.dim]);
    expect(l.wk, [kv, c.dim]);
    expect(l.wv, [kv, c.dim]);
    expect(l.wo, [c.dim, q]);
    expect(l.wGate, [c.ffnDim, c.dim]);
    expect(l.wUp, [c.ffnDim, c.dim]);
    expect(l.wDown, [c.dim, c.ffnDim]);
  }
}

/** A storage buffer that grows (geometrically) to the requested size. */
class Scratch {
  buf: GPUBuffer | null = null;
  constructor(
    private readonly device: GPUDevice,
    private readonly label: string,
    private readonly usage: number,
    private readonly max: number,
  ) {}
  get(bytes: number): GPUBuffer {
    bytes = Math.max(16, Math.ceil(bytes / 4) * 4);
    if (bytes > this.max) {
      throw new Error(
        `webgpu: ${this.label} needs ${bytes} B, above the device's max binding (${this.max} B)`,
      );
    }
    if (this.buf && this.buf.size >= bytes) return this.buf;
    this.buf?.destroy();
    const size = Math.min(this.max, Math.max(bytes, this.buf ? this.buf.size * 2 : 0));
    this.buf = this.device.createBuffer({
      label: this.label,
      size: Math.ceil(size / 4) * 4,
      usage: this.usage,
    });
    return this.buf;
  }
  destroy(): void {
    this.buf?.destroy();
    this.buf = null;
  }
}

interface SeqPlan {
  kv: WebGPUKV;
  input: StepInput;
  t: number;
  row: number;
  pos0: number;
  /** Per layer rows before the step's tokens (after its prune plan). */
  len0: number[];
  /** Per layer where the prune plan's keep list sits in the step's keep buffer (-1: no dispatch). */
  keepAt: number[] | null;
  logitRow: number;
  logitRows: number;
  scoreOff: number[];
}

export class WebGPUBackend implements Backend {
  readonly name = "webgpu" as const;
  readonly config: ModelConfig;
  readonly description: string;
  readonly kvPrecision: KVPrecision;
  /** How this backend's caches store K/V on the GPU (f16 precision: "f16" with shader-f16, else "f32r"). */
  readonly kvStorage: KVStorage;
  readonly kernels: GpuKernels;
  readonly hostMirror: boolean;
  /** Bytes of weights on the GPU. */
  readonly weightBytes: number;
  private readonly device: GPUDevice;
  private readonly embd: GpuMatrix;
  private readonly output: GpuMatrix;
  private readonly outputNorm: GPUBuffer;
  private readonly layers: LayerBuffers[] = [];
  private readonly dummy: GPUBuffer;
  private readonly scratch: Record<string, Scratch> = {};
  private staging: GPUBuffer | null = null;
  private chain: Promise<unknown> = Promise.resolve();
  private disposed = false;
  private lost: string | null = null;
  private readonly attScratch: number;
  private readonly fusedDecode: boolean;

  constructor(
    config: ModelConfig,
    weights: ModelWeights,
    kernels: GpuKernels,
    adapterName: string,
    opts: WebGPUBackendOptions = {},
  ) {
    checkConfig(config, weights);
    this.config = { ...config };
    this.kernels = kernels;
    this.device = kernels.device;
    this.hostMirror = opts.hostMirror ?? true;
    this.fusedDecode = opts.fusedDecode ?? false;
    this.kvPrecision = opts.kvPrecision ?? "f32";
    this.kvStorage = this.kvPrecision === "f32" ? "f32" : kernels.f16 ? "f16" : "f32r";
    this.attScratch = Math.max(64, Math.min(opts.attScratchBytes ?? ATT_SCRATCH_CAP, kernels.maxBinding));
    const d = this.device;
    d.lost.then((info) => {
      this.lost = `webgpu: device lost: ${info.message || info.reason}`;
    });
    const up = {
      f16: kernels.f16,
      maxBinding: Math.min(kernels.maxBinding, opts.maxWeightBinding ?? Infinity),
    };
    this.embd = uploadMatrix(d, "token_embd", [weights.tokenEmbd], up);
    this.output = weights.output === weights.tokenEmbd
      ? this.embd
      : uploadMatrix(d, "output", [weights.output], up);
    this.outputNorm = uploadF32(d, "output_norm", tensorToF32(weights.outputNorm));
    const c = config;
    const q = c.nHeads * c.headDim, kv = c.nKVHeads * c.headDim;
    weights.layers.forEach((lw, i) => {
      let qkvBias: GPUBuffer | null = null;
      if (lw.bq || lw.bk || lw.bv) {
        const b = new Float32Array(q + 2 * kv);
        if (lw.bq) b.set(tensorToF32(lw.bq), 0);
        if (lw.bk) b.set(tensorToF32(lw.bk), q);
        if (lw.bv) b.set(tensorToF32(lw.bv), q + kv);
        qkvBias = uploadF32(d, `L${i} qkv bias`, b);
      }
      this.layers.push({
        attnNorm: uploadF32(d, `L${i} attn_norm`, tensorToF32(lw.attnNorm)),
        ffnNorm: uploadF32(d, `L${i} ffn_norm`, tensorToF32(lw.ffnNorm)),
        qkv: uploadMatrix(d, `L${i} qkv`, [lw.wq, lw.wk, lw.wv], up),
        qkvBias,
        wo: uploadMatrix(d, `L${i} wo`, [lw.wo], up),
        gateUp: uploadMatrix(d, `L${i} gate_up`, [lw.wGate, lw.wUp], up),
        down: uploadMatrix(d, `L${i} down`, [lw.wDown], up),
      });
    });
    this.dummy = d.createBuffer({ label: "dummy", size: 16, usage: GPUBufferUsage.STORAGE });
    const mats = [this.embd, ...(this.output === this.embd ? [] : [this.output])];
    for (const l of this.layers) mats.push(l.qkv, l.wo, l.gateUp, l.down);
    this.weightBytes = mats.reduce((a, m) => a + m.bytes, 0);
    const types = [...new Set(mats.map((m) => m.type))].join("/");
    this.description = `webgpu (${adapterName}; weights ${types}, ${
      (this.weightBytes / 1e6).toFixed(2)
    } MB; KV ${this.kvPrecision}${this.kvStorage === "f32r" ? " in f32 words" : ""})`;
    const storage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    for (
      const n of [
        "tok",
        "map",
        "cs",
        "wt",
        "x",
        "xb",
        "qkv",
        "ao",
        "hb",
        "hb2",
        "xf",
        "logits",
        "scores",
        "att",
        "keep",
      ]
    ) {
      this.scratch[n] = new Scratch(d, n, storage, kernels.maxBinding);
    }
  }

  createKV(): WebGPUKV {
    this.checkAlive();
    const c = this.config;
    return new WebGPUKV(
      this.kernels,
      { nLayers: c.nLayers, nKVHeads: c.nKVHeads, headDim: c.headDim },
      this.hostMirror,
      this.kvPrecision,
    );
  }

  private checkAlive(): void {
    if (this.disposed) throw new Error("webgpu: backend was disposed");
    if (this.lost) throw new Error(this.lost);
  }

  forward(batch: StepInput[]): Promise<StepOutput[]> {
    const run = this.chain.then(() => this.forwardNow(batch));
    this.chain = run.catch(() => {});
    return run;
  }

  private validate(batch: StepInput[]): void {
    checkBatch(batch, this, (kv) => kv instanceof WebGPUKV && kv.kernels === this.kernels && kv.live());
    for (const [i, inp] of batch.entries()) {
      if ((inp.kv as WebGPUKV).busy) {
        throw new Error(`webgpu forward: batch[${i}].kv is in use by another step`);
      }
    }
  }

  private async forwardNow(batch: StepInput[]): Promise<StepOutput[]> {
    this.checkAlive();
    this.validate(batch);
    if (batch.length === 0) return [];
    const c = this.config;
    const k = this.kernels;
    const device = this.device;
    const nL = c.nLayers, nH = c.nHeads, hd = c.headDim, hh = hd / 2;
    const qDim = nH * hd, kvDim = c.nKVHeads * hd, qkvDim = qDim + 2 * kvDim;
    const group = nH / c.nKVHeads;

    // ---- plan rows, logits rows, score slots
    const plans: SeqPlan[] = [];
    let N = 0, M = 0, S = 0, K = 0;
    for (const input of batch) {
      const kv = input.kv as WebGPUKV;
      const t = input.tokens.length;
      const len0 = Array.from(kv.index.len, (n, l) => input.compact?.[l]?.length ?? n);
      let keepAt: number[] | null = null;
      if (input.compact) ({ offsets: keepAt, end: K } = WebGPUKV.keepOffsets(input.compact, K));
      const logitRows = input.logits === "all" ? t : input.logits === "last" ? 1 : 0;
      const scoreOff: number[] = [];
      if (input.scores) {
        for (let l = 0; l < nL; l++) {
          scoreOff.push(S);
          S += len0[l] + t;
        }
      }
      plans.push({ kv, input, t, row: N, pos0: kv.nextPos, len0, keepAt, logitRow: M, logitRows, scoreOff });
      N += t;
      M += logitRows;
    }

    // ---- host-side step inputs: tokens, logits row map, rope cos/sin (f64), score weights
    const tok = new Uint32Array(N);
    const map = new Uint32Array(Math.max(1, M));
    const cs = new Float32Array(N * hh * 2);
    const wt = new Float32Array(N);
    const invFreq = new Float64Array(hh);
    for (let i = 0; i < hh; i++) invFreq[i] = 1 / Math.pow(c.ropeTheta, (2 * i) / hd);
    for (const p of plans) {
      const sc = p.input.scores;
      for (let t = 0; t < p.t; t++) {
        const r = p.row + t;
        tok[r] = p.input.tokens[t];
        const pos = p.pos0 + t;
        for (let i = 0; i < hh; i++) {
          const a = pos * invFreq[i];
          cs[(r * hh + i) * 2] = Math.cos(a);
          cs[(r * hh + i) * 2 + 1] = Math.sin(a);
        }
        if (sc && t >= p.t - sc.window) wt[r] = Math.pow(sc.decay, p.t - 1 - t);
      }
      for (let i = 0; i < p.logitRows; i++) map[p.logitRow + i] = p.row + p.t - p.logitRows + i;
    }

    // ---- buffers
    const sb = this.scratch;
    const tokBuf = sb.tok.get(N * 4), mapBuf = sb.map.get(map.byteLength);
    const csBuf = sb.cs.get(cs.byteLength), wtBuf = sb.wt.get(N * 4);
    const x = sb.x.get(N * c.dim * 4), xb = sb.xb.get(N * c.dim * 4);
    const qkv = sb.qkv.get(N * qkvDim * 4), ao = sb.ao.get(N * qDim * 4);
    const hb = sb.hb.get(N * 2 * c.ffnDim * 4), hb2 = sb.hb2.get(N * c.ffnDim * 4);
    const xf = sb.xf.get(Math.max(1, M) * c.dim * 4);
    const logits = sb.logits.get(Math.max(1, M) * c.vocabSize * 4);
    const scores = sb.scores.get(Math.max(1, S) * 4);
    // attention scratch: query chunks sized so tq × nH × L fits
    const attCap = Math.floor(this.attScratch / 4);
    let attNeed = 1;
    const chunkOf = (L: number) => Math.max(1, Math.floor(attCap / (nH * L)));
    for (const p of plans) {
      for (let l = 0; l < nL; l++) {
        const L = p.len0[l] + p.t;
        attNeed = Math.max(attNeed, Math.min(p.t, chunkOf(L)) * nH * L);
      }
    }
    const att = sb.att.get(attNeed * 4);
    // every prune plan of the batch: one keep buffer, one dispatch per compacted layer, in this step's pass
    const keep = new Uint32Array(Math.max(1, K));
    for (const p of plans) if (p.keepAt) WebGPUKV.writeKeep(p.input.compact!, p.keepAt, keep);
    const keepBuf = sb.keep.get(keep.byteLength);
    const q = device.queue;
    if (K > 0) q.writeBuffer(keepBuf, 0, keep);
    q.writeBuffer(tokBuf, 0, tok);
    q.writeBuffer(mapBuf, 0, map);
    q.writeBuffer(csBuf, 0, cs);
    q.writeBuffer(wtBuf, 0, wt);

    const encoder = device.createCommandEncoder({ label: "forward" });
    const retired: GPUBuffer[] = [];
    for (const p of plans) retired.push(...p.kv.reserve(encoder, p.t, p.input.compact));

    // ---- record all dispatches: the prune plans first, then the forward pass
    const rec = new StepRecorder(k);
    for (const p of plans) if (p.keepAt) p.kv.recordCompact(rec, p.input.compact!, keepBuf, p.keepAt);
    const matmul = (
      m: GpuMatrix,
      X: GPUBuffer,
      Y: GPUBuffer,
      n: number,
      accumulate: boolean,
      bias: GPUBuffer | null,
    ) => {
      const pipe = k.pipeline("matmul", m.type);
      for (const ch of m.chunks) {
        const tiles = Math.ceil(n / 8);
        rec.threads(pipe, ch.rows * tiles, [ch.buffer, "P", X, Y, bias ?? this.dummy], [
          n,
          m.cols,
          ch.rows,
          m.rows,
          ch.row0,
          accumulate ? 1 : 0,
          bias ? 1 : 0,
          m.cols,
        ]);
      }
    };
    const rmsnorm = (X: GPUBuffer, w: GPUBuffer, Y: GPUBuffer, rows: number, useMap: boolean) => {
      rec.threads(k.pipeline("rmsnorm"), rows, ["P", X, w, Y, mapBuf], [
        rows,
        c.dim,
        new F32(c.normEps),
        useMap ? 1 : 0,
      ]);
    };

    const embPipe = k.pipeline("embedding", this.embd.type);
    for (const ch of this.embd.chunks) {
      rec.threads(embPipe, N * c.dim, [ch.buffer, "P", tokBuf, x], [N, c.dim, ch.row0, ch.row0 + ch.rows]);
    }
    const scale = new F32(1 / Math.sqrt(hd));
    const kvs = this.kvStorage;
    for (let l = 0; l < nL; l++) {
      const lb = this.layers[l];
      rmsnorm(x, lb.attnNorm, xb, N, false);
      matmul(lb.qkv, xb, qkv, N, false, lb.qkvBias);
      rec.threads(k.pipeline("rope"), N * (nH + c.nKVHeads) * hh, ["P", qkv, csBuf], [
        N,
        qkvDim,
        nH + c.nKVHeads,
        hd,
        c.ropeStyle === "half" ? 1 : 0,
      ]);
      for (const p of plans) {
        const kv = p.kv;
        const L = p.len0[l] + p.t;
        const K = kv.kBuf[l], Vb = kv.vBuf[l], P = kv.pBuf[l];
        rec.threads(k.pipeline("kv_append", kvs), (p.t * kvDim) / 2, ["P", qkv, K, Vb, P], [
          p.t,
          kvDim,
          qkvDim,
          qDim,
          p.row,
          p.len0[l],
          p.pos0,
          0,
        ]);
        if (p.t === 1 && this.fusedDecode) {
          // decode: one fused dispatch (logits, softmax, output, scores)
          rec.groups(k.pipeline("attn_decode", kvs), 1, ["P", qkv, K, Vb, P, att, ao, wtBuf, scores], [
            nH,
            hd,
            kvDim,
            L,
            p.row,
            qkvDim,
            group,
            p.pos0,
            scale,
            p.row,
            p.row,
            p.input.scores ? p.scoreOff[l] : 0,
            p.input.scores ? 1 : 0,
          ]);
          continue;
        }
        const chunk = chunkOf(L);
        for (let t0 = 0; t0 < p.t; t0 += chunk) {
          const tq = Math.min(chunk, p.t - t0);
          const attB: Binding[] = ["P", qkv, K, P, att];
          rec.threads(k.pipeline("attn_scores", kvs), tq * nH * L, attB, [
            tq,
            nH,
            hd,
            kvDim,
            L,
            p.row + t0,
            qkvDim,
            group,
            p.pos0 + t0,
            scale,
          ]);
          rec.threads(k.pipeline("softmax"), tq * nH, ["P", att], [tq * nH, L]);
          rec.threads(k.pipeline("attn_out", kvs), tq * nH * hd, ["P", att, Vb, ao], [
            tq,
            nH,
            hd,
            kvDim,
            L,
            p.row + t0,
            group,
            0,
          ]);
          if (p.input.scores) {
            rec.threads(k.pipeline("attn_score_sum"), L, ["P", att, wtBuf, scores], [
              tq,
              nH,
              L,
              p.row + t0,
              p.scoreOff[l],
              t0 > 0 ? 1 : 0,
            ]);
          }
        }
      }
      matmul(lb.wo, ao, x, N, true, null);
      rmsnorm(x, lb.ffnNorm, xb, N, false);
      matmul(lb.gateUp, xb, hb, N, false, null);
      rec.threads(k.pipeline("silu_mul"), N * c.ffnDim, ["P", hb, hb2], [N, c.ffnDim]);
      matmul(lb.down, hb2, x, N, true, null);
    }
    if (M > 0) {
      rmsnorm(x, this.outputNorm, xf, M, true);
      matmul(this.output, xf, logits, M, false, null);
    }

    // ---- readback layout: logits | scores (f32) | new KV rows as stored (K then V per layer per sequence)
    const logitFloats = M * c.vocabSize;
    const eb = this.kvStorage === "f16" ? 2 : 4;
    let mirrorElems = 0;
    if (this.hostMirror) { for (const p of plans) mirrorElems += nL * 2 * p.t * kvDim; }
    const head = (logitFloats + S) * 4;
    const total = head + mirrorElems * eb; // bytes; kvDim is even, so every part is a multiple of 4

    device.pushErrorScope("validation");
    device.pushErrorScope("out-of-memory");
    rec.encode(encoder);
    let staging: GPUBuffer | null = null;
    if (total > 0) {
      staging = this.stagingBuffer(total);
      if (logitFloats > 0) encoder.copyBufferToBuffer(logits, 0, staging, 0, logitFloats * 4);
      if (S > 0) encoder.copyBufferToBuffer(scores, 0, staging, logitFloats * 4, S * 4);
      let off = head;
      if (this.hostMirror) {
        for (const p of plans) {
          for (let l = 0; l < nL; l++) {
            const bytes = p.t * kvDim * eb;
            encoder.copyBufferToBuffer(p.kv.kBuf[l], p.len0[l] * kvDim * eb, staging, off, bytes);
            off += bytes;
            encoder.copyBufferToBuffer(p.kv.vBuf[l], p.len0[l] * kvDim * eb, staging, off, bytes);
            off += bytes;
          }
        }
      }
    }
    device.queue.submit([encoder.finish()]);
    rec.release();
    for (const b of retired) b.destroy();
    for (const p of plans) if (p.input.compact) p.kv.commitPlan(p.input.compact);
    for (const p of plans) p.kv.busy = true;
    let data: Float32Array | null = null;
    let rows: Float32Array | null = null;
    try {
      const oom = device.popErrorScope();
      const val = device.popErrorScope();
      if (staging) await staging.mapAsync(GPUMapMode.READ, 0, total);
      const errs = [await oom, await val].filter((e) => e);
      if (errs.length) throw new Error(`webgpu forward: ${errs.map((e) => e!.message).join("; ")}`);
      if (staging) {
        const buf = staging.getMappedRange(0, total).slice(0);
        staging.unmap();
        data = new Float32Array(buf, 0, head / 4);
        if (mirrorElems > 0) {
          rows = eb === 2
            ? fromF16Bits(new Uint16Array(buf, head, mirrorElems))
            : new Float32Array(buf, head, mirrorElems);
        }
      }
    } finally {
      for (const p of plans) p.kv.busy = false;
    }
    if (this.lost) throw new Error(this.lost);

    // ---- outputs and cache bookkeeping
    const out: StepOutput[] = [];
    let mirrorOff = 0;
    for (const p of plans) {
      const logitsOut = data && p.logitRows > 0
        ? data.slice(p.logitRow * c.vocabSize, (p.logitRow + p.logitRows) * c.vocabSize)
        : new Float32Array(0);
      const o: StepOutput = { logits: logitsOut };
      if (p.input.scores && data) {
        o.scores = p.scoreOff.map((s, l) => data!.slice(logitFloats + s, logitFloats + s + p.len0[l] + p.t));
      }
      p.kv.commitAppend(p.t, rows, mirrorOff);
      if (this.hostMirror) mirrorOff += nL * 2 * p.t * kvDim;
      out.push(o);
    }
    return out;
  }

  private stagingBuffer(bytes: number): GPUBuffer {
    if (this.staging && this.staging.size >= bytes) return this.staging;
    this.staging?.destroy();
    const size = Math.max(bytes, this.staging ? this.staging.size * 2 : 0);
    this.staging = this.device.createBuffer({
      label: "readback",
      size: Math.ceil(size / 4) * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    return this.staging;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const mats = new Set<GpuMatrix>([this.embd, this.output]);
    for (const l of this.layers) {
      mats.add(l.qkv).add(l.wo).add(l.gateUp).add(l.down);
      l.attnNorm.destroy();
      l.ffnNorm.destroy();
      l.qkvBias?.destroy();
    }
    for (const m of mats) destroyMatrix(m);
    this.outputNorm.destroy();
    this.dummy.destroy();
    for (const s of Object.values(this.scratch)) s.destroy();
    this.staging?.destroy();
    this.device.destroy();
  }
}
