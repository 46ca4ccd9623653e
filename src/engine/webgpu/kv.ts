/**
 * The KV cache of one sequence on the GPU: per layer a K, a V and a position buffer (rows 0..len-1 valid),
 * growing by doubling (with a GPU copy). Prune plans are applied in place by `kv_compact.wgsl` (one dispatch
 * per compacted layer), recorded into the forward step that carries the plan (its one submit), or into one
 * submit of their own by `compact()`.
 *
 * Lengths and positions live in the shared host-side index (kv_index.ts) so `positions()` is synchronous. By default the K/V rows are
 * mirrored too (the backend reads the step's new rows back with the logits), so the contract's synchronous
 * `toHost()` works; with `hostMirror: false` use `toHostAsync()` (which always reads the GPU buffers).
 *
 * Precision "f16": every K/V value is rounded to f16 (ties to even, like Math.f16round) as it enters the cache;
 * stored as f16 elements when the device has shader-f16 (storage "f16"), else as f32 words holding the rounded
 * values ("f32r"). Snapshots (`toHost`, `toHostAsync`) are then HostKVCaches of precision "f16", and
 * `loadFrom` rounds what it loads, so an f16 snapshot round trip is exact.
 */
import { HostKVCache, type SequenceKV } from "../../kv/cache.ts";
import { fromF16Bits, toF16Bits } from "../../model/f16.ts";
import { checkShape, KVIndex, type KVShape, type PrunePlan } from "../../kv/kv_index.ts";
import type { KVPrecision } from "../backend.ts";
import { type GpuKernels, kvElementBytes, type KVStorage, StepRecorder } from "./kernels.ts";

const MIN_CAPACITY = 16;
const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

/** Where a step's keep lists sit in its keep buffer: per layer the element offset, or -1 (no dispatch). */
export type KeepOffsets = number[];

