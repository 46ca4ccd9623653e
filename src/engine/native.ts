/**
 * The native backends: a library implementing native/lethe.h (C++ CPU or CUDA), loaded with Deno.dlopen.
 *
 * `openNativeBackend(config, weights, { lib: "cpu" })` loads native/build/liblethe_cpu.so (build it with
 * `deno task build:native`); `{ lib: "cuda" }` loads liblethe_cuda.so; `{ path }` any library with the same
 * ABI. The library owns the weights (copied in at open) and the KV memory (`NativeKV`, whose lengths and
 * positions the shared host-side index mirrors); a step's prune plans go to lethe_forward with it.
 *
 * The dlopen'd library is never closed: with OpenMP worker threads alive, Deno crashes at exit if it is.
 */
import { fileURLToPath } from "node:url";
import {
  type Backend,
  type BackendName,
  checkBatch,
  type KVPrecision,
  type StepInput,
  type StepOutput,
} from "./backend.ts";
import { HostKVCache, type SequenceKV } from "../kv/cache.ts";
import { checkShape, KVIndex, type KVShape, type PrunePlan } from "../kv/kv_index.ts";
import { GGMLType, type ModelConfig, type ModelWeights, type Tensor } from "../model/types.ts";
import { dequantize } from "../model/ggml.ts";

/** lethe_forward(model, n_seq, kvs, keep_len, keep_rows, tokens, n_tokens, start_pos, logits_mode, logits_out,
 * score_decay, score_window, scores_out) — see native/lethe.h. */
const FORWARD_PARAMS = [
  "pointer",
  "i32",
  "buffer",
  "buffer",
  "buffer",
  "buffer",
  "buffer",
  "buffer",
  "buffer",
  "buffer",
  "buffer",
  "buffer",
  "buffer",
] as const;

/** The lethe.h functions (ABI 2) as Deno.dlopen symbols. */
export const LETHE_SYMBOLS = {
  lethe_model_create: { parameters: ["buffer"], result: "pointer" },
  lethe_model_set_tensor: {
    parameters: ["pointer", "i32", "i32", "i32", "buffer", "i64", "i64"],
    result: "i32",
  },
  lethe_model_free: { parameters: ["pointer"], result: "void" },
  lethe_kv_create: { parameters: ["pointer"], result: "pointer" },
  lethe_kv_free: { parameters: ["pointer"], result: "void" },
  lethe_kv_len: { parameters: ["pointer", "i32"], result: "i32" },
  lethe_kv_compact: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  lethe_kv_read: { parameters: ["pointer", "i32", "buffer", "buffer", "buffer"], result: "i32" },
  lethe_kv_write: { parameters: ["pointer", "i32", "buffer", "buffer", "buffer", "i32"], result: "i32" },
  lethe_kv_bytes: { parameters: ["pointer"], result: "i64" },
  lethe_forward: {
    parameters: FORWARD_PARAMS,
    result: "i32",
  },
  /** The same function run on a worker thread (returns a Promise): used for steps that take a while. */
  lethe_forward_async: {
    name: "lethe_forward",
    parameters: FORWARD_PARAMS,
    result: "i32",
    nonblocking: true,
  },
  lethe_last_error: { parameters: [], result: "pointer" },
  lethe_device_count: { parameters: [], result: "i32" },
  lethe_backend_info: { parameters: [], result: "pointer" },
  lethe_abi_version: { parameters: [], result: "i32" },
} as const;

type LetheLib = Deno.DynamicLibrary<typeof LETHE_SYMBOLS>["symbols"];

/** Tensor kinds of lethe.h. */
const KIND = {
  tokEmbd: 0,
  attnNorm: 1,
  wq: 2,
  wk: 3,
  wv: 4,
  wo: 5,
  bq: 6,
  bk: 7,
  bv: 8,
  ffnNorm: 9,
  wGate: 10,
  wUp: 11,
  wDown: 12,
  outNorm: 13,
  output: 14,
} as const;

/** Weight types the libraries take as they are; others are dequantized to F32 first. */
const NATIVE_TYPES = new Set<number>([
  GGMLType.F32,
  GGMLType.F16,
  GGMLType.Q4_0,
  GGMLType.Q8_0,
  GGMLType.BF16,
]);

