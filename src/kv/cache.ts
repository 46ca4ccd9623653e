/**
 * The KV cache of one sequence.
 *
 * Every layer keeps its own list of cached tokens: after pruning, layers hold different numbers of tokens.
 * Each kept token remembers its original position, so keys (stored with RoPE already applied) stay valid
 * after compaction and new tokens keep counting positions from `nextPos`.
 *
 * `SequenceKV` is the contract the backends implement (host memory for ts/native, GPU buffers for
 * webgpu/cuda), all of them over one host-side `KVIndex` (kv_index.ts: lengths, positions, prune plans);
 * `HostKVCache` is the host-memory implementation and the portable snapshot format used for persistence
 * (`toHost()` / `loadFrom()`).
 */
import { checkShape, KVIndex, type KVShape, type PrunePlan } from "./kv_index.ts";

export type { KVShape, PrunePlan } from "./kv_index.ts";

export interface SequenceKV {
  readonly shape: KVShape;
  /** Position the next appended token gets (number of tokens the sequence has seen). */
  readonly nextPos: number;
  /** Number of cached tokens in `layer`. */
  length(layer: number): number;
  /** Original positions of the cached tokens of `layer` (a view of length `length(layer)`). */
  positions(layer: number): Int32Array;
  /**
   * Apply a prune plan now, outside a step (all layers at once: one GPU submit / kernel launch). A running
   * sequence hands its plans to the backend in the next step instead (`StepInput.compact`); this is for the
   * plan still pending when a sequence finishes. Throws (and changes nothing) on an invalid plan.
   */
  compact(plan: PrunePlan): void;
  /**
   * Forget every row at a position ≥ `pos` and set nextPos to `pos` (a session resumed from a shorter prefix
   * of its history), applying the plan `KVIndex.rewindPlan` makes; returns that plan, so per-row state kept
   * beside the cache (the policy's) follows it. Throws a RangeError (changing nothing) unless
   * 0 ≤ pos ≤ nextPos.
   */
  rewind(pos: number): PrunePlan;
  /** Bytes of K/V actually held for the kept tokens (not capacity), at the cache's element size. */
  bytes(): number;
  /** A host-memory snapshot (for persistence and cross-backend checks). */
  toHost(): HostKVCache;
  /** Replace this cache's contents with a snapshot of the same shape. */
  loadFrom(host: HostKVCache): void;
  /** Release backend resources; the cache is unusable afterwards. */
  free(): void;
}

const MIN_CAPACITY = 16;

export class HostKVCache implements SequenceKV {
  readonly shape: KVShape;
  readonly kvDim: number;
  /**
   * "f16": values are rounded to half precision as they are appended (the arrays stay Float32Array, every
   * value exactly representable in f16) and bytes() counts 2 bytes per element.
   */
  readonly precision: "f32" | "f16";
  readonly index: KVIndex;
  /** Per layer K rows: [capacity × kvDim], rows 0..len-1 valid. */
  k: Float32Array[];
  /** Per layer V rows: [capacity × kvDim]. */
  v: Float32Array[];

  constructor(shape: KVShape, initialCapacity = MIN_CAPACITY, precision: "f32" | "f16" = "f32") {
    this.shape = { ...shape };
    this.precision = precision;
    this.kvDim = shape.nKVHeads * shape.headDim;
    const cap = Math.max(1, initialCapacity);
    this.index = new KVIndex(shape.nLayers, cap);
    this.k = [];
    this.v = [];
    for (let l = 0; l < shape.nLayers; l++) {
      this.k.push(new Float32Array(cap * this.kvDim));
      this.v.push(new Float32Array(cap * this.kvDim));
    }
  }

  get nextPos(): number {
    return this.index.nextPos;
  }
  set nextPos(p: number) {
    this.index.nextPos = p;
  }

  /** Per layer number of valid rows. */
  get len(): Int32Array {
    return this.index.len;
  }

  /** Per layer original position of each cached row (capacity-sized). */
  get pos(): Int32Array[] {
    return this.index.pos;
  }

