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

/** Every type in the GGMLType enum: layout (sizes as in ggml.c's type_traits) and codecs where supported. */
export const GGML_TYPES: Readonly<Record<GGMLType, GGMLTypeInfo>> = {
  [GGMLType.F32]: { name: "F32", blockSize: 1, typeSize: 4, dequantize: decodeF32, quantize: encodeF32 },
  [GGMLType.F16]: { name: "F16", blockSize: 1, typeSize: 2, dequantize: decodeF16, quantize: encodeF16 },
  [GGMLType.BF16]: { name: "BF16", blockSize: 1, typeSize: 2, dequantize: decodeBF16, quantize: encodeBF16 },
  [GGMLType.Q4_0]: {
    name: "Q4_0",
    blockSize: 32,
    typeSize: 18,
    dequantize: dequantQ4_0,
    quantize: quantQ4_0,
  },
  [GGMLType.Q4_1]: {
    name: "Q4_1",
    blockSize: 32,
    typeSize: 20,
    dequantize: dequantQ4_1,
    quantize: quantQ4_1,
  },
  [GGMLType.Q5_0]: {
    name: "Q5_0",
    blockSize: 32,
    typeSize: 22,
    dequantize: dequantQ5_0,
    quantize: quantQ5_0,
  },
  [GGMLType.Q5_1]: {
    name: "Q5_1",
    blockSize: 32,
    typeSize: 24,
    dequantize: dequantQ5_1,
    quantize: quantQ5_1,
  },
  [GGMLType.Q8_0]: {
    name: "Q8_0",
    blockSize: 32,
    typeSize: 34,
    dequantize: dequantQ8_0,
    quantize: quantQ8_0,
  },
  [GGMLType.Q8_1]: {
    name: "Q8_1",
    blockSize: 32,
    typeSize: 36,
    dequantize: dequantQ8_1,
    quantize: quantQ8_1,
  },
  [GGMLType.Q2_K]: {
    name: "Q2_K",
    blockSize: 256,
    typeSize: 84,
    dequantize: dequantQ2_K,
    quantize: quantQ2_K,
  },
  [GGMLType.Q3_K]: {
    name: "Q3_K",
    blockSize: 256,
    typeSize: 110,
    dequantize: dequantQ3_K,
    quantize: quantQ3_K,
  },
  [GGMLType.Q4_K]: {
    name: "Q4_K",
    blockSize: 256,
    typeSize: 144,
    dequantize: dequantQ4_K,
    quantize: quantQ4_K,
  },
  [GGMLType.Q5_K]: {
    name: "Q5_K",
    blockSize: 256,
    typeSize: 176,
    dequantize: dequantQ5_K,
    quantize: quantQ5_K,
  },
  [GGMLType.Q6_K]: {
    name: "Q6_K",
    blockSize: 256,
    typeSize: 210,
    dequantize: dequantQ6_K,
    quantize: quantQ6_K,
  },
  [GGMLType.Q8_K]: {
    name: "Q8_K",
    blockSize: 256,
    typeSize: 292,
    dequantize: dequantQ8_K,
    quantize: quantQ8_K,
  },
  [GGMLType.IQ4_NL]: {
    name: "IQ4_NL",
    blockSize: 32,
    typeSize: 18,
    dequantize: dequantIQ4_NL,
    quantize: quantIQ4_NL,
  },
  [GGMLType.IQ4_XS]: {
    name: "IQ4_XS",
    blockSize: 256,
    typeSize: 136,
    dequantize: dequantIQ4_XS,
    quantize: quantIQ4_XS,
  },
  [GGMLType.I8]: { name: "I8", blockSize: 1, typeSize: 1 },
  [GGMLType.I16]: { name: "I16", blockSize: 1, typeSize: 2 },
  [GGMLType.I32]: { name: "I32", blockSize: 1, typeSize: 4 },
  [GGMLType.I64]: { name: "I64", blockSize: 1, typeSize: 8 },
  [GGMLType.F64]: { name: "F64", blockSize: 1, typeSize: 8 },
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