/** The lethe.h ABI version this binding speaks (lethe_abi_version() of the library must match). */
export const LETHE_ABI_VERSION = 2;

/** Multiply-adds per step above which forward runs on a worker thread (keeps the event loop responsive). */
const ASYNC_WORK = 4e6;

export type NativeLibKind = "cpu" | "cuda";

export interface NativeOptions {
  /** KV element precision (default "f32"; "f16" stores K/V rows as IEEE half in the library). */
  kvPrecision?: KVPrecision;
  /** Which library of native/build to load (default "cpu"). */
  lib?: NativeLibKind;
  /** Explicit library path (overrides `lib` and LETHE_NATIVE_LIB). */
  path?: string;
  /** Max threads (CPU); 0 or absent = library default (all cores, used only for large kernels). */
  threads?: number;
  /** CUDA device ordinal. */
  device?: number;
  /**
   * CPU: multiply-adds below which a matmul or attention runs on one thread, for this model only (0 or absent:
   * the library's default).
   */
  parallelWork?: number;
}

/** Where the library of `lib` is expected: env LETHE_NATIVE_LIB_DIR, else native/build of this repo. */
export function nativeLibraryPath(lib: NativeLibKind): string {
  const file = lib === "cuda" ? "liblethe_cuda.so" : "liblethe_cpu.so";
  const dir = Deno.env.get("LETHE_NATIVE_LIB_DIR");
  if (dir) return `${dir.replace(/\/$/, "")}/${file}`;
  return fileURLToPath(new URL(`../../native/build/${file}`, import.meta.url));
}

const loaded = new Map<string, LetheLib>();

/** dlopen once per path (never closed). Throws a one-line error when the file is missing or not loadable. */
export function loadNativeLibrary(path: string): LetheLib {
  const have = loaded.get(path);
  if (have) return have;
  try {
    Deno.statSync(path);
  } catch {
    throw new Error(`native library not found: ${path} (run \`deno task build:native\`)`);
  }
  // libgomp reads its settings when it is loaded: keep idle OpenMP workers from spinning for long between
  // parallel regions (they would steal the core the calling thread needs), unless the user chose otherwise.
  if (!Deno.env.get("OMP_WAIT_POLICY") && !Deno.env.get("GOMP_SPINCOUNT")) {
    Deno.env.set("GOMP_SPINCOUNT", "20000");
  }
  let lib: Deno.DynamicLibrary<typeof LETHE_SYMBOLS>;
  try {
    lib = Deno.dlopen(path, LETHE_SYMBOLS);
  } catch (e) {
    throw new Error(`cannot load native library ${path}: ${(e as Error).message}`);
  }
  const abi = lib.symbols.lethe_abi_version();
  if (abi !== LETHE_ABI_VERSION) {
    throw new Error(
      `native library ${path} speaks lethe.h ABI ${abi}, this binding ${LETHE_ABI_VERSION} (run \`deno task build:native\`)`,
    );
  }
  loaded.set(path, lib.symbols);
  return lib.symbols;
}

function cstr(p: Deno.PointerValue): string {
  return p === null ? "" : Deno.UnsafePointerView.getCString(p);
}

function lastError(lib: LetheLib): string {
  return cstr(lib.lethe_last_error()) || "unknown error";
}

function check(lib: LetheLib, rc: number, what: string): void {
  if (rc !== 0) throw new Error(`${what}: ${lastError(lib)}`);
}

/** The device count the library reports (CPU: 1), and its error text when it is < 1. */
export function probeNativeLibrary(path: string): { devices: number; info: string; error?: string } {
  const lib = loadNativeLibrary(path);
  const devices = lib.lethe_device_count();
  return { devices, info: cstr(lib.lethe_backend_info()), error: devices < 1 ? lastError(lib) : undefined };
}

function tensorRowsCols(t: Tensor): [number, number] {
  if (t.shape.length === 1) return [1, t.shape[0]];
  if (t.shape.length === 2) return [t.shape[0], t.shape[1]];
  throw new Error(`tensor ${t.name}: expected 1 or 2 dims, got [${t.shape.join(", ")}]`);
}

/**
 * Prune plans in lethe.h's packed form: per sequence and layer (index s·nLayers + l) the number of rows kept,
 * -1 where the layer stays as it is, and the kept row indices of every compacted layer concatenated in that
 * order. Null when no sequence has a plan.
 */
