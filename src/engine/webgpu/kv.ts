/**
 * The KV cache of one sequence on the GPU: per layer a K, a V and a position buffer (rows 0..len-1 valid),
 * growing by doubling (with a GPU copy) and compacted on the GPU by a gather kernel.
 *
 * Positions (small) are mirrored on the host so `positions()` is synchronous. By default the K/V rows are
 * mirrored too (the backend reads the step's new rows back with the logits), so the contract's synchronous
 * `toHost()` works; with `hostMirror: false` use `toHostAsync()` (which always reads the GPU buffers).
 */
import { HostKVCache, type KVShape, type SequenceKV } from "../../kv/cache.ts";
import { type GpuKernels, StepRecorder } from "./kernels.ts";

const MIN_CAPACITY = 16;
const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

export class WebGPUKV implements SequenceKV {
  readonly shape: KVShape;
  readonly kvDim: number;
  nextPos = 0;
  /** Per layer GPU buffers: K and V [cap × kvDim] f32, positions [cap] i32. */
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

  constructor(readonly kernels: GpuKernels, shape: KVShape, hostMirror: boolean) {
    this.shape = { ...shape };
    this.kvDim = shape.nKVHeads * shape.headDim;
    this.len = new Int32Array(shape.nLayers);
    this.mirror = hostMirror ? new HostKVCache(shape) : null;
    for (let l = 0; l < shape.nLayers; l++) this.allocLayer(l, MIN_CAPACITY);
  }

  private newBuffers(rows: number, label: string): [GPUBuffer, GPUBuffer, GPUBuffer] {
    const bytes = rows * this.kvDim * 4;
    if (bytes > this.kernels.maxBinding) {
      throw new Error(
        `webgpu KV: ${rows} cached rows × ${this.kvDim} floats exceed the device's max storage binding (${this.kernels.maxBinding} B)`,
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
        encoder.copyBufferToBuffer(this.kBuf[l], 0, k, 0, n * this.kvDim * 4);
        encoder.copyBufferToBuffer(this.vBuf[l], 0, v, 0, n * this.kvDim * 4);
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

  /** Record `t` appended tokens (after the step ran): lengths, positions, host mirror rows. */
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
        m * this.kvDim,
        ["P", keepBuf, this.kBuf[layer], this.vBuf[layer], this.pBuf[layer], kd, vd, pd],
        [m, this.kvDim],
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

  bytes(): number {
    let rows = 0;
    for (let l = 0; l < this.shape.nLayers; l++) rows += this.len[l];
    return rows * this.kvDim * 2 * 4;
  }

  toHost(): HostKVCache {
    if (this.freed) throw new Error("webgpu KV: cache was freed");
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
    let total = 0;
    for (let l = 0; l < L; l++) total += this.len[l] * (2 * d + 1);
    const out = new HostKVCache(this.shape, 1);
    out.nextPos = this.nextPos;
    if (total === 0) return out;
    const staging = device.createBuffer({
      size: total * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const enc = device.createCommandEncoder();
    let off = 0;
    for (let l = 0; l < L; l++) {
      const n = this.len[l];
      if (n === 0) continue;
      enc.copyBufferToBuffer(this.kBuf[l], 0, staging, off * 4, n * d * 4);
      off += n * d;
      enc.copyBufferToBuffer(this.vBuf[l], 0, staging, off * 4, n * d * 4);
      off += n * d;
      enc.copyBufferToBuffer(this.pBuf[l], 0, staging, off * 4, n * 4);
      off += n;
    }
    device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const buf = staging.getMappedRange().slice(0);
    staging.unmap();
    staging.destroy();
    const f = new Float32Array(buf), p = new Int32Array(buf);
    off = 0;
    for (let l = 0; l < L; l++) {
      const n = this.len[l];
      out.reserve(l, n);
      out.k[l].set(f.subarray(off, off + n * d));
      off += n * d;
      out.v[l].set(f.subarray(off, off + n * d));
      off += n * d;
      out.pos[l].set(p.subarray(off, off + n));
      off += n;
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
        q.writeBuffer(this.kBuf[l], 0, host.k[l].subarray(0, n * d) as Float32Array<ArrayBuffer>);
        q.writeBuffer(this.vBuf[l], 0, host.v[l].subarray(0, n * d) as Float32Array<ArrayBuffer>);
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
