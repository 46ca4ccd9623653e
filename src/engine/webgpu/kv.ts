/**
 * The KV cache of one sequence on the GPU: per layer a K, a V and a position buffer (rows 0..len-1 valid),
 * growing by doubling (with a GPU copy) and compacted on the GPU by a gather kernel.
 *
 * Positions (small) are mirrored on the host so `positions()` is synchronous. By default the K/V rows are
 * mirrored too (the backend reads the step's new rows back with the logits), so the contract's synchronous
 * `toHost()` works; with `hostMirror: false` use `toHostAsync()` (which always reads the GPU buffers).
 *
 * Precision "f16": every K/V value is rounded to f16 (ties to even, like Math.f16round) as it enters the cache;
 * stored as f16 elements when the device has shader-f16 (storage "f16"), else as f32 words holding the rounded
 * values ("f32r"). Snapshots (`toHost`, `toHostAsync`) are then HostKVCaches of precision "f16", and
 * `loadFrom` rounds what it loads, so an f16 snapshot round trip is exact.
 */
import { HostKVCache, type KVShape, type SequenceKV } from "../../kv/cache.ts";
import type { KVPrecision } from "../backend.ts";
import { type GpuKernels, kvElementBytes, type KVStorage, StepRecorder } from "./kernels.ts";

const MIN_CAPACITY = 16;
const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

type F16ArrayCtor = new (
  buf: ArrayBufferLike | ArrayLike<number>,
  off?: number,
  n?: number,
) => ArrayLike<number> & {
  buffer: ArrayBufferLike;
};
const Float16 = (globalThis as unknown as { Float16Array?: F16ArrayCtor }).Float16Array;

/** IEEE half bits → f32 values (exact). */
export function f16BitsToF32(bits: Uint16Array): Float32Array {
  if (Float16) return Float32Array.from(new Float16(bits.buffer, bits.byteOffset, bits.length));
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) {
    const h = bits[i], s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, m = h & 0x3ff;
    out[i] = e === 31
      ? (m ? NaN : s * Infinity)
      : e === 0
      ? s * m * 2 ** -24
      : s * (1024 + m) * 2 ** (e - 25);
  }
  return out;
}

/** f32 values → IEEE half bits, rounded to nearest even (Math.f16round); overflow → ±inf. */
export function f32ToF16Bits(x: ArrayLike<number>): Uint16Array {
  if (Float16) {
    const h = new Float16(x);
    return new Uint16Array(h.buffer);
  }
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = Math.f16round(x[i]), a = Math.abs(v), s = v < 0 || Object.is(v, -0) ? 0x8000 : 0;
    if (Number.isNaN(v)) out[i] = 0x7e00;
    else if (a === Infinity) out[i] = s | 0x7c00;
    else if (a < 2 ** -14) out[i] = s | Math.round(a * 2 ** 24);
    else {
      const e = Math.floor(Math.log2(a));
      const ee = a >= 2 ** (e + 1) ? e + 1 : a < 2 ** e ? e - 1 : e;
      out[i] = s | ((ee + 15) << 10) | Math.round((a / 2 ** ee - 1) * 1024);
    }
  }
  return out;
}

export class WebGPUKV implements SequenceKV {
  readonly shape: KVShape;
  readonly kvDim: number;
  /** Element precision of the cached values ("f16": rounded to half precision as they enter the cache). */
  readonly precision: KVPrecision;
  /** How the elements are stored on the GPU. */
  readonly storage: KVStorage;
  /** Bytes per stored K/V element (2 for "f16" storage, else 4). */
  readonly elemBytes: number;
  nextPos = 0;
  /** Per layer GPU buffers: K and V [cap × kvDim] of `storage` elements, positions [cap] i32. */
  kBuf: GPUBuffer[] = [];
  vBuf: GPUBuffer[] = [];
  pBuf: GPUBuffer[] = [];
  /** Per layer capacity in rows. */
  cap: number[] = [];
  /** Per layer valid rows. */
  readonly len: Int32Array;
  /** Per layer host copy of the positions (capacity-sized). */
  private pos: Int32Array[] = [];
  /** Host copy of K/V (null when disabled). */
  readonly mirror: HostKVCache | null;
  /** Set while a forward step that uses this cache is in flight. */
  busy = false;
  private freed = false;

