/**
 * Float helpers shared by the block codecs: bfloat16 conversions and the half lookup table (IEEE half itself is
 * ../f16.ts, the one f16 module), bit-exact with ggml's, and the
 * float32 rounding primitives of ggml's C quantizers. JavaScript computes in float64; `Math.fround` after
 * every +, −, ×, ÷ and sqrt reproduces C float arithmetic exactly (one IEEE operation rounded to float64 and
 * then to float32 equals the operation rounded to float32), which is what byte-identical quantization needs.
 */

import { f16ToF32, f32ToF16 } from "../f16.ts";

export { f16ToF32, f32ToF16 };

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
/** All 65536 half values as float32 (ggml's table_f32_f16). */
export function f16Lut(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) f16Table[i] = f16ToF32(i);
  }
  return f16Table;
}

/** The half at bytes[o], bytes[o+1] (little-endian) as a number. */
export function readF16(lut: Float32Array, bytes: Uint8Array, o: number): number {
  return lut[bytes[o] | (bytes[o + 1] << 8)];
}

/** Store `x` rounded to half at bytes[o] (little-endian); returns the stored value as a number. */
export function writeF16(bytes: Uint8Array, o: number, x: number): number {
  const h = f32ToF16(x);
  bytes[o] = h & 0xff;
  bytes[o + 1] = h >>> 8;
  return f16Lut()[h];
}

/** C `roundf`: round half away from zero. */
export function roundf(x: number): number {
  return x < 0 ? -Math.floor(-x + 0.5) : Math.floor(x + 0.5);
}

/**
 * ggml's nearest_int: adds 1.5·2^23 in float32 so the float rounding (to nearest, ties to even) picks the
 * integer. Valid for |x| ≤ 4194303, as in ggml (which asserts it).
 */
export function nearestInt(x: number): number {
  return Math.fround(x + 12582912) - 12582912;
}

/** The value of largest magnitude in x[start, start+n) (the first on ties, 0 if all are 0), as ggml finds it. */
export function signedAbsMax(x: Float32Array, start: number, n: number): number {
  let amax = 0, max = 0;
  for (let i = start; i < start + n; i++) {
    const a = Math.abs(x[i]);
    if (a > amax) {
      amax = a;
      max = x[i];
    }
  }
  return max;
}

/** ggml's GROUP_MAX_EPS (1e-15f): groups whose largest magnitude is below it quantize to zero. */
export const GROUP_MAX_EPS = Math.fround(1e-15);
