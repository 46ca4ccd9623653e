/**
 * WGSL kernels of the WebGPU backend: loads `shaders/*.wgsl`, builds compute pipelines (one variant per
 * weight encoding for the kernels that read weights, one per KV storage for the kernels that touch the KV
 * cache), and records dispatches of one step so they can be encoded into a single compute pass with their
 * uniform parameters packed into one buffer.
 */
import type { GpuWeightType } from "./weights.ts";

const KERNELS = [
  "matmul",
  "embedding",
  "rmsnorm",
  "rope",
  "kv_append",
  "kv_compact",
  "attn_scores",
  "softmax",
  "attn_out",
  "attn_score_sum",
  "attn_decode",
  "silu_mul",
] as const;
export type KernelName = typeof KERNELS[number];
const WEIGHT_KERNELS = new Set<KernelName>(["matmul", "embedding"]);
const WEIGHT_TYPES: GpuWeightType[] = ["f32", "f16", "q8_0", "q4_0"];

/**
 * How a KV cache stores its elements on the GPU: "f32" as computed; "f32r" f32 words holding values rounded to
 * f16 (an f16 cache on a device without shader-f16); "f16" half-precision elements (needs shader-f16).
 */
export type KVStorage = "f32" | "f32r" | "f16";
/** Kernels reading K/V rows (element type `kv_t`): one pipeline per element type. */
const KV_READ_KERNELS = new Set<KernelName>(["attn_scores", "attn_out", "attn_decode"]);
const KV_MODE: Record<KVStorage, number> = { f32: 0, f32r: 1, f16: 2 };

/** Bytes per stored K/V element. */
export function kvElementBytes(storage: KVStorage): number {
  return storage === "f16" ? 2 : 4;
}

export const WORKGROUP = 64;

async function readShader(name: string): Promise<string> {
  return await Deno.readTextFile(new URL(`../../../shaders/${name}.wgsl`, import.meta.url));
}

/** Device-side context shared by the backend and its KV caches. */
export class GpuKernels {
  readonly device: GPUDevice;
  readonly f16: boolean;
  readonly maxBinding: number;
  readonly maxGroups: number;
  readonly uniformAlign: number;
  private sources = new Map<string, string>();
  private pipelines = new Map<string, GPUComputePipeline>();

  private constructor(device: GPUDevice, f16: boolean) {
    this.device = device;
    this.f16 = f16;
    this.maxBinding = Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize);
    this.maxGroups = device.limits.maxComputeWorkgroupsPerDimension;
    this.uniformAlign = Math.max(256, device.limits.minUniformBufferOffsetAlignment);
  }

  static async load(device: GPUDevice, f16: boolean): Promise<GpuKernels> {
    const k = new GpuKernels(device, f16);
    for (const name of KERNELS) k.sources.set(name, await readShader(name));
    for (const t of WEIGHT_TYPES) {
      if (t === "f16" && !f16) continue;
      k.sources.set(`weights_${t}`, await readShader(`weights_${t}`));
    }
    return k;
  }

  /**
   * The pipeline of `name`, compiled on first use. Weight kernels need the weight encoding; kv_append and the
   * kernels reading K/V take the cache's KV storage (default "f32").
   */
  pipeline(name: KernelName, variant?: GpuWeightType | KVStorage): GPUComputePipeline {
    const kvStore = (variant ?? "f32") as KVStorage;
    const key = WEIGHT_KERNELS.has(name)
      ? `${name}:${variant}`
      : name === "kv_append"
      ? `${name}:${kvStore}`
      : KV_READ_KERNELS.has(name)
      ? `${name}:${kvStore === "f16" ? "f16" : "f32"}`
      : name;
    let p = this.pipelines.get(key);
    if (p) return p;
    let code = this.sources.get(name)!;
    if (WEIGHT_KERNELS.has(name)) {
      const acc = this.sources.get(`weights_${variant}`);
      if (!acc) throw new Error(`webgpu: no weight accessor for ${variant} on this device`);
      code = acc + "\n" + code;
    } else if (name === "kv_append") {
      if (!(kvStore in KV_MODE)) throw new Error(`webgpu: unknown KV storage ${kvStore}`);
      code = `const KV_MODE: u32 = ${KV_MODE[kvStore]}u;\n` + code;
    } else if (KV_READ_KERNELS.has(name)) {
      if (kvStore === "f16" && !this.f16) throw new Error("webgpu: f16 KV storage needs shader-f16");
      code = (kvStore === "f16" ? "enable f16;\nalias kv_t = f16;\n" : "alias kv_t = f32;\n") + code;
    }
    const module = this.device.createShaderModule({ label: key, code });
    p = this.device.createComputePipeline({
      label: key,
      layout: "auto",
      compute: { module, entryPoint: "main" },
    });
    this.pipelines.set(key, p);
    return p;
  }

  /** Workgroup grid for `groups` workgroups, tiled into 2D when above the per-dimension limit. */
  grid(groups: number): [number, number] {
    if (groups <= this.maxGroups) return [Math.max(1, groups), 1];
    const y = Math.ceil(groups / this.maxGroups);
    if (y > this.maxGroups) throw new Error(`webgpu: dispatch of ${groups} workgroups exceeds device limits`);
    return [Math.ceil(groups / y), y];
  }
}

