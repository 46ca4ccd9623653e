/**
 * ggml tensor types: the size table, half-precision conversions, and (de)quantization of the block formats
 * this runtime computes with (F32, F16, BF16, Q8_0, Q4_0), bit-compatible with ggml's reference code.
 */
import { GGMLType } from "./types.ts";
import { f16ToF32, f32ToF16 } from "./f16.ts";
import { ModelFormatError } from "./errors.ts";

export interface GGMLTypeInfo {
  name: string;
  /** Elements per block (1 for plain types). */
  blockSize: number;
  /** Bytes per block. */
  typeSize: number;
}

/** Block layout of every type in the GGMLType enum (sizes as in ggml.c's type_traits). */
export const GGML_TYPES: Readonly<Record<GGMLType, GGMLTypeInfo>> = {
  [GGMLType.F32]: { name: "F32", blockSize: 1, typeSize: 4 },
  [GGMLType.F16]: { name: "F16", blockSize: 1, typeSize: 2 },
  [GGMLType.Q4_0]: { name: "Q4_0", blockSize: 32, typeSize: 18 },
  [GGMLType.Q4_1]: { name: "Q4_1", blockSize: 32, typeSize: 20 },
  [GGMLType.Q5_0]: { name: "Q5_0", blockSize: 32, typeSize: 22 },
  [GGMLType.Q5_1]: { name: "Q5_1", blockSize: 32, typeSize: 24 },
  [GGMLType.Q8_0]: { name: "Q8_0", blockSize: 32, typeSize: 34 },
  [GGMLType.Q8_1]: { name: "Q8_1", blockSize: 32, typeSize: 36 },
  [GGMLType.Q2_K]: { name: "Q2_K", blockSize: 256, typeSize: 84 },
  [GGMLType.Q3_K]: { name: "Q3_K", blockSize: 256, typeSize: 110 },
  [GGMLType.Q4_K]: { name: "Q4_K", blockSize: 256, typeSize: 144 },
  [GGMLType.Q5_K]: { name: "Q5_K", blockSize: 256, typeSize: 176 },
  [GGMLType.Q6_K]: { name: "Q6_K", blockSize: 256, typeSize: 210 },
  [GGMLType.Q8_K]: { name: "Q8_K", blockSize: 256, typeSize: 292 },
  [GGMLType.I8]: { name: "I8", blockSize: 1, typeSize: 1 },
  [GGMLType.I16]: { name: "I16", blockSize: 1, typeSize: 2 },
  [GGMLType.I32]: { name: "I32", blockSize: 1, typeSize: 4 },
  [GGMLType.I64]: { name: "I64", blockSize: 1, typeSize: 8 },
  [GGMLType.F64]: { name: "F64", blockSize: 1, typeSize: 8 },
  [GGMLType.BF16]: { name: "BF16", blockSize: 1, typeSize: 2 },
};

/** The layout of a type id, or undefined for ids this runtime does not know. */
export function ggmlTypeInfo(type: number): GGMLTypeInfo | undefined {
  return Object.hasOwn(GGML_TYPES, type) ? GGML_TYPES[type as GGMLType] : undefined;
}

/** "Q8_0" etc.; "type 123" for unknown ids. */
export function ggmlTypeName(type: number): string {
  return ggmlTypeInfo(type)?.name ?? `type ${type}`;
}

/** The GGMLType whose name is `name` (case-insensitive), or undefined. */
export function ggmlTypeFromName(name: string): GGMLType | undefined {
  const up = name.toUpperCase();
  for (const [id, info] of Object.entries(GGML_TYPES)) if (info.name === up) return Number(id) as GGMLType;
  return undefined;
}

function infoOrThrow(type: number): GGMLTypeInfo {
  const info = ggmlTypeInfo(type);
  if (!info) throw new ModelFormatError(`unknown ggml tensor type ${type}`);
  return info;
}

