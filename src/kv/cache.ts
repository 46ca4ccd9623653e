/**
 * The KV cache of one sequence.
 *
 * Every layer keeps its own list of cached tokens: after pruning, layers hold different numbers of tokens.
 * Each kept token remembers its original position, so keys (stored with RoPE already applied) stay valid
 * after compaction and new tokens keep counting positions from `nextPos`.
 *
 * `SequenceKV` is the contract the backends implement (host memory for ts/native, GPU buffers for
 * webgpu/cuda); `HostKVCache` is the host-memory implementation and the portable snapshot format used for
 * persistence (`toHost()` / `loadFrom()`).
 */

export interface KVShape {
  nLayers: number;
  nKVHeads: number;
  headDim: number;
}

export interface SequenceKV {
  readonly shape: KVShape;
  /** Position the next appended token gets (number of tokens the sequence has seen). */
  nextPos: number;
  /** Number of cached tokens in `layer`. */
  length(layer: number): number;
  /** Original positions of the cached tokens of `layer` (a copy or a view of length `length(layer)`). */
  positions(layer: number): Int32Array;
  /**
   * Keep only the cached tokens at the given indices of `layer` (strictly ascending, each < length).
   * Order is preserved.
   */
  compact(layer: number, keep: Int32Array): void;
  /** Bytes of K/V actually held for the kept tokens (not capacity), at the cache's element precision. */
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
  nextPos = 0;
  /** Per layer K rows: [capacity × kvDim], rows 0..len-1 valid. */
  k: Float32Array[];
  /** Per layer V rows: [capacity × kvDim]. */
  v: Float32Array[];
  /** Per layer original position of each cached row. */
  pos: Int32Array[];
  /** Per layer number of valid rows. */
  len: Int32Array;

  constructor(shape: KVShape, initialCapacity = MIN_CAPACITY, precision: "f32" | "f16" = "f32") {
    this.shape = { ...shape };
    this.precision = precision;
    this.kvDim = shape.nKVHeads * shape.headDim;
    const cap = Math.max(1, initialCapacity);
    this.k = [];
    this.v = [];
    this.pos = [];
    for (let l = 0; l < shape.nLayers; l++) {
      this.k.push(new Float32Array(cap * this.kvDim));
      this.v.push(new Float32Array(cap * this.kvDim));
      this.pos.push(new Int32Array(cap));
    }
    this.len = new Int32Array(shape.nLayers);
  }

  length(layer: number): number {
    return this.len[layer];
  }

  capacity(layer: number): number {
    return this.pos[layer].length;
  }

  positions(layer: number): Int32Array {
    return this.pos[layer].subarray(0, this.len[layer]);
  }

  /** Make room for `extra` more rows in `layer` (grows geometrically; keeps contents). */
  reserve(layer: number, extra: number): void {
    const need = this.len[layer] + extra;
    const cap = this.capacity(layer);
    if (need <= cap) return;
    let next = Math.max(MIN_CAPACITY, cap);
    while (next < need) next *= 2;
    const n = this.len[layer];
    const k = new Float32Array(next * this.kvDim);
    k.set(this.k[layer].subarray(0, n * this.kvDim));
    const v = new Float32Array(next * this.kvDim);
    v.set(this.v[layer].subarray(0, n * this.kvDim));
    const p = new Int32Array(next);
    p.set(this.pos[layer].subarray(0, n));
    this.k[layer] = k;
    this.v[layer] = v;
    this.pos[layer] = p;
  }

  /** Append one token's K and V rows (each kvDim long) to `layer` at original position `position`. */
  append(layer: number, k: Float32Array, v: Float32Array, position: number): void {
    this.reserve(layer, 1);
    const n = this.len[layer];
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
    this.pos[layer][n] = position;
    this.len[layer] = n + 1;
  }

  compact(layer: number, keep: Int32Array): void {
    const n = this.len[layer];
    const d = this.kvDim;
    const k = this.k[layer], v = this.v[layer], p = this.pos[layer];
    let prev = -1;
    for (let i = 0; i < keep.length; i++) {
      const src = keep[i];
      if (!Number.isInteger(src) || src <= prev || src >= n) {
        throw new RangeError(`compact: keep indices must be strictly ascending in [0, ${n}), got ${src}`);
      }
      prev = src;
      if (src !== i) {
        k.copyWithin(i * d, src * d, src * d + d);
        v.copyWithin(i * d, src * d, src * d + d);
        p[i] = p[src];
      }
    }
    this.len[layer] = keep.length;
  }

  bytes(): number {
    let rows = 0;
    for (let l = 0; l < this.shape.nLayers; l++) rows += this.len[l];
    return rows * this.kvDim * 2 * (this.precision === "f16" ? 2 : 4);
  }

  /** Total cached rows over all layers. */
  totalTokens(): number {
    let rows = 0;
    for (let l = 0; l < this.shape.nLayers; l++) rows += this.len[l];
    return rows;
  }

  toHost(): HostKVCache {
    const out = new HostKVCache(this.shape, 1, this.precision);
    out.loadFrom(this);
    return out;
  }

  /** Loading into an f16 cache rounds the snapshot's values to f16 (exact when it came from one). */
  loadFrom(host: HostKVCache): void {
    const s = host.shape;
    if (
      s.nLayers !== this.shape.nLayers || s.nKVHeads !== this.shape.nKVHeads ||
      s.headDim !== this.shape.headDim
    ) {
      throw new Error(
        `KV shape mismatch: have ${JSON.stringify(this.shape)}, snapshot has ${JSON.stringify(s)}`,
      );
    }
    for (let l = 0; l < s.nLayers; l++) {
      const n = host.len[l];
      const cap = Math.max(MIN_CAPACITY, n);
      this.k[l] = new Float32Array(cap * this.kvDim);
      this.k[l].set(host.k[l].subarray(0, n * this.kvDim));
      this.v[l] = new Float32Array(cap * this.kvDim);
      this.v[l].set(host.v[l].subarray(0, n * this.kvDim));
      if (this.precision === "f16") {
        for (let i = 0; i < n * this.kvDim; i++) {
          this.k[l][i] = Math.f16round(this.k[l][i]);
          this.v[l][i] = Math.f16round(this.v[l][i]);
        }
      }
      this.pos[l] = new Int32Array(cap);
      this.pos[l].set(host.pos[l].subarray(0, n));
      this.len[l] = n;
    }
    this.nextPos = host.nextPos;
  }

  free(): void {
    for (let l = 0; l < this.shape.nLayers; l++) {
      this.k[l] = new Float32Array(0);
      this.v[l] = new Float32Array(0);
      this.pos[l] = new Int32Array(0);
      this.len[l] = 0;
    }
  }
}
