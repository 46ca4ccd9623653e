/**
 * ggml's K-quants: 256-element super-blocks with 6/4-bit sub-block scales. Dequantization as ggml-quants.c
 * dequantize_row_q{2..6}_K / q8_K; quantization as quantize_row_q{2..6}_K_ref and quantize_row_q8_K_ref (what
 * llama-quantize runs when there is no importance matrix), with every float operation rounded as C float
 * arithmetic rounds it, so the bytes match llama.cpp's.
 *
 * Layouts (bytes, 256 weights each; d/dmin are halves):
 *   Q2_K  scales[16] (low nibble scale, high nibble min) · qs[64] (2-bit) · d · dmin            =  84
 *   Q3_K  hmask[32] (3rd bit) · qs[64] (low 2 bits) · scales[12] (16 × 6-bit, packed) · d        = 110
 *   Q4_K  d · dmin · scales[12] (8 × 6-bit scale + 8 × 6-bit min) · qs[128]                       = 144
 *   Q5_K  d · dmin · scales[12] · qh[32] (5th bit) · qs[128]                                      = 176
 *   Q6_K  ql[128] (low 4 bits) · qh[64] (high 2 bits) · scales[16] (int8) · d                     = 210
 *   Q8_K  d (float32) · qs[256] (int8) · bsums[16] (int16 sums of 16)                             = 292
 */
import { f16Lut, GROUP_MAX_EPS, nearestInt, readF16, signedAbsMax, writeF16 } from "./float.ts";

const fr = Math.fround;
const QK_K = 256;

// ---------------------------------------------------------------------------------------------------------
// Dequantization

export function dequantQ2_K(src: Uint8Array, dst: Float32Array, nb: number): void {
  const lut = f16Lut();
  for (let b = 0; b < nb; b++) {
    const o = b * 84;
    const d = readF16(lut, src, o + 80), min = readF16(lut, src, o + 82);
    let y = b * QK_K, is = 0, q = o + 16;
    for (let n = 0; n < QK_K; n += 128) {
      for (let shift = 0; shift < 8; shift += 2) {
        for (let half = 0; half < 32; half += 16) {
          const sc = src[o + is++];
          const dl = fr(d * (sc & 0xf)), ml = fr(min * (sc >>> 4));
          for (let l = 0; l < 16; l++) dst[y++] = dl * ((src[q + half + l] >>> shift) & 3) - ml;
        }
      }
      q += 32;
    }
  }
}

/** The 16 six-bit Q3_K scales (still offset by 32) of the block at `o`. */
function q3Scales(src: Uint8Array, o: number, out: Int32Array): void {
  const s = o + 96;
  for (let j = 0; j < 16; j++) {
    const lo = j < 8 ? src[s + j] & 0xf : src[s + j - 8] >>> 4;
    out[j] = lo | (((src[s + 8 + (j & 3)] >>> (2 * (j >> 2))) & 3) << 4);
  }
}

export function dequantQ3_K(src: Uint8Array, dst: Float32Array, nb: number): void {
  const lut = f16Lut();
  const scales = new Int32Array(16);
  for (let b = 0; b < nb; b++) {
    const o = b * 110;
    const dAll = readF16(lut, src, o + 108);
    q3Scales(src, o, scales);
    // the high bit of the j-th 16-group's levels is bit j/2 of hmask (the 4 is subtracted when it is clear)
    let y = b * QK_K, is = 0, q = o + 32, hbit = 0;
    for (let n = 0; n < QK_K; n += 128) {
      for (let shift = 0; shift < 8; shift += 2) {
        for (let half = 0; half < 32; half += 16) {
          const dl = fr(dAll * (scales[is++] - 32));
          for (let l = 0; l < 16; l++) {
            const h = (src[o + half + l] >>> hbit) & 1;
            dst[y++] = dl * (((src[q + half + l] >>> shift) & 3) - 4 + 4 * h);
          }
        }
        hbit++;
      }
      q += 32;
    }
  }
}