export function packPlans(plans: (PrunePlan | undefined)[], nLayers: number): {
  lens: Int32Array<ArrayBuffer>;
  rows: Int32Array<ArrayBuffer>;
} | null {
  if (plans.every((p) => !p)) return null;
  const lens = new Int32Array(plans.length * nLayers).fill(-1);
  let total = 0;
  plans.forEach((p, s) =>
    p?.forEach((keep, l) => keep && (lens[s * nLayers + l] = keep.length, total += keep.length))
  );
  const rows = new Int32Array(Math.max(1, total));
  let o = 0;
  for (const p of plans) {
    if (!p) continue;
    for (const keep of p) {
      if (keep) {
        rows.set(keep, o);
        o += keep.length;
      }
    }
  }
  return { lens, rows };
}

/** The sequence cache of a native backend: K/V live in the library (host or device memory). */
export class NativeKV implements SequenceKV {
  readonly shape: KVShape;
  /**
   * The rows the library holds, mirrored (lengths, positions, nextPos) by every call that changes them, so
   * length() and positions() — read by policies every decode step — are views, not FFI calls.
   */
  readonly index: KVIndex;
  #ptr: Deno.PointerValue;
  readonly #lib: LetheLib;
  readonly owner: NativeBackend;

  constructor(owner: NativeBackend, lib: LetheLib, ptr: Deno.PointerValue, shape: KVShape) {
    this.owner = owner;
    this.#lib = lib;
    this.#ptr = ptr;
    this.shape = { ...shape };
    this.index = new KVIndex(shape.nLayers);
  }

  get nextPos(): number {
    return this.index.nextPos;
  }

  /** The lethe_kv handle (throws once freed). */
  get ptr(): Deno.PointerObject {
    this.index.live();
    return this.#ptr as Deno.PointerObject;
  }

  length(layer: number): number {
    return this.index.length(layer);
  }

  positions(layer: number): Int32Array {
    return this.index.positions(layer);
  }