  constructor(
    readonly kernels: GpuKernels,
    shape: KVShape,
    hostMirror: boolean,
    precision: KVPrecision = "f32",
  ) {
    if (precision !== "f32" && precision !== "f16") {
      throw new Error(`webgpu KV: unknown precision ${precision}`);
    }
    this.shape = { ...shape };
    this.kvDim = shape.nKVHeads * shape.headDim;
    if (this.kvDim % 2 !== 0) throw new Error(`webgpu KV: kv dim ${this.kvDim} must be even`);
    this.precision = precision;
    this.storage = precision === "f32" ? "f32" : kernels.f16 ? "f16" : "f32r";
    this.elemBytes = kvElementBytes(this.storage);
    this.len = new Int32Array(shape.nLayers);
    this.mirror = hostMirror ? new HostKVCache(shape, MIN_CAPACITY, precision) : null;
    for (let l = 0; l < shape.nLayers; l++) this.allocLayer(l, MIN_CAPACITY);
  }

  private newBuffers(rows: number, label: string): [GPUBuffer, GPUBuffer, GPUBuffer] {
    const bytes = rows * this.kvDim * this.elemBytes;
    if (bytes > this.kernels.maxBinding) {
      throw new Error(
        `webgpu KV: ${rows} cached rows × ${this.kvDim} × ${this.elemBytes} B exceed the device's max storage binding (${this.kernels.maxBinding} B)`,
      );
    }
    const d = this.kernels.device;
    return [
      d.createBuffer({ label: `${label} K`, size: bytes, usage: USAGE }),
      d.createBuffer({ label: `${label} V`, size: bytes, usage: USAGE }),
      d.createBuffer({ label: `${label} pos`, size: Math.max(16, rows * 4), usage: USAGE }),
    ];
  }

  private allocLayer(l: number, rows: number): void {
    const [k, v, p] = this.newBuffers(rows, `kv L${l}`);
    this.kBuf[l]?.destroy();
    this.vBuf[l]?.destroy();
    this.pBuf[l]?.destroy();
    this.kBuf[l] = k;
    this.vBuf[l] = v;
    this.pBuf[l] = p;
    this.cap[l] = rows;
    const pos = new Int32Array(rows);
    if (this.pos[l]) pos.set(this.pos[l].subarray(0, Math.min(rows, this.len[l])));
    this.pos[l] = pos;
  }

  private check(): void {
    if (this.freed) throw new Error("webgpu KV: cache was freed");
    if (this.busy) throw new Error("webgpu KV: cache is in use by a forward step in flight");
  }

  length(layer: number): number {
    return this.len[layer];
  }

  positions(layer: number): Int32Array {
    return this.pos[layer].subarray(0, this.len[layer]);
  }

  /**
   * Make room for `extra` rows in every layer, recording the copies of grown layers into `encoder`.
   * Returns the replaced buffers (destroy them after the submit).
   */
  reserve(encoder: GPUCommandEncoder, extra: number): GPUBuffer[] {
    if (this.freed) throw new Error("webgpu KV: cache was freed");
    const retired: GPUBuffer[] = [];
    for (let l = 0; l < this.shape.nLayers; l++) {
      const need = this.len[l] + extra;
      if (need <= this.cap[l]) continue;
      let next = Math.max(MIN_CAPACITY, this.cap[l]);
      while (next < need) next *= 2;
      const [k, v, p] = this.newBuffers(next, `kv L${l}`);
      const n = this.len[l];
      if (n > 0) {
        encoder.copyBufferToBuffer(this.kBuf[l], 0, k, 0, n * this.kvDim * this.elemBytes);
        encoder.copyBufferToBuffer(this.vBuf[l], 0, v, 0, n * this.kvDim * this.elemBytes);
        encoder.copyBufferToBuffer(this.pBuf[l], 0, p, 0, n * 4);
      }
      retired.push(this.kBuf[l], this.vBuf[l], this.pBuf[l]);
      this.kBuf[l] = k;
      this.vBuf[l] = v;
      this.pBuf[l] = p;
      this.cap[l] = next;
      const pos = new Int32Array(next);
      pos.set(this.pos[l].subarray(0, n));
      this.pos[l] = pos;
    }
    return retired;
  }

