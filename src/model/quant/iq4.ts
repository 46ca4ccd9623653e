/**
 * ggml's non-linear 4-bit formats: IQ4_NL (32-element blocks, one half scale) and IQ4_XS (256-element
 * super-blocks, a half scale and eight 6-bit sub-scales). Each nibble indexes the 16-entry table
 * kvalues_iq4nl. Dequantization as ggml-quants.c dequantize_row_iq4_{nl,xs}; quantization as
 * quantize_iq4_{nl,xs} without an importance matrix (quantize_row_iq4_nl_impl with weights x², 7 tries).
 *
 * Layouts (bytes): IQ4_NL d · qs[16] (18 per 32); IQ4_XS d · scales_h (u16, 2 high bits × 8) · scales_l[4]
 * (4 low bits × 8) · qs[128] (136 per 256). Nibble j of a 32-group is element j (low) and j+16 (high).
 */
import { f16Lut, GROUP_MAX_EPS, nearestInt, readF16, signedAbsMax, writeF16 } from "./float.ts";

const fr = Math.fround;

/** kvalues_iq4nl. */
export const IQ4NL_VALUES: readonly number[] = [
  -127,
  -104,
  -83,
  -65,
  -49,
  -35,
  -22,
  -10,
  1,
  13,
  25,
  38,
  53,
  69,
  89,
  113,
];
const KV = Int8Array.from(IQ4NL_VALUES);

export function dequantIQ4_NL(src: Uint8Array, dst: Float32Array, nb: number): void {
  const lut = f16Lut();
  for (let b = 0; b < nb; b++) {
    const o = b * 18, y = b * 32;
    const d = readF16(lut, src, o);
    for (let j = 0; j < 16; j++) {
      const q = src[o + 2 + j];
      dst[y + j] = d * KV[q & 0xf];
      dst[y + j + 16] = d * KV[q >>> 4];
    }
  }
}

export function dequantIQ4_XS(src: Uint8Array, dst: Float32Array, nb: number): void {
  const lut = f16Lut();
  for (let b = 0; b < nb; b++) {
    const o = b * 136;
    const d = readF16(lut, src, o);
    const scalesH = src[o + 2] | (src[o + 3] << 8);
    let y = b * 256, qs = o + 8;
    for (let ib = 0; ib < 8; ib++) {
      const ls = ((src[o + 4 + (ib >> 1)] >>> (4 * (ib & 1))) & 0xf) | (((scalesH >>> (2 * ib)) & 3) << 4);
      const dl = fr(d * (ls - 32));
      for (let j = 0; j < 16; j++) {
        const q = src[qs + j];
        dst[y + j] = dl * KV[q & 0xf];
        dst[y + j + 16] = dl * KV[q >>> 4];
      }
      y += 32;
      qs += 16;
    }
  }
}

/** For each integer k in [-127, 112]: the last table index whose value is ≤ k. */
const BRACKET = new Uint8Array(240).map((_, i) => {
  let j = 0;
  while (j < 15 && KV[j + 1] <= i - 127) j++;
  return j;
});

/**
 * best_index_int8: the table entry nearest to x (ties go up). ggml binary-searches for the bracket
 * KV[ml] ≤ x < KV[ml+1]; the values are integers, so ⌊x⌋ finds the same bracket in a table.
 */
function bestIndex(x: number): number {
  if (x <= KV[0]) return 0;
  if (x >= KV[15]) return 15;
  const mu = BRACKET[Math.floor(x) + 127] + 1;
  return fr(x - KV[mu - 1]) < fr(KV[mu] - x) ? mu - 1 : mu;
}

interface Scratch {
  L: Uint8Array;
  weight: Float32Array;
  scales: Float32Array;
}

/**
 * quantize_row_iq4_nl_impl(superBlock, 32, …, ntry 7) without importance weights, for the super-block
 * x[xo, xo+superBlock) into out at `o` (IQ4_NL when superBlock = 32, IQ4_XS when 256).
 */