/** ggml's get_scale_min_k4: the 6-bit scale of sub-block j from the 12 packed bytes at `s`. */
function scaleK4(j: number, q: Uint8Array, s: number): number {
  return j < 4 ? q[s + j] & 63 : (q[s + j + 4] & 0xf) | ((q[s + j - 4] >>> 6) << 4);
}

/** … and its 6-bit min. */
function minK4(j: number, q: Uint8Array, s: number): number {
  return j < 4 ? q[s + j + 4] & 63 : (q[s + j + 4] >>> 4) | ((q[s + j] >>> 6) << 4);
}

export function dequantQ4_K(src: Uint8Array, dst: Float32Array, nb: number): void {
  const lut = f16Lut();
  for (let b = 0; b < nb; b++) {
    const o = b * 144;
    const d = readF16(lut, src, o), min = readF16(lut, src, o + 2);
    let y = b * QK_K, q = o + 16;
    for (let is = 0; is < 8; is += 2) {
      const d1 = fr(d * scaleK4(is, src, o + 4)), mm1 = fr(min * minK4(is, src, o + 4));
      const d2 = fr(d * scaleK4(is + 1, src, o + 4)), mm2 = fr(min * minK4(is + 1, src, o + 4));
      for (let l = 0; l < 32; l++) dst[y++] = d1 * (src[q + l] & 0xf) - mm1;
      for (let l = 0; l < 32; l++) dst[y++] = d2 * (src[q + l] >>> 4) - mm2;
      q += 32;
    }
  }
}

export function dequantQ5_K(src: Uint8Array, dst: Float32Array, nb: number): void {
  const lut = f16Lut();
  for (let b = 0; b < nb; b++) {
    const o = b * 176;
    const d = readF16(lut, src, o), min = readF16(lut, src, o + 2);
    const qh = o + 16;
    // sub-block is (0..7) takes its 5th bits from bit `is` of qh
    let y = b * QK_K, ql = o + 48;
    for (let is = 0; is < 8; is += 2) {
      const d1 = fr(d * scaleK4(is, src, o + 4)), mm1 = fr(min * minK4(is, src, o + 4));
      const d2 = fr(d * scaleK4(is + 1, src, o + 4)), mm2 = fr(min * minK4(is + 1, src, o + 4));
      for (let l = 0; l < 32; l++) {
        dst[y++] = d1 * ((src[ql + l] & 0xf) | (((src[qh + l] >>> is) & 1) << 4)) - mm1;
      }
      for (let l = 0; l < 32; l++) {
        dst[y++] = d2 * ((src[ql + l] >>> 4) | (((src[qh + l] >>> (is + 1)) & 1) << 4)) - mm2;
      }
      ql += 32;
    }
  }
}

export function dequantQ6_K(src: Uint8Array, dst: Float32Array, nb: number): void {
  const lut = f16Lut();
  const dsc = new Float64Array(16);
  for (let b = 0; b < nb; b++) {
    const o = b * 210;
    const d = readF16(lut, src, o + 208);
    // d·scale is exact in float32, so one rounding of (d·scale)·q matches ggml's
    for (let k = 0; k < 16; k++) dsc[k] = d * ((src[o + 192 + k] << 24) >> 24);
    let y = b * QK_K, ql = o, qh = o + 128, sc = 0;
    for (let n = 0; n < QK_K; n += 128) {
      for (let l = 0; l < 32; l++) {
        const is = sc + (l >> 4);
        const h = src[qh + l], a = src[ql + l], c = src[ql + l + 32];
        dst[y + l] = dsc[is] * (((a & 0xf) | ((h & 3) << 4)) - 32);
        dst[y + l + 32] = dsc[is + 2] * (((c & 0xf) | (((h >>> 2) & 3) << 4)) - 32);
        dst[y + l + 64] = dsc[is + 4] * (((a >>> 4) | (((h >>> 4) & 3) << 4)) - 32);
        dst[y + l + 96] = dsc[is + 6] * (((c >>> 4) | (((h >>> 6) & 3) << 4)) - 32);
      }
      y += 128;
      ql += 64;
      qh += 32;
      sc += 8;
    }
  }
}

