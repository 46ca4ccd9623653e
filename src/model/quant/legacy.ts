/**
 * ggml's 32-element block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (weights) and Q8_1 (activations of the Q4_1 /
 * Q5_1 dot products). Dequantization as ggml-quants.c dequantize_row_*, quantization as quantize_row_*_ref
 * (what llama-quantize runs without an importance matrix), bit for bit.
 *
 * Layouts (bytes): Q4_0 d·qs[16] (18); Q4_1 d·m·qs[16] (20); Q5_0 d·qh[4]·qs[16] (22); Q5_1 d·m·qh[4]·qs[16]
 * (24); Q8_0 d·qs[32] (34); Q8_1 d·s·qs[32] (36). d, m, s are halves; nibble j of qs is element j (low) and
 * j+16 (high); qh holds the 5th bits, bit j for element j.
 */
import { f16Lut, readF16, roundf, signedAbsMax, writeF16 } from "./float.ts";

const fr = Math.fround;

export function dequantQ4_0(src: Uint8Array, dst: Float32Array, nb: number): void {
  const lut = f16Lut();
  for (let b = 0; b < nb; b++) {
    const o = b * 18, y = b * 32;
    const d = readF16(lut, src, o);
    for (let j = 0; j < 16; j++) {
      const q = src[o + 2 + j];
      dst[y + j] = ((q & 0x0f) - 8) * d;
      dst[y + j + 16] = ((q >>> 4) - 8) * d;
    }
  }
}

export function dequantQ4_1(src: Uint8Array, dst: Float32Array, nb: number): void {
  const lut = f16Lut();
  for (let b = 0; b < nb; b++) {
    const o = b * 20, y = b * 32;
    const d = readF16(lut, src, o), m = readF16(lut, src, o + 2);
    for (let j = 0; j < 16; j++) {
      const q = src[o + 4 + j];
      dst[y + j] = (q & 0x0f) * d + m;
      dst[y + j + 16] = (q >>> 4) * d + m;
    }
  }
}

export function dequantQ5_0(src: Uint8Array, dst: Float32Array, nb: number): void {
  const lut = f16Lut();
  for (let b = 0; b < nb; b++) {
    const o = b * 22, y = b * 32;
    const d = readF16(lut, src, o);
    const qh = (src[o + 2] | (src[o + 3] << 8) | (src[o + 4] << 16) | (src[o + 5] << 24)) >>> 0;
    for (let j = 0; j < 16; j++) {
      const q = src[o + 6 + j];
      const h0 = ((qh >>> j) << 4) & 0x10;
      const h1 = (qh >>> (j + 12)) & 0x10;
      dst[y + j] = (((q & 0x0f) | h0) - 16) * d;
      dst[y + j + 16] = (((q >>> 4) | h1) - 16) * d;
    }
  }
}

export function dequantQ5_1(src: Uint8Array, dst: Float32Array, nb: number): void {
  const lut = f16Lut();
  for (let b = 0; b < nb; b++) {
    const o = b * 24, y = b * 32;
    const d = readF16(lut, src, o), m = readF16(lut, src, o + 2);
    const qh = (src[o + 4] | (src[o + 5] << 8) | (src[o + 6] << 16) | (src[o + 7] << 24)) >>> 0;
    for (let j = 0; j < 16; j++) {
      const q = src[o + 8 + j];
      const h0 = ((qh >>> j) << 4) & 0x10;
      const h1 = (qh >>> (j + 12)) & 0x10;
      dst[y + j] = ((q & 0x0f) | h0) * d + m;
      dst[y + j + 16] = ((q >>> 4) | h1) * d + m;
    }
  }
}

export function dequantQ8_0(src: Uint8Array, dst: Float32Array, nb: number): void {
  const lut = f16Lut();
  for (let b = 0; b < nb; b++) {
    const o = b * 34, y = b * 32;
    const d = readF16(lut, src, o);
    for (let j = 0; j < 32; j++) dst[y + j] = ((src[o + 2 + j] << 24) >> 24) * d;
  }
}

export function dequantQ8_1(src: Uint8Array, dst: Float32Array, nb: number): void {
  const lut = f16Lut();
  for (let b = 0; b < nb; b++) {
    const o = b * 36, y = b * 32;
    const d = readF16(lut, src, o);
    for (let j = 0; j < 32; j++) dst[y + j] = ((src[o + 4 + j] << 24) >> 24) * d;
  }
}

const levels = new Uint8Array(32);

/**
 * Levels of the symmetric formats (quantize_row_q4_0_ref / q5_0_ref): d = max/−half with max the signed value
 * of largest magnitude, q = min(2·half − 1, trunc(x/d + half + 0.5)). Returns d; levels go to `levels`.
 */
