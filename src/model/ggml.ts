/**
 * ggml tensor types as one table: each type's block layout and, where this runtime supports it, its
 * dequantizer (ggml's to_float, bit for bit) and reference quantizer (llama-quantize's bytes without an
 * importance matrix). The block codecs live in ./quant/; this module is their public face.
 */
import { GGMLType } from "./types.ts";
import { ModelFormatError } from "./errors.ts";
import { f16Lut, f32ToBF16, f32ToF16 } from "./quant/float.ts";
import {
  dequantQ4_0,
  dequantQ4_1,
  dequantQ5_0,
  dequantQ5_1,
  dequantQ8_0,
  dequantQ8_1,
  quantQ4_0,
  quantQ4_1,
  quantQ5_0,
  quantQ5_1,
  quantQ8_0,
  quantQ8_1,
} from "./quant/legacy.ts";
import {
  dequantQ2_K,
  dequantQ3_K,
  dequantQ4_K,
  dequantQ5_K,
  dequantQ6_K,
  dequantQ8_K,
  quantQ2_K,
  quantQ3_K,
  quantQ4_K,
  quantQ5_K,
  quantQ6_K,
  quantQ8_K,
} from "./quant/kquants.ts";
import { dequantIQ4_NL, dequantIQ4_XS, quantIQ4_NL, quantIQ4_XS } from "./quant/iq4.ts";

export { bf16ToF32, f16ToF32, f32ToBF16, f32ToF16 } from "./quant/float.ts";

function decodeF32(src: Uint8Array, dst: Float32Array, n: number): void {
  if (src.byteOffset % 4 === 0) dst.set(new Float32Array(src.buffer, src.byteOffset, n));
  else dst.set(new Float32Array(src.slice(0, 4 * n).buffer));
}
function encodeF32(x: Float32Array, out: Uint8Array): void {
  out.set(new Uint8Array(x.buffer, x.byteOffset, x.byteLength));
}
function decodeF16(src: Uint8Array, dst: Float32Array, n: number): void {
  const lut = f16Lut();
  for (let i = 0; i < n; i++) dst[i] = lut[src[2 * i] | (src[2 * i + 1] << 8)];
}
function encodeF16(x: Float32Array, out: Uint8Array): void {
  for (let i = 0; i < x.length; i++) {
    const h = f32ToF16(x[i]);
    out[2 * i] = h & 0xff;
    out[2 * i + 1] = h >>> 8;
  }
}
function decodeBF16(src: Uint8Array, dst: Float32Array, n: number): void {
  const u = new Uint32Array(dst.buffer, dst.byteOffset, n);
  for (let i = 0; i < n; i++) u[i] = (src[2 * i] | (src[2 * i + 1] << 8)) << 16;
}
function encodeBF16(x: Float32Array, out: Uint8Array): void {
  for (let i = 0; i < x.length; i++) {
    const h = f32ToBF16(x[i]);
    out[2 * i] = h & 0xff;
    out[2 * i + 1] = h >>> 8;
  }
}

/** Decode `nBlocks` blocks from the start of `src` into the start of `dst`. */
export type BlockDecoder = (src: Uint8Array, dst: Float32Array, nBlocks: number) => void;
/** Encode all of `x` (a whole number of blocks) into the start of `out`. */
export type BlockEncoder = (x: Float32Array, out: Uint8Array) => void;

export interface GGMLTypeInfo {
  name: string;
  /** Elements per block (1 for plain types). */
  blockSize: number;
  /** Bytes per block. */
  typeSize: number;
  /** ggml's to_float, bit for bit; absent for types this runtime cannot read. */
  dequantize?: BlockDecoder;
  /** ggml's reference quantizer (llama-quantize without an importance matrix), byte for byte. */
  quantize?: BlockEncoder;
}

const row = (
  name: string,
  blockSize: number,
  typeSize: number,
  dequantize?: BlockDecoder,
  quantize?: BlockEncoder,
) => ({
  name,
  blockSize,
  typeSize,
  dequantize,
  quantize,
});