export function dequantQ8_K(src: Uint8Array, dst: Float32Array, nb: number): void {
  const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
  for (let b = 0; b < nb; b++) {
    const o = b * 292, y = b * QK_K;
    const d = dv.getFloat32(o, true);
    for (let j = 0; j < QK_K; j++) dst[y + j] = ((src[o + 4 + j] << 24) >> 24) * d;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Quantization helpers (ggml-quants.c, without importance weights)

const qx = { w: new Float32Array(16), wx: new Float32Array(16) };

/**
 * make_qx_quants with rmse_type 1 and no weights (w = x²): symmetric levels -nmax..nmax-1 for x[xo, xo+n),
 * stored as l + nmax in L[lo…]; tries 18 scales around nmax/max and keeps the least-squares best.
 */
function makeQxQuants(
  n: number,
  nmax: number,
  x: Float32Array,
  xo: number,
  L: Int8Array,
  lo: number,
): number {
  const max = signedAbsMax(x, xo, n);
  if (Math.abs(max) < GROUP_MAX_EPS) {
    L.fill(0, lo, lo + n);
    return 0;
  }
  // w = x² and w·x are the same for every candidate scale
  const { w, wx } = qx;
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i];
    w[i] = fr(xi * xi);
    wx[i] = fr(w[i] * xi);
  }
  let iscale = fr(-nmax / max);
  let sumlx = 0, suml2 = 0;
  for (let i = 0; i < n; i++) {
    let l = nearestInt(fr(iscale * x[xo + i]));
    l = l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l;
    L[lo + i] = l + nmax;
    sumlx = fr(sumlx + fr(wx[i] * l));
    suml2 = fr(suml2 + fr(fr(w[i] * l) * l));
  }
  let scale = suml2 ? fr(sumlx / suml2) : 0;
  let best = fr(scale * sumlx);
  for (let is = -9; is <= 9; is++) {
    if (is === 0) continue;
    iscale = fr(-fr(nmax + fr(fr(0.1) * is)) / max);
    sumlx = suml2 = 0;
    for (let i = 0; i < n; i++) {
      let l = nearestInt(fr(iscale * x[xo + i]));
      l = l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l;
      sumlx = fr(sumlx + fr(wx[i] * l));
      suml2 = fr(suml2 + fr(fr(w[i] * l) * l));
    }
    if (suml2 > 0 && fr(sumlx * sumlx) > fr(best * suml2)) {
      for (let i = 0; i < n; i++) {
        const l = nearestInt(fr(iscale * x[xo + i]));
        L[lo + i] = nmax + (l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l);
      }
      scale = fr(sumlx / suml2);
      best = fr(scale * sumlx);
    }
  }
  return scale;
}

/**
 * make_q3_quants with do_rmse: symmetric levels -nmax..nmax-1, refined one element at a time (up to 5 passes)
 * while the weighted (w = x²) least-squares fit improves; L gets l + nmax.
 */