/** Bytes of a row of `n` elements; `n` must be a multiple of the type's block size. */
export function rowBytes(type: GGMLType, n: number): number {
  const info = infoOrThrow(type);
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`rowBytes: bad element count ${n}`);
  if (n % info.blockSize !== 0) {
    throw new ModelFormatError(
      `${info.name} rows need a multiple of ${info.blockSize} elements, got ${n}`,
    );
  }
  return (n / info.blockSize) * info.typeSize;
}

/** Bytes of a whole tensor of row-major `shape` (rows of the innermost dim). */
export function tensorByteSize(type: GGMLType, shape: readonly number[]): number {
  if (shape.length === 0) return rowBytes(type, 1);
  const inner = shape[shape.length - 1];
  let rows = 1;
  for (let i = 0; i < shape.length - 1; i++) rows *= shape[i];
  return rowBytes(type, inner) * rows;
}

// ---------------------------------------------------------------------------------------------------------
// bfloat16 conversions (IEEE half: f16.ts)

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** bfloat16 bits -> number. */
export function bf16ToF32(h: number): number {
  u32Scratch[0] = (h & 0xffff) << 16;
  return f32Scratch[0];
}

/** number -> bfloat16 bits, round to nearest even (NaN stays a quiet NaN), as ggml's fp32_to_bf16. */
export function f32ToBF16(x: number): number {
  f32Scratch[0] = x;
  const b = u32Scratch[0];
  if ((b & 0x7fffffff) > 0x7f800000) return ((b >>> 16) | 0x40) & 0xffff;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

let f16Table: Float32Array | undefined;
function f16Lut(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) f16Table[i] = f16ToF32(i);
  }
  return f16Table;
}

// ---------------------------------------------------------------------------------------------------------
// Dequantization

/** Decode `n` elements of `type` from `bytes` (row-major, blocks of the innermost dim) to float32. */
export function dequantize(type: GGMLType, bytes: Uint8Array, n: number): Float32Array {
  const need = rowBytes(type, n);
  if (bytes.byteLength < need) {
    throw new ModelFormatError(
      `dequantize ${ggmlTypeName(type)}: ${n} elements need ${need} bytes, got ${bytes.byteLength}`,
    );
  }
  const out = new Float32Array(n);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, need);
  switch (type) {
    case GGMLType.F32: {
      if (bytes.byteOffset % 4 === 0) out.set(new Float32Array(bytes.buffer, bytes.byteOffset, n));
      else for (let i = 0; i < n; i++) out[i] = dv.getFloat32(i * 4, true);
      return out;
    }
    case GGMLType.F16: {
      const lut = f16Lut();
      for (let i = 0; i < n; i++) out[i] = lut[bytes[2 * i] | (bytes[2 * i + 1] << 8)];
      return out;
    }
    case GGMLType.BF16: {
      const u = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) u[i] = (bytes[2 * i] | (bytes[2 * i + 1] << 8)) << 16;
      return out;
    }
    case GGMLType.Q8_0: {
      const lut = f16Lut();
      const nb = n / 32;
      for (let b = 0; b < nb; b++) {
        const o = b * 34;
        const d = lut[bytes[o] | (bytes[o + 1] << 8)];
        for (let j = 0; j < 32; j++) out[b * 32 + j] = ((bytes[o + 2 + j] << 24) >> 24) * d;
      }
      return out;
    }
    case GGMLType.Q4_0: {
      const lut = f16Lut();
      const nb = n / 32;
      for (let b = 0; b < nb; b++) {
        const o = b * 18;
        const d = lut[bytes[o] | (bytes[o + 1] << 8)];
        const base = b * 32;
        for (let j = 0; j < 16; j++) {
          const q = bytes[o + 2 + j];
          out[base + j] = ((q & 0x0f) - 8) * d;
          out[base + j + 16] = ((q >>> 4) - 8) * d;
        }
      }
      return out;
    }
    default:
      throw new ModelFormatError(
        `dequantize: tensor type ${
          ggmlTypeName(type)
        } is not supported (supported: F32, F16, BF16, Q8_0, Q4_0)`,
      );
  }
}

