/**
 * Weight upload for the WebGPU backend: turns model tensors into GPU storage buffers in a layout the
 * `shaders/weights_*.wgsl` accessors read.
 *
 * - F32 rows as is; F16 rows as is when the device has `shader-f16`, else converted to f32.
 * - Q8_0 / Q4_0 repacked into u32-aligned blocks (scale in a whole u32 + the quant bytes) and dequantized
 *   in the shader.
 * - BF16, and groups whose tensors differ in type, are converted to f32 here.
 * - Several tensors with the same column count can be concatenated along rows into one matrix (q|k|v,
 *   gate|up), so one matmul dispatch serves them all.
 * - A matrix larger than the device's max storage binding is split into row chunks (one buffer each).
 */
import { GGMLType, type Tensor } from "../../model/types.ts";
import { dequantize, ggmlTypeName, rowBytes as ggmlRowBytes } from "../../model/ggml.ts";

export type GpuWeightType = "f32" | "f16" | "q8_0" | "q4_0";

export interface GpuMatrixChunk {
  buffer: GPUBuffer;
  row0: number;
  rows: number;
}

export interface GpuMatrix {
  type: GpuWeightType;
  rows: number;
  cols: number;
  chunks: GpuMatrixChunk[];
  /** Bytes held on the GPU. */
  bytes: number;
}

export interface UploadOptions {
  /** Device has shader-f16 (keep F16 weights as f16). */
  f16: boolean;
  /** Max bytes of one storage binding. */
  maxBinding: number;
}

function rowsCols(t: Tensor): [number, number] {
  if (t.shape.length === 1) return [1, t.shape[0]];
  const cols = t.shape[t.shape.length - 1];
  const rows = t.shape.slice(0, -1).reduce((a, b) => a * b, 1);
  return [rows, cols];
}

/** A tensor's values as float32 (any type ggml.ts can decode). */
export function tensorToF32(t: Tensor): Float32Array {
  const n = t.shape.reduce((a, b) => a * b, 1);
  return dequantize(t.type, t.data, n);
}

function packedRowBytes(type: GpuWeightType, cols: number): number {
  switch (type) {
    case "f32":
      return cols * 4;
    case "f16":
      return cols * 2;
    case "q8_0":
      return (cols / 32) * 36;
    case "q4_0":
      return (cols / 32) * 20;
  }
}

/** Repack `rows` rows of ggml-encoded bytes `src` into `dst` (at byte offset `at`) in the GPU layout. */
function packRows(
  type: GpuWeightType,
  srcType: GGMLType,
  src: Uint8Array,
  rows: number,
  cols: number,
  dst: Uint8Array,
  at: number,
) {
  if (type === "f32") {
    if (srcType === GGMLType.F32) dst.set(src.subarray(0, rows * cols * 4), at);
    else {
      const f = dequantize(srcType, src, rows * cols);
      dst.set(new Uint8Array(f.buffer, f.byteOffset, f.byteLength), at);
    }
    return;
  }
  if (type === "f16") {
    dst.set(src.subarray(0, rows * cols * 2), at);
    return;
  }
  const inBlock = type === "q8_0" ? 34 : 18;
  const outBlock = inBlock + 2;
  const nb = rows * (cols / 32);
  for (let b = 0; b < nb; b++) {
    const s = b * inBlock, d = at + b * outBlock;
    dst[d] = src[s];
    dst[d + 1] = src[s + 1];
    // d+2, d+3 stay zero (pad the f16 scale to a whole u32)
    dst.set(src.subarray(s + 2, s + inBlock), d + 4);
  }
}

/**
 * Upload tensors (concatenated along rows; all must share the column count) as one GPU matrix.
 */
export function uploadMatrix(
  device: GPUDevice,
  label: string,
  tensors: Tensor[],
  opts: UploadOptions,
): GpuMatrix {
  const dims = tensors.map(rowsCols);
  const cols = dims[0][1];
  for (let i = 0; i < tensors.length; i++) {
    if (dims[i][1] !== cols) {
      throw new Error(`webgpu: ${label}: tensors ${tensors.map((t) => t.name).join(", ")} differ in columns`);
    }
  }
  const rows = dims.reduce((a, d) => a + d[0], 0);
  const types = new Set(tensors.map((t) => t.type));
  let type: GpuWeightType = "f32";
  if (types.size === 1) {
    const t = tensors[0].type;
    if (t === GGMLType.F16 && opts.f16) type = "f16";
    else if (t === GGMLType.Q8_0 && cols % 32 === 0) type = "q8_0";
    else if (t === GGMLType.Q4_0 && cols % 32 === 0) type = "q4_0";
  }
  for (const t of tensors) {
    const ok = t.type === GGMLType.F32 || t.type === GGMLType.F16 || t.type === GGMLType.BF16 ||
      t.type === GGMLType.Q8_0 || t.type === GGMLType.Q4_0;
    if (!ok) {
      throw new Error(
        `webgpu: tensor ${t.name} has type ${ggmlTypeName(t.type)}; supported: F32, F16, BF16, Q8_0, Q4_0`,
      );
    }
  }
  const rowBytes = packedRowBytes(type, cols);
  const chunkRows = Math.floor(opts.maxBinding / rowBytes);
  if (chunkRows < 1) {
    throw new Error(`webgpu: ${label}: one row (${rowBytes} B) exceeds the max binding size`);
  }

  // Pack everything into one host buffer first (simple; the tensors are views into the model file).
  const all = new Uint8Array(rows * rowBytes);
  let r = 0;
  for (let i = 0; i < tensors.length; i++) {
    const t = tensors[i];
    const tr = dims[i][0];
    if (type === "f32" && t.type !== GGMLType.F32) {
      // Convert row by row to keep peak memory small.
      const srcRow = ggmlRowBytes(t.type, cols);
      for (let k = 0; k < tr; k++) {
        packRows(
          type,
          t.type,
          t.data.subarray(k * srcRow, (k + 1) * srcRow),
          1,
          cols,
          all,
          (r + k) * rowBytes,
        );
      }
    } else {
      packRows(type, t.type, t.data, tr, cols, all, r * rowBytes);
    }
    r += tr;
  }

  const chunks: GpuMatrixChunk[] = [];
  for (let row0 = 0; row0 < rows; row0 += chunkRows) {
    const n = Math.min(chunkRows, rows - row0);
    const bytes = n * rowBytes;
    const size = Math.max(16, Math.ceil(bytes / 4) * 4);
    const buffer = device.createBuffer({
      label: `${label}[${row0}]`,
      size,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      mappedAtCreation: true,
    });
    new Uint8Array(buffer.getMappedRange()).set(all.subarray(row0 * rowBytes, row0 * rowBytes + bytes));
    buffer.unmap();
    chunks.push({ buffer, row0, rows: n });
  }
  return { type, rows, cols, chunks, bytes: rows * rowBytes };
}

/** Upload a float32 vector (norm weights, biases, …). */
export function uploadF32(device: GPUDevice, label: string, data: Float32Array): GPUBuffer {
  const size = Math.max(16, data.byteLength);
  const buffer = device.createBuffer({
    label,
    size,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
    mappedAtCreation: true,
  });
  new Float32Array(buffer.getMappedRange()).set(data);
  buffer.unmap();
  return buffer;
}

export function destroyMatrix(m: GpuMatrix): void {
  for (const c of m.chunks) c.buffer.destroy();
}