/** A float parameter (the WGSL struct field is f32). */
export class F32 {
  constructor(readonly value: number) {}
}
export type Param = number | F32;
/** A binding: a whole buffer, or the step's uniform parameters ("P"). */
export type Binding = GPUBuffer | "P";

interface Op {
  pipeline: GPUComputePipeline;
  bindings: Binding[];
  slot: number;
  grid: [number, number];
}

/** Records the dispatches of one step; `encode` writes their parameters and encodes one compute pass. */
export class StepRecorder {
  private ops: Op[] = [];
  private params: Param[][] = [];
  private paramBuf: GPUBuffer | null = null;

  constructor(private readonly k: GpuKernels) {}

  get size(): number {
    return this.ops.length;
  }

  /** Dispatch over `threads` invocations (workgroups of WORKGROUP). */
  threads(pipeline: GPUComputePipeline, threads: number, bindings: Binding[], params: Param[]): void {
    this.groups(pipeline, Math.ceil(threads / WORKGROUP), bindings, params);
  }

  /** Dispatch `groups` workgroups (row-per-workgroup kernels). */
  groups(pipeline: GPUComputePipeline, groups: number, bindings: Binding[], params: Param[]): void {
    if (groups <= 0) return;
    this.ops.push({ pipeline, bindings, slot: this.params.length, grid: this.k.grid(groups) });
    this.params.push(params);
  }

  /** Write parameters (one queue.writeBuffer) and encode all dispatches into one compute pass. */
  encode(encoder: GPUCommandEncoder): void {
    if (this.ops.length === 0) return;
    const device = this.k.device;
    const stride = this.k.uniformAlign;
    const size = this.params.length * stride;
    const data = new ArrayBuffer(size);
    const u32 = new Uint32Array(data), f32 = new Float32Array(data);
    for (let s = 0; s < this.params.length; s++) {
      const base = (s * stride) / 4;
      const ps = this.params[s];
      for (let i = 0; i < ps.length; i++) {
        const p = ps[i];
        if (p instanceof F32) f32[base + i] = p.value;
        else u32[base + i] = p >>> 0;
      }
    }
    this.paramBuf = device.createBuffer({
      label: "step params",
      size,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    device.queue.writeBuffer(this.paramBuf, 0, data);
    const pass = encoder.beginComputePass();
    for (const op of this.ops) {
      const entries: GPUBindGroupEntry[] = op.bindings.map((b, i) => ({
        binding: i,
        resource: b === "P"
          ? { buffer: this.paramBuf!, offset: op.slot * stride, size: stride }
          : { buffer: b },
      }));
      const bg = device.createBindGroup({ layout: op.pipeline.getBindGroupLayout(0), entries });
      pass.setPipeline(op.pipeline);
      pass.setBindGroup(0, bg);
      pass.dispatchWorkgroups(op.grid[0], op.grid[1]);
    }
    pass.end();
  }

  /** Release the parameter buffer (call after the step's submit). */
  release(): void {
    this.paramBuf?.destroy();
    this.paramBuf = null;
  }
}