/** Whether `dequantize` / `quantize` handle `type`. */
export function isSupportedType(type: number): boolean {
  return type === GGMLType.F32 || type === GGMLType.F16 || type === GGMLType.BF16 ||
    type === GGMLType.Q8_0 || type === GGMLType.Q4_0;
}

// ---------------------------------------------------------------------------------------------------------
// Quantization (ggml reference rounding)

function checkBlocks(name: string, n: number): void {
  if (n % 32 !== 0) throw new RangeError(`${name}: length ${n} is not a multiple of 32`);
}

/** Round half away from zero (C roundf). */
function roundf(x: number): number {
  return x < 0 ? -Math.floor(-x + 0.5) : Math.floor(x + 0.5);
}

/** ggml quantize_row_q8_0_ref: d = amax/127, q = roundf(x * (1/d)). */
export function quantizeQ8_0(x: Float32Array): Uint8Array {
  checkBlocks("quantizeQ8_0", x.length);
  const nb = x.length / 32;
  const out = new Uint8Array(nb * 34);
  const fr = Math.fround;
  for (let b = 0; b < nb; b++) {
    const base = b * 32;
    let amax = 0;
    for (let j = 0; j < 32; j++) {
      const v = Math.abs(x[base + j]);
      if (v > amax) amax = v;
    }
    const d = fr(amax / 127);
    const id = d ? fr(1 / d) : 0;
    const h = f32ToF16(d);
    const o = b * 34;
    out[o] = h & 0xff;
    out[o + 1] = h >>> 8;
    for (let j = 0; j < 32; j++) out[o + 2 + j] = roundf(fr(x[base + j] * id)) & 0xff;
  }
  return out;
}

/** ggml quantize_row_q4_0_ref: d = max/-8 (max = signed value of largest magnitude), q = min(15, trunc(x/d + 8.5)). */
export function quantizeQ4_0(x: Float32Array): Uint8Array {
  checkBlocks("quantizeQ4_0", x.length);
  const nb = x.length / 32;
  const out = new Uint8Array(nb * 18);
  const fr = Math.fround;
  for (let b = 0; b < nb; b++) {
    const base = b * 32;
    let amax = 0, max = 0;
    for (let j = 0; j < 32; j++) {
      const v = x[base + j];
      if (amax < Math.abs(v)) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = fr(max / -8);
    const id = d ? fr(1 / d) : 0;
    const h = f32ToF16(d);
    const o = b * 18;
    out[o] = h & 0xff;
    out[o + 1] = h >>> 8;
    for (let j = 0; j < 16; j++) {
      const x0 = fr(fr(x[base + j] * id) + 8.5);
      const x1 = fr(fr(x[base + 16 + j] * id) + 8.5);
      const q0 = Math.min(15, Math.trunc(x0));
      const q1 = Math.min(15, Math.trunc(x1));
      out[o + 2 + j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
    }
  }
  return out;
}

/** Encode float32 values as `type` (F32, F16, BF16, Q8_0, Q4_0). */
export function quantize(type: GGMLType, x: Float32Array): Uint8Array {
  switch (type) {
    case GGMLType.F32:
      return new Uint8Array(x.slice().buffer);
    case GGMLType.F16: {
      const out = new Uint16Array(x.length);
      for (let i = 0; i < x.length; i++) out[i] = f32ToF16(x[i]);
      return new Uint8Array(out.buffer);
    }
    case GGMLType.BF16: {
      const out = new Uint16Array(x.length);
      for (let i = 0; i < x.length; i++) out[i] = f32ToBF16(x[i]);
      return new Uint8Array(out.buffer);
    }
    case GGMLType.Q8_0:
      return quantizeQ8_0(x);
    case GGMLType.Q4_0:
      return quantizeQ4_0(x);
    default:
      throw new ModelFormatError(`quantize: tensor type ${ggmlTypeName(type)} is not supported`);
  }
}