function quantIQ4Block(
  x: Float32Array,
  xo: number,
  superBlock: number,
  out: Uint8Array,
  o: number,
  t: Scratch,
): void {
  const ntry = 7;
  const { L, weight, scales } = t;
  const nBlocks = superBlock / 32;
  let maxScale = 0, amaxScale = 0;
  for (let ib = 0; ib < nBlocks; ib++) {
    const xb = xo + 32 * ib, lb = 32 * ib;
    for (let j = 0; j < 32; j++) weight[j] = fr(x[xb + j] * x[xb + j]);
    const max = signedAbsMax(x, xb, 32);
    if (Math.abs(max) < GROUP_MAX_EPS) {
      scales[ib] = 0;
      continue;
    }
    let d = fr(-max / KV[0]);
    let id = fr(1 / d);
    let sumqx = 0, sumq2 = 0;
    for (let j = 0; j < 32; j++) {
      const l = bestIndex(fr(id * x[xb + j]));
      L[lb + j] = l;
      const wq = fr(weight[j] * KV[l]);
      sumqx = fr(sumqx + fr(wq * x[xb + j]));
      sumq2 = fr(sumq2 + fr(wq * KV[l]));
    }
    d = fr(sumqx / sumq2);
    let best = fr(d * sumqx);
    for (let itry = -ntry; itry <= ntry; itry++) {
      id = fr((itry + KV[0]) / max);
      sumqx = sumq2 = 0;
      for (let j = 0; j < 32; j++) {
        const q = KV[bestIndex(fr(id * x[xb + j]))];
        const wq = fr(weight[j] * q);
        sumqx = fr(sumqx + fr(wq * x[xb + j]));
        sumq2 = fr(sumq2 + fr(wq * q));
      }
      if (sumq2 > 0 && fr(sumqx * sumqx) > fr(best * sumq2)) {
        d = fr(sumqx / sumq2);
        best = fr(d * sumqx);
      }
    }
    scales[ib] = d;
    if (Math.abs(d) > amaxScale) {
      amaxScale = Math.abs(d);
      maxScale = d;
    }
  }

  let qs: number;
  if (nBlocks > 1) {
    // IQ4_XS: 6-bit signed sub-scales under one half scale; levels re-derived from the stored sub-scale
    qs = o + 8;
    const d = fr(-maxScale / 32);
    writeF16(out, o, d);
    const id = d ? fr(1 / d) : 0;
    let scalesH = 0;
    out.fill(0, o + 4, o + 8);
    for (let ib = 0; ib < nBlocks; ib++) {
      let l = Math.max(-32, Math.min(31, nearestInt(fr(id * scales[ib]))));
      const dl = fr(d * l);
      const idl = dl ? fr(1 / dl) : 0;
      for (let j = 0; j < 32; j++) L[32 * ib + j] = bestIndex(fr(idl * x[xo + 32 * ib + j]));
      l += 32;
      out[o + 4 + (ib >> 1)] |= (l & 0xf) << (4 * (ib & 1));
      scalesH |= (l >> 4) << (2 * (ib % 8));
    }
    out[o + 2] = scalesH & 0xff;
    out[o + 3] = scalesH >>> 8;
  } else {
    qs = o + 2;
    writeF16(out, o, scales[0]);
    const id = scales[0] ? fr(1 / scales[0]) : 0;
    for (let j = 0; j < 32; j++) L[j] = bestIndex(fr(id * x[xo + j]));
  }
  for (let i = 0; i < nBlocks; i++) {
    for (let j = 0; j < 16; j++) out[qs + 16 * i + j] = L[32 * i + j] | (L[32 * i + 16 + j] << 4);
  }
}

function scratch(): Scratch {
  return { L: new Uint8Array(256), weight: new Float32Array(32), scales: new Float32Array(8) };
}

/** quantize_iq4_nl without an importance matrix. */
export function quantIQ4_NL(x: Float32Array, out: Uint8Array): void {
  const t = scratch();
  for (let b = 0; b < x.length / 32; b++) quantIQ4Block(x, b * 32, 32, out, b * 18, t);
}

/** quantize_iq4_xs without an importance matrix. */
export function quantIQ4_XS(x: Float32Array, out: Uint8Array): void {
  const t = scratch();
  for (let b = 0; b < x.length / 256; b++) quantIQ4Block(x, b * 256, 256, out, b * 136, t);
}