/** Every type in the GGMLType enum: name, block, bytes per block (as ggml.c's type_traits) and codecs. */
export const GGML_TYPES: Readonly<Record<GGMLType, GGMLTypeInfo>> = {
  [GGMLType.F32]: row("F32", 1, 4, decodeF32, encodeF32),
  [GGMLType.F16]: row("F16", 1, 2, decodeF16, encodeF16),
  [GGMLType.BF16]: row("BF16", 1, 2, decodeBF16, encodeBF16),
  [GGMLType.Q4_0]: row("Q4_0", 32, 18, dequantQ4_0, quantQ4_0),
  [GGMLType.Q4_1]: row("Q4_1", 32, 20, dequantQ4_1, quantQ4_1),
  [GGMLType.Q5_0]: row("Q5_0", 32, 22, dequantQ5_0, quantQ5_0),
  [GGMLType.Q5_1]: row("Q5_1", 32, 24, dequantQ5_1, quantQ5_1),
  [GGMLType.Q8_0]: row("Q8_0", 32, 34, dequantQ8_0, quantQ8_0),
  [GGMLType.Q8_1]: row("Q8_1", 32, 36, dequantQ8_1, quantQ8_1), // activations (Q4_1/Q5_1 dot products)
  [GGMLType.Q2_K]: row("Q2_K", 256, 84, dequantQ2_K, quantQ2_K),
  [GGMLType.Q3_K]: row("Q3_K", 256, 110, dequantQ3_K, quantQ3_K),
  [GGMLType.Q4_K]: row("Q4_K", 256, 144, dequantQ4_K, quantQ4_K),
  [GGMLType.Q5_K]: row("Q5_K", 256, 176, dequantQ5_K, quantQ5_K),
  [GGMLType.Q6_K]: row("Q6_K", 256, 210, dequantQ6_K, quantQ6_K),
  [GGMLType.Q8_K]: row("Q8_K", 256, 292, dequantQ8_K, quantQ8_K), // activations (K-quant dot products)
  [GGMLType.IQ4_NL]: row("IQ4_NL", 32, 18, dequantIQ4_NL, quantIQ4_NL),
  [GGMLType.IQ4_XS]: row("IQ4_XS", 256, 136, dequantIQ4_XS, quantIQ4_XS),
  [GGMLType.I8]: row("I8", 1, 1),
  [GGMLType.I16]: row("I16", 1, 2),
  [GGMLType.I32]: row("I32", 1, 4),
  [GGMLType.I64]: row("I64", 1, 8),
  [GGMLType.F64]: row("F64", 1, 8),
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
// Dequantization and quantization through the table

/** Names of the types `dequantize` reads, for error messages. */
function supportedNames(): string {
  return Object.values(GGML_TYPES).filter((t) => t.dequantize).map((t) => t.name).join(", ");
}

/** Decode `n` elements of `type` from `bytes` (row-major, blocks of the innermost dim) to float32. */
export function dequantize(type: GGMLType, bytes: Uint8Array, n: number): Float32Array {
  const need = rowBytes(type, n);
  if (bytes.byteLength < need) {
    throw new ModelFormatError(
      `dequantize ${ggmlTypeName(type)}: ${n} elements need ${need} bytes, got ${bytes.byteLength}`,
    );
  }
  const info = GGML_TYPES[type];
  if (!info.dequantize) {
    throw new ModelFormatError(
      `dequantize: tensor type ${info.name} is not supported (supported: ${supportedNames()})`,
    );
  }
  const out = new Float32Array(n);
  info.dequantize(bytes, out, n / info.blockSize);
  return out;
}

/** Whether `dequantize` reads `type`. */
export function isSupportedType(type: number): boolean {
  return ggmlTypeInfo(type)?.dequantize !== undefined;
}

/** Whether `quantize` writes `type`. */
export function canQuantize(type: number): boolean {
  return ggmlTypeInfo(type)?.quantize !== undefined;
}

/** Encode float32 values as `type` with ggml's reference quantizer; `x.length` must fill whole blocks. */
export function quantize(type: GGMLType, x: Float32Array): Uint8Array {
  const info = infoOrThrow(type);
  if (!info.quantize) throw new ModelFormatError(`quantize: tensor type ${info.name} is not supported`);
  if (x.length % info.blockSize !== 0) {
    throw new RangeError(`quantize ${info.name}: length ${x.length} is not a multiple of ${info.blockSize}`);
  }
  const out = new Uint8Array((x.length / info.blockSize) * info.typeSize);
  info.quantize(x, out);
  return out;
}

/** ggml quantize_row_q8_0_ref: d = amax/127, q = roundf(x * (1/d)). */
export function quantizeQ8_0(x: Float32Array): Uint8Array {
  return quantize(GGMLType.Q8_0, x);
}

/** ggml quantize_row_q4_0_ref: d = max/-8 (max = signed value of largest magnitude), q = min(15, trunc(x/d + 8.5)). */
export function quantizeQ4_0(x: Float32Array): Uint8Array {
  return quantize(GGMLType.Q4_0, x);
}