function makeQ3Quants(
  n: number,
  nmax: number,
  x: Float32Array,
  xo: number,
  L: Int8Array,
  lo: number,
): number {
  const max = signedAbsMax(x, xo, n);
  if (Math.abs(max) < GROUP_MAX_EPS) {
    L.fill(0, lo, lo + n);
    return 0;
  }
  const iscale = fr(-nmax / max);
  let sumlx = 0, suml2 = 0;
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i];
    const l = Math.max(-nmax, Math.min(nmax - 1, nearestInt(fr(iscale * xi))));
    L[lo + i] = l;
    const w = fr(xi * xi);
    sumlx = fr(sumlx + fr(fr(w * xi) * l));
    suml2 = fr(suml2 + fr(fr(w * l) * l));
  }
  for (let itry = 0; itry < 5; itry++) {
    let changed = 0;
    for (let i = 0; i < n; i++) {
      const xi = x[xo + i], li = L[lo + i];
      const w = fr(xi * xi);
      let slx = fr(sumlx - fr(fr(w * xi) * li));
      if (slx > 0) {
        let sl2 = fr(suml2 - fr(fr(w * li) * li));
        const nl = Math.max(-nmax, Math.min(nmax - 1, nearestInt(fr(fr(xi * sl2) / slx))));
        if (nl !== li) {
          slx = fr(slx + fr(fr(w * xi) * nl));
          sl2 = fr(sl2 + fr(fr(w * nl) * nl));
          if (sl2 > 0 && fr(fr(slx * slx) * suml2) > fr(fr(sumlx * sumlx) * sl2)) {
            L[lo + i] = nl;
            sumlx = slx;
            suml2 = sl2;
            changed++;
          }
        }
      }
    }
    if (!changed) break;
  }
  for (let i = 0; i < n; i++) L[lo + i] += nmax;
  return suml2 > 0 ? fr(sumlx / suml2) : 0;
}

/** Scratch of makeQkx2Quants: x − min as float32, the last evaluated levels, and the returned min. */
const kx = { xm: new Float32Array(32), prev: new Uint8Array(32), min: 0 };

/**
 * make_qkx2_quants: asymmetric levels 0..nmax with a min ≤ 0 for x[xo, xo+n) and per-element weights (≥ 0);
 * tries nstep+1 scales (rmin + rdelta·is + nmax)/(max − min) and keeps the weighted least-squares (scale,
 * min) with the smallest error (absolute when useMad). Returns the scale and leaves −min in `kx.min`; levels
 * go to L[lo…]. Two exact shortcuts keep ggml's results: a candidate whose levels (and min) equal the last
 * evaluated one's is skipped (same sums, same error), and an error sum stops once it reaches the best (its
 * terms are ≥ 0, so float addition never brings it back below).
 */