  /** True until free(); throws after it. */
  live(): boolean {
    return this.index.live();
  }

  length(layer: number): number {
    return this.index.length(layer);
  }

  capacity(layer: number): number {
    return this.k[layer].length / this.kvDim;
  }

  positions(layer: number): Int32Array {
    return this.index.positions(layer);
  }

  /** Make room for `extra` more rows in `layer` (grows geometrically; keeps contents). */
  reserve(layer: number, extra: number): void {
    const n = this.index.len[layer];
    const need = n + extra;
    const cap = this.capacity(layer);
    if (need > cap) {
      let next = Math.max(MIN_CAPACITY, cap);
      while (next < need) next *= 2;
      const k = new Float32Array(next * this.kvDim);
      k.set(this.k[layer].subarray(0, n * this.kvDim));
      const v = new Float32Array(next * this.kvDim);
      v.set(this.v[layer].subarray(0, n * this.kvDim));
      this.k[layer] = k;
      this.v[layer] = v;
    }
    this.index.reserve(layer, extra);
  }

  /** Append one token's K and V rows (each kvDim long) to `layer` at original position `position`. */
  append(layer: number, k: Float32Array, v: Float32Array, position: number): void {
    this.index.live();
    this.reserve(layer, 1);
    const n = this.index.len[layer];
    const K = this.k[layer], V = this.v[layer], o = n * this.kvDim;
    if (this.precision === "f16") {
      for (let i = 0; i < this.kvDim; i++) {
        K[o + i] = Math.f16round(k[i]);
        V[o + i] = Math.f16round(v[i]);
      }
    } else {
      K.set(k.subarray(0, this.kvDim), o);
      V.set(v.subarray(0, this.kvDim), o);
    }
    this.index.push(layer, position);
  }

  compact(plan: PrunePlan): void {
    this.index.check(plan);
    const d = this.kvDim;
    for (let l = 0; l < this.shape.nLayers; l++) {
      const keep = plan[l];
      if (keep === null) continue;
      const k = this.k[l], v = this.v[l];
      for (let i = 0; i < keep.length; i++) {
        const src = keep[i];
        if (src === i) continue;
        k.copyWithin(i * d, src * d, src * d + d);
        v.copyWithin(i * d, src * d, src * d + d);
      }
    }
    this.index.compact(plan);
  }

  rewind(pos: number): PrunePlan {
    const plan = this.index.rewindPlan(pos);
    this.compact(plan);
    this.index.nextPos = pos;
    return plan;
  }

  bytes(): number {
    return this.index.rows() * this.kvDim * 2 * (this.precision === "f16" ? 2 : 4);
  }

  /** Total cached rows over all layers. */
  totalTokens(): number {
    return this.index.rows();
  }

  toHost(): HostKVCache {
    const out = new HostKVCache(this.shape, 1, this.precision);
    out.loadFrom(this);
    return out;
  }

  /** Loading into an f16 cache rounds the snapshot's values to f16 (exact when it came from one). */
  loadFrom(host: HostKVCache): void {
    checkShape(this.shape, host.shape);
    this.index.load(host.len, host.pos, host.nextPos);
    const d = this.kvDim;
    for (let l = 0; l < this.shape.nLayers; l++) {
      const n = host.len[l];
      const cap = Math.max(MIN_CAPACITY, n);
      this.k[l] = new Float32Array(cap * d);
      this.k[l].set(host.k[l].subarray(0, n * d));
      this.v[l] = new Float32Array(cap * d);
      this.v[l].set(host.v[l].subarray(0, n * d));
      if (this.precision === "f16") {
        for (let i = 0; i < n * d; i++) {
          this.k[l][i] = Math.f16round(this.k[l][i]);
          this.v[l][i] = Math.f16round(this.v[l][i]);
        }
      }
    }
  }

  free(): void {
    this.index.free();
    for (let l = 0; l < this.shape.nLayers; l++) {
      this.k[l] = new Float32Array(0);
      this.v[l] = new Float32Array(0);
    }
  }
}