  /**
   * Record `t` appended tokens (after the step ran): lengths, positions, host mirror rows (`rows` holds the
   * values read back from this cache's buffers, as f32: per layer t K rows then t V rows).
   */
  commitAppend(t: number, rows: Float32Array | null, rowsOffset: number): void {
    const d = this.kvDim;
    for (let l = 0; l < this.shape.nLayers; l++) {
      const n = this.len[l];
      for (let i = 0; i < t; i++) this.pos[l][n + i] = this.nextPos + i;
      this.len[l] = n + t;
      if (this.mirror && rows) {
        const kOff = rowsOffset + l * 2 * t * d;
        const vOff = kOff + t * d;
        for (let i = 0; i < t; i++) {
          this.mirror.append(
            l,
            rows.subarray(kOff + i * d, kOff + (i + 1) * d),
            rows.subarray(vOff + i * d, vOff + (i + 1) * d),
            this.nextPos + i,
          );
        }
      }
    }
    this.nextPos += t;
    if (this.mirror) this.mirror.nextPos = this.nextPos;
  }

  compact(layer: number, keep: Int32Array): void {
    this.check();
    if (!Number.isInteger(layer) || layer < 0 || layer >= this.shape.nLayers) {
      throw new RangeError(`compact: layer ${layer} out of range [0, ${this.shape.nLayers})`);
    }
    const n = this.len[layer];
    let prev = -1;
    let identity = keep.length === n;
    for (let i = 0; i < keep.length; i++) {
      const src = keep[i];
      if (!Number.isInteger(src) || src <= prev || src >= n) {
        throw new RangeError(`compact: keep indices must be strictly ascending in [0, ${n}), got ${src}`);
      }
      if (src !== i) identity = false;
      prev = src;
    }
    if (identity) return;
    const m = keep.length;
    if (m > 0) {
      const k = this.kernels;
      const device = k.device;
      const [kd, vd, pd] = this.newBuffers(this.cap[layer], `kv L${layer}`);
      const keepBuf = device.createBuffer({
        label: "compact keep",
        size: Math.max(16, m * 4),
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      });
      device.queue.writeBuffer(keepBuf, 0, new Uint32Array(keep));
      const rec = new StepRecorder(k);
      rec.threads(
        k.pipeline("kv_compact"),
        (m * this.kvDim * this.elemBytes) / 4,
        ["P", keepBuf, this.kBuf[layer], this.vBuf[layer], this.pBuf[layer], kd, vd, pd],
        [m, (this.kvDim * this.elemBytes) / 4],
      );
      const enc = device.createCommandEncoder();
      rec.encode(enc);
      device.queue.submit([enc.finish()]);
      rec.release();
      keepBuf.destroy();
      this.kBuf[layer].destroy();
      this.vBuf[layer].destroy();
      this.pBuf[layer].destroy();
      this.kBuf[layer] = kd;
      this.vBuf[layer] = vd;
      this.pBuf[layer] = pd;
    }
    const pos = this.pos[layer];
    for (let i = 0; i < m; i++) pos[i] = pos[keep[i]];
    this.len[layer] = m;
    this.mirror?.compact(layer, keep);
  }

  /** Bytes of K/V held on the GPU for the kept rows, at the real element size (2 B for f16 storage). */
  bytes(): number {
    let rows = 0;
    for (let l = 0; l < this.shape.nLayers; l++) rows += this.len[l];
    return rows * this.kvDim * 2 * this.elemBytes;
  }

  /** Stored elements (f32 or f16 bits) for `values`, rounded to f16 when the precision is f16. */
  private encode(values: Float32Array): Uint8Array<ArrayBuffer> {
    if (this.storage === "f16") {
      const b = f32ToF16Bits(values);
      return new Uint8Array(b.buffer as ArrayBuffer, b.byteOffset, b.byteLength);
    }
    const f = new Float32Array(values);
    if (this.storage === "f32r") { for (let i = 0; i < f.length; i++) f[i] = Math.f16round(f[i]); }
    return new Uint8Array(f.buffer);
  }

  /** f32 values of `n` stored elements at byte `offset` of `buf`. */
  private decode(buf: ArrayBuffer, offset: number, n: number): Float32Array {
    if (this.storage === "f16") return f16BitsToF32(new Uint16Array(buf, offset, n));
    return new Float32Array(buf, offset, n);
  }