function makeQkx2Quants(
  n: number,
  nmax: number,
  x: Float32Array,
  xo: number,
  weights: Float32Array,
  L: Uint8Array,
  lo: number,
  Laux: Uint8Array,
  rmin: number,
  rdelta: number,
  nstep: number,
  useMad: boolean,
): number {
  const { xm, prev } = kx;
  let min = x[xo], max = x[xo];
  let sumW = weights[0];
  let sumX = fr(sumW * x[xo]);
  for (let i = 1; i < n; i++) {
    const xi = x[xo + i];
    if (xi < min) min = xi;
    if (xi > max) max = xi;
    const w = weights[i];
    sumW = fr(sumW + w);
    sumX = fr(sumX + fr(w * xi));
  }
  if (min > 0) min = 0;
  if (max === min) {
    L.fill(0, lo, lo + n);
    kx.min = -min;
    return 0;
  }
  for (let i = 0; i < n; i++) xm[i] = x[xo + i] - min;
  let iscale = fr(nmax / fr(max - min));
  let scale = fr(1 / iscale);
  let bestErr = 0;
  for (let i = 0; i < n; i++) {
    let l = nearestInt(fr(iscale * xm[i]));
    l = l < 0 ? 0 : l > nmax ? nmax : l;
    L[lo + i] = l;
    let diff = fr(fr(fr(scale * l) + min) - x[xo + i]);
    diff = useMad ? Math.abs(diff) : fr(diff * diff);
    bestErr = fr(bestErr + fr(weights[i] * diff));
  }
  if (nstep < 1) {
    kx.min = -min;
    return scale;
  }
  let prevMin = NaN; // the min of the levels in `prev` (none yet)
  for (let is = 0; is <= nstep; is++) {
    iscale = fr(fr(fr(rmin + fr(rdelta * is)) + nmax) / fr(max - min)); // min moves with the best fit
    let same = min === prevMin;
    for (let i = 0; i < n; i++) {
      let l = nearestInt(fr(iscale * xm[i]));
      l = l < 0 ? 0 : l > nmax ? nmax : l;
      if (l !== prev[i]) same = false;
      Laux[i] = l;
    }
    if (same) continue;
    prevMin = min;
    prev.set(Laux.subarray(0, n));
    let sumL = 0, sumL2 = 0, sumXL = 0;
    for (let i = 0; i < n; i++) {
      const l = Laux[i];
      const wl = fr(weights[i] * l);
      sumL = fr(sumL + wl);
      sumL2 = fr(sumL2 + fr(wl * l));
      sumXL = fr(sumXL + fr(wl * x[xo + i]));
    }
    const D = fr(fr(sumW * sumL2) - fr(sumL * sumL));
    if (!(D > 0)) continue;
    let thisScale = fr(fr(fr(sumW * sumXL) - fr(sumX * sumL)) / D);
    let thisMin = fr(fr(fr(sumL2 * sumX) - fr(sumL * sumXL)) / D);
    if (thisMin > 0) {
      thisMin = 0;
      thisScale = fr(sumXL / sumL2);
    }
    let err = 0;
    for (let i = 0; i < n && err < bestErr; i++) {
      let diff = fr(fr(fr(thisScale * Laux[i]) + thisMin) - x[xo + i]);
      diff = useMad ? Math.abs(diff) : fr(diff * diff);
      err = fr(err + fr(weights[i] * diff));
    }
    if (err < bestErr) {
      for (let i = 0; i < n; i++) L[lo + i] = Laux[i];
      bestErr = err;
      scale = thisScale;
      if (thisMin !== min) {
        min = thisMin;
        for (let i = 0; i < n; i++) xm[i] = x[xo + i] - min;
      }
    }
  }
  kx.min = -min;
  return scale;
}

