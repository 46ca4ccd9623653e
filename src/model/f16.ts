/**
 * IEEE binary16 ("half"), the one module for it: GGUF F16 tensors and Q8_0/Q4_0 scales (ggml.ts), f16 KV caches
 * on every backend, and f16 session snapshots (session/codec.ts) all convert here, with one rule.
 *
 * f32 → f16 rounds to nearest even and overflows to ±inf — exactly Math.f16round, x86 F16C, CUDA's
 * __float2half_rn, ggml's FP32_TO_FP16 and native/f16.h; subnormals are kept, NaN stays NaN. So a value an f16
 * cache holds (rounded as it entered) encodes to the same bits wherever it is stored, and a snapshot resumes
 * bit-exactly, ±inf included. f16 → f32 is exact.
 */

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

type F16Array = ArrayLike<number> & { buffer: ArrayBufferLike; set(a: ArrayLike<number>): void };
/** Float16Array where the runtime has it (the same rounding; faster on whole arrays). */
const Float16 = (globalThis as unknown as {
  Float16Array?: {
    new (n: number): F16Array;
    new (buf: ArrayBufferLike, off: number, n: number): F16Array;
  };
}).Float16Array;

/** IEEE binary16 bits -> number (exact; subnormals, ±inf, NaN, -0 preserved). */
export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 5.960464477539063e-8; // 2^-24
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** number -> IEEE binary16 bits, rounding to nearest even via float32 (as ggml's FP32_TO_FP16). */
export function f32ToF16(x: number): number {
  f32Scratch[0] = x;
  const b = u32Scratch[0];
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  const mant = b & 0x7fffff;
  if (exp === 0xff) return mant ? sign | 0x7e00 | (mant >>> 13) : sign | 0x7c00;
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    const m = mant | 0x800000;
    const shift = 14 - e;
    let half = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (half & 1))) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1))) half++;
  return sign | half;
}

/** f32 values → f16 bits (into `out` when given). */
export function toF16Bits(x: ArrayLike<number>, out = new Uint16Array(x.length)): Uint16Array {
  if (Float16) {
    const h = new Float16(out.buffer, out.byteOffset, out.length);
    h.set(x);
    return out;
  }
  for (let i = 0; i < x.length; i++) out[i] = f32ToF16(x[i]);
  return out;
}

/** f16 bits → f32 values, exactly (into `out` when given). */
export function fromF16Bits(bits: Uint16Array, out = new Float32Array(bits.length)): Float32Array {
  if (Float16) {
    out.set(new Float16(bits.buffer, bits.byteOffset, bits.length) as unknown as ArrayLike<number>);
    return out;
  }
  for (let i = 0; i < bits.length; i++) out[i] = f16ToF32(bits[i]);
  return out;
}