function symmetricLevels(x: Float32Array, base: number, half: number): number {
  const d = fr(signedAbsMax(x, base, 32) / -half);
  const id = d ? fr(1 / d) : 0;
  for (let j = 0; j < 32; j++) {
    levels[j] = Math.min(2 * half - 1, Math.trunc(fr(fr(x[base + j] * id) + half + 0.5)));
  }
  return d;
}

/**
 * Levels of the formats with a min (quantize_row_q4_1_ref / q5_1_ref): d = (max − min)/nmax, q = trunc((x −
 * min)/d + 0.5), capped at 15 for Q4_1 only (as ggml does). Returns [d, min]; levels go to `levels`.
 */
function minLevels(x: Float32Array, base: number, nmax: number): [number, number] {
  let min = Infinity, max = -Infinity; // C: FLT_MAX / -FLT_MAX (same result for finite data)
  for (let j = 0; j < 32; j++) {
    const v = x[base + j];
    if (v < min) min = v;
    if (v > max) max = v;
  }
  const d = fr(fr(max - min) / nmax);
  const id = d ? fr(1 / d) : 0;
  for (let j = 0; j < 32; j++) {
    const q = Math.trunc(fr(fr(fr(x[base + j] - min) * id) + 0.5));
    levels[j] = nmax === 15 ? Math.min(15, q) : q;
  }
  return [d, min];
}

/** Low nibbles of `levels` into qs at `o` (element j low, j+16 high); the 5th bits as qh at `h` if given. */
function packLevels(out: Uint8Array, o: number, h = -1): void {
  let qh = 0;
  for (let j = 0; j < 16; j++) {
    const q0 = levels[j], q1 = levels[j + 16];
    out[o + j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
    qh |= ((q0 >>> 4) & 1) << j;
    qh |= ((q1 >>> 4) & 1) << (j + 16);
  }
  if (h >= 0) {
    for (let k = 0; k < 4; k++) out[h + k] = (qh >>> (8 * k)) & 0xff;
  }
}

/** quantize_row_q4_0_ref. */
export function quantQ4_0(x: Float32Array, out: Uint8Array): void {
  for (let b = 0; b < x.length / 32; b++) {
    writeF16(out, b * 18, symmetricLevels(x, b * 32, 8));
    packLevels(out, b * 18 + 2);
  }
}

/** quantize_row_q4_1_ref. */
export function quantQ4_1(x: Float32Array, out: Uint8Array): void {
  for (let b = 0; b < x.length / 32; b++) {
    const [d, min] = minLevels(x, b * 32, 15);
    writeF16(out, b * 20, d);
    writeF16(out, b * 20 + 2, min);
    packLevels(out, b * 20 + 4);
  }
}

/** quantize_row_q5_0_ref. */
export function quantQ5_0(x: Float32Array, out: Uint8Array): void {
  for (let b = 0; b < x.length / 32; b++) {
    writeF16(out, b * 22, symmetricLevels(x, b * 32, 16));
    packLevels(out, b * 22 + 6, b * 22 + 2);
  }
}

/** quantize_row_q5_1_ref. */
export function quantQ5_1(x: Float32Array, out: Uint8Array): void {
  for (let b = 0; b < x.length / 32; b++) {
    const [d, min] = minLevels(x, b * 32, 31);
    writeF16(out, b * 24, d);
    writeF16(out, b * 24 + 2, min);
    packLevels(out, b * 24 + 8, b * 24 + 4);
  }
}

const q8 = { sum: 0 };

/**
 * The 8-bit block of x[base, base+32) (quantize_row_q8_0_ref): d = amax/127 as a half at `o`, q = roundf(x/d)
 * as int8 at `q`. Returns d (float32, before the half rounding) and leaves Σq in `q8.sum`.
 */
function q8Block(x: Float32Array, base: number, out: Uint8Array, o: number, q: number): number {
  let amax = 0;
  for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[base + j]));
  const d = fr(amax / 127);
  const id = d ? fr(1 / d) : 0;
  writeF16(out, o, d);
  let sum = 0;
  for (let j = 0; j < 32; j++) {
    const v = roundf(fr(x[base + j] * id));
    out[q + j] = v & 0xff;
    sum += v;
  }
  q8.sum = sum;
  return d;
}

/** quantize_row_q8_0_ref. */
export function quantQ8_0(x: Float32Array, out: Uint8Array): void {
  for (let b = 0; b < x.length / 32; b++) q8Block(x, b * 32, out, b * 34, b * 34 + 2);
}

/** quantize_row_q8_1_ref: as Q8_0, plus s = (Σq)·d. */
export function quantQ8_1(x: Float32Array, out: Uint8Array): void {
  for (let b = 0; b < x.length / 32; b++) {
    const d = q8Block(x, b * 32, out, b * 36, b * 36 + 4);
    writeF16(out, b * 36 + 2, fr(q8.sum * d));
  }
}