/** Pack 2-bit levels L (256, one byte each) into qs at `q` the way Q2_K/Q3_K store them. */
function pack2(L: Uint8Array | Int8Array, out: Uint8Array, q: number): void {
  for (let j = 0; j < QK_K; j += 128) {
    for (let l = 0; l < 32; l++) {
      out[q + j / 4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Quantization (quantize_row_*_ref)

/** quantize_row_q2_K_ref: 16 groups of 16 fitted by make_qkx2_quants (weights |x|), 4-bit scales and mins. */
export function quantQ2_K(x: Float32Array, out: Uint8Array): void {
  const nb = x.length / QK_K;
  const L = new Uint8Array(QK_K), Laux = new Uint8Array(16), weights = new Float32Array(16);
  const mins = new Float32Array(16), scales = new Float32Array(16);
  for (let i = 0; i < nb; i++) {
    const xb = i * QK_K, o = i * 84;
    let maxScale = 0, maxMin = 0;
    for (let j = 0; j < 16; j++) {
      for (let l = 0; l < 16; l++) weights[l] = Math.abs(x[xb + 16 * j + l]);
      const s = makeQkx2Quants(16, 3, x, xb + 16 * j, weights, L, 16 * j, Laux, -0.5, fr(0.1), 15, true);
      const m = kx.min;
      scales[j] = s;
      mins[j] = m;
      if (s > maxScale) maxScale = s;
      if (m > maxMin) maxMin = m;
    }
    let d = 0, dmin = 0;
    if (maxScale > 0) {
      const iscale = fr(15 / maxScale);
      for (let j = 0; j < 16; j++) out[o + j] = nearestInt(fr(iscale * scales[j])) & 0xff;
      d = writeF16(out, o + 80, fr(maxScale / 15));
    } else {
      out.fill(0, o, o + 16);
      d = writeF16(out, o + 80, 0);
    }
    if (maxMin > 0) {
      const iscale = fr(15 / maxMin);
      for (let j = 0; j < 16; j++) out[o + j] |= nearestInt(fr(iscale * mins[j])) << 4;
      dmin = writeF16(out, o + 82, fr(maxMin / 15));
    } else {
      dmin = writeF16(out, o + 82, 0);
    }
    for (let j = 0; j < 16; j++) {
      const dj = fr(d * (out[o + j] & 0xf));
      if (!dj) continue;
      const dm = fr(dmin * (out[o + j] >>> 4));
      for (let ii = 0; ii < 16; ii++) {
        const l = nearestInt(fr(fr(x[xb + 16 * j + ii] + dm) / dj));
        L[16 * j + ii] = Math.max(0, Math.min(3, l));
      }
    }
    pack2(L, out, o + 16);
  }
}

/** quantize_row_q3_K_ref: 16 groups of 16 fitted by make_q3_quants, 6-bit signed scales, 3-bit levels. */
export function quantQ3_K(x: Float32Array, out: Uint8Array): void {
  const nb = x.length / QK_K;
  const L = new Int8Array(QK_K), scales = new Float32Array(16);
  for (let i = 0; i < nb; i++) {
    const xb = i * QK_K, o = i * 110, s = o + 96;
    let maxScale = 0, amax = 0;
    for (let j = 0; j < 16; j++) {
      scales[j] = makeQ3Quants(16, 4, x, xb + 16 * j, L, 16 * j);
      const a = Math.abs(scales[j]);
      if (a > amax) {
        amax = a;
        maxScale = scales[j];
      }
    }
    out.fill(0, s, s + 12);
    let d = 0;
    if (maxScale) {
      const iscale = fr(-32 / maxScale);
      for (let j = 0; j < 16; j++) {
        let l = (nearestInt(fr(iscale * scales[j])) << 24) >> 24; // int8_t
        l = Math.max(-32, Math.min(31, l)) + 32;
        if (j < 8) out[s + j] = l & 0xf;
        else out[s + j - 8] |= (l & 0xf) << 4;
        l >>= 4;
        out[s + (j % 4) + 8] |= l << (2 * (j >> 2));
      }
      d = writeF16(out, o + 108, fr(1 / iscale));
    } else {
      d = writeF16(out, o + 108, 0);
    }
    const sc = new Int32Array(16);
    q3Scales(out, o, sc);
    for (let j = 0; j < 16; j++) {
      const dj = fr(d * (sc[j] - 32));
      if (!dj) continue;
      for (let ii = 0; ii < 16; ii++) {
        const l = nearestInt(fr(x[xb + 16 * j + ii] / dj));
        L[16 * j + ii] = Math.max(-4, Math.min(3, l)) + 4;
      }
    }
    // the high bit of level j goes to hmask[j % 32], bit j / 32
    out.fill(0, o, o + 32);
    for (let j = 0; j < QK_K; j++) {
      if (L[j] > 3) {
        out[o + (j & 31)] |= 1 << (j >> 5);
        L[j] -= 4;
      }
    }
    pack2(L, out, o + 32);
  }
}

/** Pack eight 6-bit scales and mins into the 12 bytes at `s` (Q4_K/Q5_K). */
function packScalesMins(ls: Uint8Array, lm: Uint8Array, out: Uint8Array, s: number): void {
  for (let j = 0; j < 8; j++) {
    if (j < 4) {
      out[s + j] = ls[j];
      out[s + j + 4] = lm[j];
    } else {
      out[s + j + 4] = (ls[j] & 0xf) | ((lm[j] & 0xf) << 4);
      out[s + j - 4] |= (ls[j] >>> 4) << 6;
      out[s + j] |= (lm[j] >>> 4) << 6;
    }
  }
}

/**
 * The shared part of quantize_row_q4_K_ref / q5_K_ref: eight groups of 32 fitted by make_qkx2_quants (weights
 * rms + |x|), 6-bit scales and mins under half d and dmin, then every level re-derived from the stored
 * scales. Levels 0..nmax go to L; d·dmin·scales go to out[o, o+16).
 */
function quantScaleMinBlock(
  x: Float32Array,
  xb: number,
  out: Uint8Array,
  o: number,
  nmax: number,
  rmin: number,
  nstep: number,
  t: ScratchKx,
): void {
  const { L, Laux, weights, scales, mins, ls, lm } = t;
  let maxScale = 0, maxMin = 0;
  for (let j = 0; j < 8; j++) {
    const xo = xb + 32 * j;
    let sumX2 = 0;
    for (let l = 0; l < 32; l++) sumX2 = fr(sumX2 + fr(x[xo + l] * x[xo + l]));
    const avX = fr(Math.sqrt(fr(sumX2 / 32)));
    for (let l = 0; l < 32; l++) weights[l] = fr(avX + Math.abs(x[xo + l]));
    const s = makeQkx2Quants(32, nmax, x, xo, weights, L, 32 * j, Laux, rmin, fr(0.1), nstep, false);
    const m = kx.min;
    scales[j] = s;
    mins[j] = m;
    if (s > maxScale) maxScale = s;
    if (m > maxMin) maxMin = m;
  }
  const invScale = maxScale > 0 ? fr(63 / maxScale) : 0;
  const invMin = maxMin > 0 ? fr(63 / maxMin) : 0;
  for (let j = 0; j < 8; j++) {
    ls[j] = Math.min(63, nearestInt(fr(invScale * scales[j])) & 0xff);
    lm[j] = Math.min(63, nearestInt(fr(invMin * mins[j])) & 0xff);
  }
  out.fill(0, o + 4, o + 16);
  packScalesMins(ls, lm, out, o + 4);
  const d = writeF16(out, o, fr(maxScale / 63));
  const dmin = writeF16(out, o + 2, fr(maxMin / 63));
  for (let j = 0; j < 8; j++) {
    const dj = fr(d * scaleK4(j, out, o + 4));
    if (!dj) continue;
    const dm = fr(dmin * minK4(j, out, o + 4));
    for (let ii = 0; ii < 32; ii++) {
      const l = nearestInt(fr(fr(x[xb + 32 * j + ii] + dm) / dj));
      L[32 * j + ii] = Math.max(0, Math.min(nmax, l));
    }
  }
}

interface ScratchKx {
  L: Uint8Array;
  Laux: Uint8Array;
  weights: Float32Array;
  scales: Float32Array;
  mins: Float32Array;
  ls: Uint8Array;
  lm: Uint8Array;
}

function scratchKx(): ScratchKx {
  return {
    L: new Uint8Array(QK_K),
    Laux: new Uint8Array(32),
    weights: new Float32Array(32),
    scales: new Float32Array(8),
    mins: new Float32Array(8),
    ls: new Uint8Array(8),
    lm: new Uint8Array(8),
  };
}

/** quantize_row_q4_K_ref. */
export function quantQ4_K(x: Float32Array, out: Uint8Array): void {
  const nb = x.length / QK_K;
  const t = scratchKx();
  for (let i = 0; i < nb; i++) {
    const o = i * 144;
    quantScaleMinBlock(x, i * QK_K, out, o, 15, -1, 20, t);
    let q = o + 16;
    for (let j = 0; j < QK_K; j += 64) {
      for (let l = 0; l < 32; l++) out[q + l] = t.L[j + l] | (t.L[j + l + 32] << 4);
      q += 32;
    }
  }
}

/** quantize_row_q5_K_ref. */
export function quantQ5_K(x: Float32Array, out: Uint8Array): void {
  const nb = x.length / QK_K;
  const t = scratchKx();
  for (let i = 0; i < nb; i++) {
    const o = i * 176, qh = o + 16;
    quantScaleMinBlock(x, i * QK_K, out, o, 31, fr(-0.5), 15, t);
    out.fill(0, qh, qh + 32);
    let ql = o + 48, m1 = 1, m2 = 2;
    for (let n = 0; n < QK_K; n += 64) {
      for (let j = 0; j < 32; j++) {
        let l1 = t.L[n + j], l2 = t.L[n + j + 32];
        if (l1 > 15) {
          l1 -= 16;
          out[qh + j] |= m1;
        }
        if (l2 > 15) {
          l2 -= 16;
          out[qh + j] |= m2;
        }
        out[ql + j] = l1 | (l2 << 4);
      }
      m1 <<= 2;
      m2 <<= 2;
      ql += 32;
    }
  }
}

/** quantize_row_q6_K_ref: 16 groups of 16 fitted by make_qx_quants, int8 scales under one half d. */
export function quantQ6_K(x: Float32Array, out: Uint8Array): void {
  const nb = x.length / QK_K;
  const L = new Int8Array(QK_K), scales = new Float32Array(16);
  for (let i = 0; i < nb; i++) {
    const xb = i * QK_K, o = i * 210;
    let maxScale = 0, maxAbsScale = 0;
    for (let ib = 0; ib < 16; ib++) {
      const s = makeQxQuants(16, 32, x, xb + 16 * ib, L, 16 * ib);
      scales[ib] = s;
      if (Math.abs(s) > maxAbsScale) {
        maxAbsScale = Math.abs(s);
        maxScale = s;
      }
    }
    if (maxAbsScale < GROUP_MAX_EPS) {
      out.fill(0, o, o + 210);
      continue;
    }
    const iscale = fr(-128 / maxScale);
    const d = writeF16(out, o + 208, fr(1 / iscale));
    for (let ib = 0; ib < 16; ib++) {
      out[o + 192 + ib] = Math.min(127, nearestInt(fr(iscale * scales[ib]))) & 0xff;
    }
    for (let j = 0; j < 16; j++) {
      const dj = fr(d * ((out[o + 192 + j] << 24) >> 24));
      if (!dj) continue;
      for (let ii = 0; ii < 16; ii++) {
        const l = nearestInt(fr(x[xb + 16 * j + ii] / dj));
        L[16 * j + ii] = Math.max(-32, Math.min(31, l)) + 32;
      }
    }
    let ql = o, qh = o + 128;
    for (let j = 0; j < QK_K; j += 128) {
      for (let l = 0; l < 32; l++) {
        const a = L[j + l], b = L[j + l + 32], c = L[j + l + 64], e = L[j + l + 96];
        out[ql + l] = (a & 0xf) | ((c & 0xf) << 4);
        out[ql + l + 32] = (b & 0xf) | ((e & 0xf) << 4);
        out[qh + l] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
      }
      ql += 64;
      qh += 32;
    }
  }
}

/** quantize_row_q8_K_ref (activations): d = max/-127 as float32, q = min(127, nearest(x/d)), sums of 16. */
export function quantQ8_K(x: Float32Array, out: Uint8Array): void {
  const nb = x.length / QK_K;
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  for (let i = 0; i < nb; i++) {
    const xb = i * QK_K, o = i * 292;
    const max = signedAbsMax(x, xb, QK_K);
    if (!max) {
      out.fill(0, o, o + 292);
      continue;
    }
    const iscale = fr(-127 / max);
    for (let j = 0; j < 16; j++) {
      let sum = 0;
      for (let ii = 0; ii < 16; ii++) {
        const v = Math.min(127, nearestInt(fr(iscale * x[xb + 16 * j + ii])));
        out[o + 4 + 16 * j + ii] = v & 0xff;
        sum += v;
      }
      dv.setInt16(o + 260 + 2 * j, sum, true);
    }
    dv.setFloat32(o, fr(1 / iscale), true);
  }
}