export class WebGPUKV implements SequenceKV {
  readonly shape: KVShape;
  readonly kvDim: number;
  /** Element precision of the cached values ("f16": rounded to half precision as they enter the cache). */
  readonly precision: KVPrecision;
  /** How the elements are stored on the GPU. */
  readonly storage: KVStorage;
  /** Bytes per stored K/V element (2 for "f16" storage, else 4). */
  readonly elemBytes: number;
  /** Lengths, positions and nextPos of the rows the GPU buffers hold. */
  readonly index: KVIndex;
  /** Per layer GPU buffers: K and V [cap × kvDim] of `storage` elements, positions [cap] i32. */
  kBuf: GPUBuffer[] = [];
  vBuf: GPUBuffer[] = [];
  pBuf: GPUBuffer[] = [];
  /** Per layer capacity in rows. */
  cap: number[] = [];
  /** Host copy of K/V (null when disabled). */
  readonly mirror: HostKVCache | null;
  /** Set while a forward step that uses this cache is in flight. */
  busy = false;

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
    this.index = new KVIndex(shape.nLayers);
    this.mirror = hostMirror ? new HostKVCache(shape, MIN_CAPACITY, precision) : null;
    for (let l = 0; l < shape.nLayers; l++) this.allocLayer(l, MIN_CAPACITY);
  }

  get nextPos(): number {
    return this.index.nextPos;
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
  }

  /** True until free(); throws after it. */
  live(): boolean {
    return this.index.live();
  }

  private check(): void {
    this.live();
    if (this.busy) throw new Error("webgpu KV: cache is in use by a forward step in flight");
  }

  length(layer: number): number {
    return this.index.length(layer);
  }

  positions(layer: number): Int32Array {
    return this.index.positions(layer);
  }

  /**
   * Make room for `extra` rows in every layer after `plan` (if any) is applied, recording the copies of grown
   * layers (all rows held now) into `encoder`. Returns the replaced buffers (destroy them after the submit).
   */
  reserve(encoder: GPUCommandEncoder, extra: number, plan?: PrunePlan): GPUBuffer[] {
    this.live();
    const retired: GPUBuffer[] = [];
    for (let l = 0; l < this.shape.nLayers; l++) {
      const n = this.index.len[l];
      const need = Math.max(n, (plan?.[l]?.length ?? n) + extra);
      if (need <= this.cap[l]) continue;
      let next = Math.max(MIN_CAPACITY, this.cap[l]);
      while (next < need) next *= 2;
      const [k, v, p] = this.newBuffers(next, `kv L${l}`);
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
    }
    return retired;
  }

  /**
   * Where `plan`'s keep lists go in a step's keep buffer, from element `base` on: per layer the offset of its
   * list, or -1 where the layer needs no dispatch (unchanged, emptied, or only its newest rows dropped). The
   * lists themselves are written with `writeKeep`. Returns the offsets and the next free element.
   */
  static keepOffsets(plan: PrunePlan, base: number): { offsets: KeepOffsets; end: number } {
    let o = base;
    const offsets = plan.map((keep) => {
      if (!keep || firstMoved(keep) === keep.length) return -1;
      const at = o;
      o += keep.length;
      return at;
    });
    return { offsets, end: o };
  }

  static writeKeep(plan: PrunePlan, offsets: KeepOffsets, into: Uint32Array): void {
    plan.forEach((keep, l) => keep && offsets[l] >= 0 && into.set(keep, offsets[l]));
  }

  /** Record the in-place compaction dispatches of `plan` (one per layer that moves rows) into `rec`. */
  recordCompact(rec: StepRecorder, plan: PrunePlan, keepBuf: GPUBuffer, offsets: KeepOffsets): void {
    const words = (this.kvDim * this.elemBytes) / 4;
    const pipe = this.kernels.pipeline("kv_compact");
    plan.forEach((keep, l) => {
      if (!keep || offsets[l] < 0) return;
      rec.threads(pipe, words, ["P", keepBuf, this.kBuf[l], this.vBuf[l], this.pBuf[l]], [
        keep.length,
        words,
        firstMoved(keep),
        offsets[l],
      ]);
    });
  }

  /** Record, once the GPU has the plan recorded: lengths, positions and the host mirror follow it. */
  commitPlan(plan: PrunePlan): void {
    this.index.compact(plan);
    this.mirror?.compact(plan);
  }

  /**
   * Record `t` appended tokens (after the step ran): lengths, positions, host mirror rows (`rows` holds the
   * values read back from this cache's buffers, as f32: per layer t K rows then t V rows).
   */
  commitAppend(t: number, rows: Float32Array | null, rowsOffset: number): void {
    const d = this.kvDim;
    if (this.mirror && rows) {
      for (let l = 0; l < this.shape.nLayers; l++) {
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
    this.index.append(t);
    if (this.mirror) this.mirror.nextPos = this.nextPos;
  }

  /** Apply `plan` now: every layer's dispatches in one submit. */
  compact(plan: PrunePlan): void {
    this.check();
    this.index.check(plan);
    const { offsets, end } = WebGPUKV.keepOffsets(plan, 0);
    if (end > 0) {
      const k = this.kernels;
      const keep = new Uint32Array(end);
      WebGPUKV.writeKeep(plan, offsets, keep);
      const keepBuf = k.device.createBuffer({
        label: "compact keep",
        size: Math.max(16, keep.byteLength),
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      });
      k.device.queue.writeBuffer(keepBuf, 0, keep);
      const rec = new StepRecorder(k);
      this.recordCompact(rec, plan, keepBuf, offsets);
      const enc = k.device.createCommandEncoder({ label: "compact" });
      rec.encode(enc);
      k.device.queue.submit([enc.finish()]);
      rec.release();
      keepBuf.destroy();
    }
    this.commitPlan(plan);
  }

  /** Rewinding keeps a prefix of every layer: no dispatch (keepOffsets skips layers losing their newest rows). */
  rewind(pos: number): PrunePlan {
    const plan = this.index.rewindPlan(pos);
    this.compact(plan);
    this.index.nextPos = pos;
    if (this.mirror) this.mirror.nextPos = pos;
    return plan;
  }

  /** Bytes of K/V held on the GPU for the kept rows, at the real element size (2 B for f16 storage). */
  bytes(): number {
    return this.index.rows() * this.kvDim * 2 * this.elemBytes;
  }

  /** Stored elements (f32 or f16 bits) for `values`, rounded to f16 when the precision is f16. */
  private encode(values: Float32Array): Uint8Array<ArrayBuffer> {
    if (this.storage === "f16") {
      const b = toF16Bits(values);
      return new Uint8Array(b.buffer as ArrayBuffer, b.byteOffset, b.byteLength);
    }
    const f = new Float32Array(values);
    if (this.storage === "f32r") { for (let i = 0; i < f.length; i++) f[i] = Math.f16round(f[i]); }
    return new Uint8Array(f.buffer);
  }

  /** f32 values of `n` stored elements at byte `offset` of `buf`. */
  private decode(buf: ArrayBuffer, offset: number, n: number): Float32Array {
    if (this.storage === "f16") return fromF16Bits(new Uint16Array(buf, offset, n));
    return new Float32Array(buf, offset, n);
  }

  toHost(): HostKVCache {
    this.live();
    if (!this.mirror) {
      throw new Error("webgpu KV: toHost() needs the host mirror (hostMirror: true); use toHostAsync()");
    }
    return this.mirror.toHost();
  }

  /** Read the cache back from the GPU buffers (independent of the host mirror). */
  async toHostAsync(): Promise<HostKVCache> {
    this.check();
    const device = this.kernels.device;
    const d = this.kvDim;
    const L = this.shape.nLayers;
    const eb = this.elemBytes;
    let total = 0;
    const len = this.index.len;
    for (let l = 0; l < L; l++) total += len[l] * (2 * d * eb + 4);
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
      const n = len[l];
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
      const n = len[l];
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
    checkShape(this.shape, host.shape);
    const q = this.kernels.device.queue;
    const d = this.kvDim;
    this.index.load(host.len, host.pos, host.nextPos);
    for (let l = 0; l < this.shape.nLayers; l++) {
      const n = host.len[l];
      let cap = MIN_CAPACITY;
      while (cap < n) cap *= 2;
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
    }
    this.mirror?.loadFrom(host);
  }

  free(): void {
    if (this.kBuf.length === 0) return;
    for (let l = 0; l < this.shape.nLayers; l++) {
      this.kBuf[l].destroy();
      this.vBuf[l].destroy();
      this.pBuf[l].destroy();
    }
    this.kBuf = [];
    this.vBuf = [];
    this.pBuf = [];
    this.mirror?.free();
    this.index.free();
  }
}

/** The first kept index that is not where it stands (rows before it stay in place). */
function firstMoved(keep: Int32Array): number {
  let i = 0;
  while (i < keep.length && keep[i] === i) i++;
  return i;
}