  toHost(): HostKVCache {
    if (this.freed) throw new Error("webgpu KV: cache was freed");
    if (!this.mirror) {
      throw new Error("webgpu KV: toHost() needs the host mirror (hostMirror: true); use toHostAsync()");
    }
    const host = this.mirror.toHost();
    host.nextPos = this.nextPos; // the owner may have rewound it (KVPolicy.rewind)
    return host;
  }

  /** Read the cache back from the GPU buffers (independent of the host mirror). */
  async toHostAsync(): Promise<HostKVCache> {
    this.check();
    const device = this.kernels.device;
    const d = this.kvDim;
    const L = this.shape.nLayers;
    const eb = this.elemBytes;
    let total = 0;
    for (let l = 0; l < L; l++) total += this.len[l] * (2 * d * eb + 4);
    const out = new HostKVCache(this.shape, 1, this.precision);
    out.nextPos = this.nextPos;
    if (total === 0) return out;
    const staging = device.createBuffer({
      size: total,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const enc = device.createCommandEncoder();
    let off = 0;
    for (let l = 0; l < L; l++) {
      const n = this.len[l];
      if (n === 0) continue;
      enc.copyBufferToBuffer(this.kBuf[l], 0, staging, off, n * d * eb);
      off += n * d * eb;
      enc.copyBufferToBuffer(this.vBuf[l], 0, staging, off, n * d * eb);
      off += n * d * eb;
      enc.copyBufferToBuffer(this.pBuf[l], 0, staging, off, n * 4);
      off += n * 4;
    }
    device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const buf = staging.getMappedRange().slice(0);
    staging.unmap();
    staging.destroy();
    off = 0;
    for (let l = 0; l < L; l++) {
      const n = this.len[l];
      out.reserve(l, n);
      // Set directly (not append): the snapshot holds exactly what the GPU buffers hold.
      out.k[l].set(this.decode(buf, off, n * d));
      off += n * d * eb;
      out.v[l].set(this.decode(buf, off, n * d));
      off += n * d * eb;
      out.pos[l].set(new Int32Array(buf, off, n));
      off += n * 4;
      out.len[l] = n;
    }
    return out;
  }

  loadFrom(host: HostKVCache): void {
    this.check();
    const s = host.shape;
    if (
      s.nLayers !== this.shape.nLayers || s.nKVHeads !== this.shape.nKVHeads ||
      s.headDim !== this.shape.headDim
    ) {
      throw new Error(
        `KV shape mismatch: have ${JSON.stringify(this.shape)}, snapshot has ${JSON.stringify(s)}`,
      );
    }
    const q = this.kernels.device.queue;
    const d = this.kvDim;
    for (let l = 0; l < s.nLayers; l++) {
      const n = host.len[l];
      let cap = MIN_CAPACITY;
      while (cap < n) cap *= 2;
      this.len[l] = 0;
      this.allocLayer(l, cap);
      if (n > 0) {
        if (this.storage === "f32") {
          q.writeBuffer(this.kBuf[l], 0, host.k[l].subarray(0, n * d) as Float32Array<ArrayBuffer>);
          q.writeBuffer(this.vBuf[l], 0, host.v[l].subarray(0, n * d) as Float32Array<ArrayBuffer>);
        } else {
          // f16 precision: round (exact for an f16 snapshot) and store in this cache's element type.
          q.writeBuffer(this.kBuf[l], 0, this.encode(host.k[l].subarray(0, n * d)));
          q.writeBuffer(this.vBuf[l], 0, this.encode(host.v[l].subarray(0, n * d)));
        }
        q.writeBuffer(this.pBuf[l], 0, host.pos[l].subarray(0, n) as Int32Array<ArrayBuffer>);
      }
      this.pos[l].set(host.pos[l].subarray(0, n) as Int32Array<ArrayBuffer>);
      this.len[l] = n;
    }
    this.nextPos = host.nextPos;
    this.mirror?.loadFrom(host);
  }

  free(): void {
    if (this.freed) return;
    for (let l = 0; l < this.shape.nLayers; l++) {
      this.kBuf[l].destroy();
      this.vBuf[l].destroy();
      this.pBuf[l].destroy();
      this.len[l] = 0;
    }
    this.mirror?.free();
    this.freed = true;
  }
}