  compact(plan: PrunePlan): void {
    this.index.check(plan);
    const packed = packPlans([plan], this.shape.nLayers);
    if (!packed) return;
    check(this.#lib, this.#lib.lethe_kv_compact(this.ptr, packed.lens, packed.rows), "kv compact");
    this.index.compact(plan);
  }

  rewind(pos: number): PrunePlan {
    const plan = this.index.rewindPlan(pos);
    this.compact(plan);
    this.index.nextPos = pos; // the library takes each step's start position from nextPos
    return plan;
  }

  bytes(): number {
    return Number(this.#lib.lethe_kv_bytes(this.ptr));
  }

  toHost(): HostKVCache {
    let max = 1;
    for (const n of this.index.len) max = Math.max(max, n);
    const host = new HostKVCache(this.shape, max, this.owner.kvPrecision);
    for (let l = 0; l < this.shape.nLayers; l++) {
      check(this.#lib, this.#lib.lethe_kv_read(this.ptr, l, host.k[l], host.v[l], host.pos[l]), "kv read");
      host.len[l] = this.index.len[l];
    }
    host.nextPos = this.nextPos;
    return host;
  }

  loadFrom(host: HostKVCache): void {
    checkShape(this.shape, host.shape);
    const kvDim = host.kvDim;
    for (let l = 0; l < this.shape.nLayers; l++) {
      const n = host.len[l];
      if (host.k[l].length < n * kvDim || host.v[l].length < n * kvDim || host.pos[l].length < n) {
        throw new Error(`KV snapshot layer ${l} holds fewer rows than its length ${n}`);
      }
    }
    for (let l = 0; l < this.shape.nLayers; l++) {
      check(
        this.#lib,
        this.#lib.lethe_kv_write(this.ptr, l, host.k[l], host.v[l], host.pos[l], host.len[l]),
        "kv write",
      );
    }
    this.index.load(host.len, host.pos, host.nextPos);
  }

  free(): void {
    if (this.#ptr === null) return;
    this.#lib.lethe_kv_free(this.#ptr);
    this.#ptr = null;
    this.index.free();
  }
}

/** A Backend over a lethe.h library. */
export class NativeBackend implements Backend {
  readonly name: BackendName;
  readonly config: ModelConfig;
  readonly description: string;
  /** Element precision of the library's K/V rows (lethe_config.kv_type). */
  readonly kvPrecision: KVPrecision;
  readonly libraryPath: string;
  #lib: LetheLib;
  #model: Deno.PointerValue;
  /** Multiply-adds per token of the weight matmuls (to choose blocking vs worker-thread calls). */
  readonly #workPerToken: number;
  #busy: Promise<unknown> | null = null;
  // Reused per-step argument buffers.
  #i32 = new Int32Array(0);
  #f32 = new Float32Array(0);
  #ptrs = new BigUint64Array(0);

  constructor(
    name: BackendName,
    config: ModelConfig,
    lib: LetheLib,
    model: Deno.PointerObject,
    path: string,
    kvPrecision: KVPrecision = "f32",
  ) {
    this.name = name;
    this.kvPrecision = kvPrecision;
    this.config = config;
    this.#lib = lib;
    this.#model = model;
    this.libraryPath = path;
    const c = config;
    const qd = c.nHeads * c.headDim, kvd = c.nKVHeads * c.headDim;
    this.#workPerToken = c.nLayers * (c.dim * (2 * qd + 2 * kvd) + 3 * c.dim * c.ffnDim) +
      c.vocabSize * c.dim;
    this.description = `${name}: ${cstr(lib.lethe_backend_info())}, ${kvPrecision} KV (${path})`;
  }

  get model(): Deno.PointerObject {
    if (this.#model === null) throw new Error(`${this.name} backend used after dispose()`);
    return this.#model;
  }

  createKV(): NativeKV {
    const ptr = this.#lib.lethe_kv_create(this.model);
    if (ptr === null) throw new Error(`kv create: ${lastError(this.#lib)}`);
    return new NativeKV(this, this.#lib, ptr, {
      nLayers: this.config.nLayers,
      nKVHeads: this.config.nKVHeads,
      headDim: this.config.headDim,
    });
  }

  async forward(batch: StepInput[]): Promise<StepOutput[]> {
    while (this.#busy) await this.#busy;
    const c = this.config;
    const n = batch.length;
    if (n === 0) return [];
    const L = c.nLayers, V = c.vocabSize;
    checkBatch(batch, this, (kv) => kv instanceof NativeKV && kv.owner === this && kv.ptr !== null);
    const plans = packPlans(batch.map((b) => b.compact), L);
    let total = 0, nLogits = 0;
    const kvs = batch.map((b) => b.kv as NativeKV);
    for (const b of batch) {
      total += b.tokens.length;
      nLogits += b.logits === "all" ? b.tokens.length : b.logits === "last" ? 1 : 0;
    }
    // Int32 args: tokens | n_tokens | start_pos | logits_mode | score_window
    const need = total + 4 * n;
    if (this.#i32.length < need) this.#i32 = new Int32Array(Math.max(need, 2 * this.#i32.length));
    const i32 = this.#i32;
    const tokens = i32.subarray(0, total);
    const nTok = i32.subarray(total, total + n);
    const start = i32.subarray(total + n, total + 2 * n);
    const mode = i32.subarray(total + 2 * n, total + 3 * n);
    const window = i32.subarray(total + 3 * n, total + 4 * n);
    if (this.#f32.length < n) this.#f32 = new Float32Array(Math.max(n, 2 * this.#f32.length));
    const decay = this.#f32.subarray(0, n);
    if (this.#ptrs.length < n + n * L) {
      this.#ptrs = new BigUint64Array(Math.max(n + n * L, 2 * this.#ptrs.length));
    }
    const kvPtrs = this.#ptrs.subarray(0, n);
    let scorePtrs: BigUint64Array | null = null;
    const scores: (Float32Array[] | undefined)[] = new Array(n);
    let o = 0;
    for (let s = 0; s < n; s++) {
      const b = batch[s];
      const kv = kvs[s];
      const T = b.tokens.length;
      for (let t = 0; t < T; t++) tokens[o++] = b.tokens[t];
      nTok[s] = T;
      start[s] = kv.nextPos;
      mode[s] = b.logits === "all" ? 2 : b.logits === "last" ? 1 : 0;
      kvPtrs[s] = BigInt(Deno.UnsafePointer.value(kv.ptr));
      const sr = b.scores;
      if (sr && sr.window > 0) {
        scorePtrs ??= this.#ptrs.subarray(n, n + n * L).fill(0n);
        decay[s] = sr.decay;
        window[s] = Math.min(sr.window, 0x7fffffff);
        const per: Float32Array[] = [];
        for (let l = 0; l < L; l++) {
          const kept = b.compact?.[l];
          const a = new Float32Array((kept ? kept.length : kv.index.len[l]) + T);
          per.push(a);
          scorePtrs[s * L + l] = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(a)));
        }
        scores[s] = per;
      } else {
        decay[s] = 0;
        window[s] = 0;
      }
    }
    const logits = new Float32Array(nLogits * V);
    const args = [
      this.model,
      n,
      kvPtrs,
      plans?.lens ?? null,
      plans?.rows ?? null,
      tokens,
      nTok,
      start,
      mode,
      nLogits > 0 ? logits : null,
      scorePtrs ? decay : null,
      scorePtrs ? window : null,
      scorePtrs,
    ] as const;
    let rc: number;
    if (total * this.#workPerToken >= ASYNC_WORK) {
      const p = this.#lib.lethe_forward_async(...args);
      this.#busy = p;
      try {
        rc = await p;
      } finally {
        this.#busy = null;
      }
    } else {
      rc = this.#lib.lethe_forward(...args);
    }
    if (rc !== 0) throw new Error(`${this.name} forward: ${lastError(this.#lib)}`);
    const out: StepOutput[] = new Array(n);
    let lo = 0;
    for (let s = 0; s < n; s++) {
      const b = batch[s];
      const kv = kvs[s];
      const T = b.tokens.length;
      if (b.compact) kv.index.compact(b.compact);
      kv.index.append(T);
      const rows = b.logits === "all" ? T : b.logits === "last" ? 1 : 0;
      const lg = logits.subarray(lo * V, (lo + rows) * V);
      lo += rows;
      out[s] = scores[s] ? { logits: lg, scores: scores[s] } : { logits: lg };
    }
    return out;
  }

  dispose(): void {
    if (this.#model === null) return;
    this.#lib.lethe_model_free(this.#model);
    this.#model = null;
  }
}

/**
 * A library built before lethe_config.kv_type existed ignores it (the field was `reserved`) and would keep f32
 * rows while the backend reports f16: write one row and check that it reads back rounded to f16.
 */
function checkF16KV(lib: LetheLib, model: Deno.PointerObject, kvDim: number, kind: string): void {
  const kv = lib.lethe_kv_create(model);
  if (kv === null) throw new Error(`${kind} kv create: ${lastError(lib)}`);
  try {
    const row = new Float32Array(kvDim).fill(1 / 3), back = new Float32Array(kvDim);
    check(lib, lib.lethe_kv_write(kv, 0, row, row, new Int32Array(1), 1), "kv write");
    check(lib, lib.lethe_kv_read(kv, 0, back, null, null), "kv read");
    if (back[0] !== Math.f16round(1 / 3)) {
      throw new Error(`${kind} library does not store f16 KV rows (lethe_config.kv_type ignored)`);
    }
  } finally {
    lib.lethe_kv_free(kv);
  }
}

/** The fields of lethe.h's lethe_config: the model's dimensions, and the library's settings as numbers. */
export type LetheConfig =
  & Pick<
    ModelConfig,
    "dim" | "nLayers" | "nHeads" | "nKVHeads" | "headDim" | "ffnDim" | "vocabSize" | "normEps" | "ropeTheta"
  >
  & {
    /** LETHE_ROPE_INTERLEAVED 0, LETHE_ROPE_HALF 1. */
    ropeStyle: number;
    maxThreads: number;
    device: number;
    /** LETHE_KV_F32 0, LETHE_KV_F16 1. */
    kvType: number;
    parallelWork: number;
  };

/** lethe_config's bytes (14 × 4, little-endian int32 and float32 fields). */
export function encodeConfig(c: LetheConfig): Uint8Array<ArrayBuffer> {
  const b = new ArrayBuffer(56), dv = new DataView(b);
  [c.dim, c.nLayers, c.nHeads, c.nKVHeads, c.headDim, c.ffnDim, c.vocabSize].forEach((v, i) =>
    dv.setInt32(i * 4, v, true)
  );
  dv.setFloat32(28, c.normEps, true);
  dv.setFloat32(32, c.ropeTheta, true);
  [c.ropeStyle, c.maxThreads, c.device, c.kvType, c.parallelWork].forEach((v, i) =>
    dv.setInt32(36 + i * 4, v, true)
  );
  return new Uint8Array(b);
}

/** Copies the model's weights into a lethe.h library and returns the backend. */
export function openNativeBackend(
  config: ModelConfig,
  weights: ModelWeights,
  opts: NativeOptions = {},
): NativeBackend {
  const kind = opts.lib ?? "cpu";
  const kvPrecision = opts.kvPrecision ?? "f32";
  if (kvPrecision !== "f32" && kvPrecision !== "f16") {
    throw new Error(`${kind} backend: bad KV precision ${JSON.stringify(kvPrecision)} (f32 or f16)`);
  }
  const path = opts.path ?? Deno.env.get("LETHE_NATIVE_LIB") ?? nativeLibraryPath(kind);
  const lib = loadNativeLibrary(path);
  const devices = lib.lethe_device_count();
  if (devices < 1) {
    throw new Error(`${kind} backend unavailable: no device (${lastError(lib)})`);
  }
  const c = config;
  if (c.headDim % 2 !== 0) throw new Error(`native backend: headDim ${c.headDim} must be even`);
  const pw = opts.parallelWork ?? 0;
  if (!Number.isInteger(pw) || pw < 0 || pw > 0x7fffffff) {
    throw new Error(`${kind} backend: parallelWork must be an integer >= 0, got ${pw}`);
  }
  const model = lib.lethe_model_create(encodeConfig({
    ...c,
    ropeStyle: c.ropeStyle === "half" ? 1 : 0,
    maxThreads: opts.threads ?? 0,
    device: opts.device ?? 0,
    kvType: kvPrecision === "f16" ? 1 : 0,
    parallelWork: pw,
  }));
  if (model === null) throw new Error(`${kind} model create: ${lastError(lib)}`);
  try {
    if (kvPrecision === "f16") checkF16KV(lib, model, c.nKVHeads * c.headDim, kind);
    const set = (kind: number, layer: number, t: Tensor | undefined) => {
      if (!t) return;
      const [rows, cols] = tensorRowsCols(t);
      let type: number = t.type, data = t.data;
      if (!NATIVE_TYPES.has(type)) {
        const f = dequantize(t.type, t.data, rows * cols);
        type = GGMLType.F32;
        data = new Uint8Array(f.buffer, f.byteOffset, f.byteLength);
      }
      check(
        lib,
        lib.lethe_model_set_tensor(model, kind, layer, type, data, BigInt(rows), BigInt(cols)),
        `tensor ${t.name}`,
      );
    };
    set(KIND.tokEmbd, 0, weights.tokenEmbd);
    set(KIND.outNorm, 0, weights.outputNorm);
    const tied = weights.output === weights.tokenEmbd ||
      (weights.output.data === weights.tokenEmbd.data && weights.output.type === weights.tokenEmbd.type);
    if (!tied) set(KIND.output, 0, weights.output);
    if (weights.layers.length !== c.nLayers) {
      throw new Error(`model has ${weights.layers.length} layers, config says ${c.nLayers}`);
    }
    weights.layers.forEach((L, l) => {
      set(KIND.attnNorm, l, L.attnNorm);
      set(KIND.wq, l, L.wq);
      set(KIND.wk, l, L.wk);
      set(KIND.wv, l, L.wv);
      set(KIND.wo, l, L.wo);
      set(KIND.bq, l, L.bq);
      set(KIND.bk, l, L.bk);
      set(KIND.bv, l, L.bv);
      set(KIND.ffnNorm, l, L.ffnNorm);
      set(KIND.wGate, l, L.wGate);
      set(KIND.wUp, l, L.wUp);
      set(KIND.wDown, l, L.wDown);
    });
  } catch (e) {
    lib.lethe_model_free(model);
    throw e;
  }
  return new NativeBackend(kind === "cuda" ? "cuda" : "native", config, lib, model, path, kvPrecision);
}
