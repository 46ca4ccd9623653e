/**
 * Quantization on worker threads: a tensor is cut into runs of whole blocks (ggml's reference quantizers
 * encode every block on its own), the runs are encoded in parallel and joined, so the bytes are exactly
 * `quantize(type, x)`'s. Small tensors are encoded on the calling thread.
 */
import { GGML_TYPES, quantize } from "../ggml.ts";
import type { GGMLType } from "../types.ts";

/** Below this many elements a tensor is not worth shipping to workers. */
const MIN_PARALLEL = 1 << 16;

interface Pending {
  resolve: (out: Uint8Array) => void;
  reject: (e: Error) => void;
}

export class QuantizePool {
  readonly threads: number;
  private workers: Worker[] = [];
  private pending = new Map<number, Pending>();
  private nextId = 0;

  /** `threads` workers (default: one per core); 1 means no workers at all. */
  constructor(threads = navigator.hardwareConcurrency || 1) {
    if (!Number.isInteger(threads) || threads < 1) {
      throw new RangeError(`threads must be ≥ 1, got ${threads}`);
    }
    this.threads = threads;
  }

  private worker(i: number): Worker {
    while (this.workers.length <= i) {
      const w = new Worker(new URL("./quantize_worker.ts", import.meta.url).href, { type: "module" });
      w.onmessage = (e: MessageEvent<{ id: number; out?: Uint8Array; error?: string }>) => {
        const p = this.pending.get(e.data.id);
        if (!p) return;
        this.pending.delete(e.data.id);
        if (e.data.out) p.resolve(e.data.out);
        else p.reject(new Error(e.data.error ?? "quantize worker failed"));
      };
      w.onerror = (e) => {
        e.preventDefault();
        for (const p of this.pending.values()) p.reject(new Error(`quantize worker: ${e.message}`));
        this.pending.clear();
      };
      this.workers.push(w);
    }
    return this.workers[i];
  }

  private run(i: number, type: GGMLType, x: Float32Array): Promise<Uint8Array> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker(i).postMessage({ id, type, x });
    });
  }

  /** The bytes of `quantize(type, x)`, computed on the workers. */
  async quantize(type: GGMLType, x: Float32Array): Promise<Uint8Array> {
    const info = GGML_TYPES[type];
    if (this.threads === 1 || x.length < MIN_PARALLEL || !info.quantize) return quantize(type, x);
    if (x.length % info.blockSize !== 0) return quantize(type, x); // let quantize() report it
    // runs of whole blocks, handed out to whichever worker is free
    const blocks = x.length / info.blockSize;
    const per = Math.max(Math.ceil(MIN_PARALLEL / info.blockSize), Math.ceil(blocks / (4 * this.threads)));
    const out = new Uint8Array(blocks * info.typeSize);
    let next = 0;
    const drain = async (w: number) => {
      while (next < blocks) {
        const b = next, e = Math.min(blocks, b + per);
        next = e;
        out.set(await this.run(w, type, x.slice(b * info.blockSize, e * info.blockSize)), b * info.typeSize);
      }
    };
    await Promise.all(Array.from({ length: this.threads }, (_, w) => drain(w)));
    return out;
  }

  /** Stop the workers (the pool can be used again; it starts new ones). */
  close(): void {
    for (const w of this.workers) w.terminate();
    this.workers = [];
    for (const p of this.pending.values()) p.reject(new Error("quantize pool closed"));
    this.pending.clear();
  }
}
