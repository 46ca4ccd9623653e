// CPU kernels of the Lethe native backend: type conversion, dequantization, batched matmul, norms, RoPE.
// AVX2/FMA/F16C intrinsics where the compiler targets them (-march=native), scalar code otherwise.
#pragma once

#include <stdint.h>
#include <string.h>

#include "../f16.h"

#include <cmath>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LETHE_AVX2 1
#endif
#if defined(__F16C__)
#include <immintrin.h>
#define LETHE_F16C 1
#endif

namespace lethe {

static const int QK = 32;  // elements per Q4_0 / Q8_0 block
static const size_t Q8_0_BYTES = 34;  // f16 scale + 32 x int8
static const size_t Q4_0_BYTES = 18;  // f16 scale + 16 bytes of nibbles

inline float f16_to_f32(uint16_t h) {
#ifdef LETHE_F16C
  return _cvtsh_ss(h);
#else
  return lethe_f16_to_f32(h);
#endif
}

// f32 -> IEEE half, round to nearest even (= JS Math.f16round): overflow to +-inf, subnormals kept, NaN quiet.
inline uint16_t f32_to_f16(float f) {
#ifdef LETHE_F16C
  return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  return lethe_f32_to_f16(f);
#endif
}

inline void f32_row_to_f16(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
#ifdef LETHE_F16C
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128((__m128i*)(dst + i), h);
  }
#endif
  for (; i < n; i++) dst[i] = f32_to_f16(src[i]);
}

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

inline void f16_row_to_f32(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
#ifdef LETHE_F16C
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm_loadu_si128((const __m128i*)(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < n; i++) dst[i] = f16_to_f32(src[i]);
}

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  memcpy(&v, p, 2);
  return v;
}

// One row of n (multiple of 32) Q8_0 values to f32.
inline void q8_0_row_to_f32(const uint8_t* src, float* dst, int64_t n) {
  const int64_t nb = n / QK;
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t* blk = src + b * Q8_0_BYTES;
    const float d = f16_to_f32(load_u16(blk));
    const int8_t* q = (const int8_t*)(blk + 2);
    float* y = dst + b * QK;
#ifdef LETHE_AVX2
    const __m256 vd = _mm256_set1_ps(d);
    for (int j = 0; j < QK; j += 8) {
      __m128i q8 = _mm_loadl_epi64((const __m128i*)(q + j));
      __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
      _mm256_storeu_ps(y + j, _mm256_mul_ps(f, vd));
    }
#else
    for (int j = 0; j < QK; j++) y[j] = (float)q[j] * d;
#endif
  }
}

// One row of n (multiple of 32) Q4_0 values to f32 (ggml layout: low nibbles = first 16, high = last 16).
inline void q4_0_row_to_f32(const uint8_t* src, float* dst, int64_t n) {
  const int64_t nb = n / QK;
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t* blk = src + b * Q4_0_BYTES;
    const float d = f16_to_f32(load_u16(blk));
    const uint8_t* q = blk + 2;
    float* y = dst + b * QK;
#ifdef LETHE_AVX2
    const __m256 vd = _mm256_set1_ps(d);
    const __m128i raw = _mm_loadu_si128((const __m128i*)q);
    const __m128i mask = _mm_set1_epi8(0x0f);
    const __m128i eight = _mm_set1_epi8(8);
    const __m128i lo = _mm_sub_epi8(_mm_and_si128(raw, mask), eight);
    const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), eight);
    _mm256_storeu_ps(y + 0, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), vd));
    _mm256_storeu_ps(y + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), vd));
    _mm256_storeu_ps(y + 16, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), vd));
    _mm256_storeu_ps(y + 24, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), vd));
#else
    for (int j = 0; j < QK / 2; j++) {
      y[j] = (float)((int)(q[j] & 0x0f) - 8) * d;
      y[j + QK / 2] = (float)((int)(q[j] >> 4) - 8) * d;
    }
#endif
  }
}

#ifdef LETHE_AVX2
inline float hsum256(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 sh = _mm_movehdup_ps(lo);
  __m128 s = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, s);
  s = _mm_add_ss(s, sh);
  return _mm_cvtss_f32(s);
}
#endif

// dot(a, b) over n floats.
inline float dot1(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float s = 0.f;
#ifdef LETHE_AVX2
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
         a3 = _mm256_setzero_ps();
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), a3);
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
  s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#endif
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

// Fused dequantize-and-dot of one quantized / half weight row with x (decode, N = 1): the weight values are
// exactly those of q8_0_row_to_f32 / q4_0_row_to_f32 / f16_row_to_f32 and the accumulation order is dot1's,
// so the result equals dot1(dequantized row, x) without writing the row out.
#ifdef LETHE_AVX2
inline float dot_q8_0(const uint8_t* row, const float* x, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
         a3 = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / QK; b++) {
    const uint8_t* blk = row + b * Q8_0_BYTES;
    const __m256 vd = _mm256_set1_ps(f16_to_f32(load_u16(blk)));
    const int8_t* q = (const int8_t*)(blk + 2);
    const float* xb = x + b * QK;
#define LETHE_Q8_W(j) \
  _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(q + (j))))), vd)
    a0 = _mm256_fmadd_ps(LETHE_Q8_W(0), _mm256_loadu_ps(xb), a0);
    a1 = _mm256_fmadd_ps(LETHE_Q8_W(8), _mm256_loadu_ps(xb + 8), a1);
    a2 = _mm256_fmadd_ps(LETHE_Q8_W(16), _mm256_loadu_ps(xb + 16), a2);
    a3 = _mm256_fmadd_ps(LETHE_Q8_W(24), _mm256_loadu_ps(xb + 24), a3);
#undef LETHE_Q8_W
  }
  return hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

inline float dot_f16(const uint16_t* w, const float* x, int64_t n) {
  int64_t i = 0;
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
         a3 = _mm256_setzero_ps();
#define LETHE_H8(k) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(w + (k))))
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_fmadd_ps(LETHE_H8(i), _mm256_loadu_ps(x + i), a0);
    a1 = _mm256_fmadd_ps(LETHE_H8(i + 8), _mm256_loadu_ps(x + i + 8), a1);
    a2 = _mm256_fmadd_ps(LETHE_H8(i + 16), _mm256_loadu_ps(x + i + 16), a2);
    a3 = _mm256_fmadd_ps(LETHE_H8(i + 24), _mm256_loadu_ps(x + i + 24), a3);
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(LETHE_H8(i), _mm256_loadu_ps(x + i), a0);
#undef LETHE_H8
  float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < n; i++) s += f16_to_f32(w[i]) * x[i];
  return s;
}

inline float dot_q4_0(const uint8_t* row, const float* x, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
         a3 = _mm256_setzero_ps();
  const __m128i mask = _mm_set1_epi8(0x0f), eight = _mm_set1_epi8(8);
  for (int64_t b = 0; b < n / QK; b++) {
    const uint8_t* blk = row + b * Q4_0_BYTES;
    const __m256 vd = _mm256_set1_ps(f16_to_f32(load_u16(blk)));
    const __m128i raw = _mm_loadu_si128((const __m128i*)(blk + 2));
    const __m128i lo = _mm_sub_epi8(_mm_and_si128(raw, mask), eight);
    const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), eight);
    const float* xb = x + b * QK;
    const __m256 w0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), vd);
    const __m256 w1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), vd);
    const __m256 w2 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), vd);
    const __m256 w3 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), vd);
    a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xb), a0);
    a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xb + 8), a1);
    a2 = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xb + 16), a2);
    a3 = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xb + 24), a3);
  }
  return hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}
#endif

// w · x0..x3 (four activation rows against one hot weight row).
inline void dot4(const float* w, const float* x0, const float* x1, const float* x2, const float* x3, int64_t n,
                 float* out) {
  int64_t i = 0;
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#ifdef LETHE_AVX2
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
         a3 = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    __m256 wv = _mm256_loadu_ps(w + i);
    a0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + i), a0);
    a1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x1 + i), a1);
    a2 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x2 + i), a2);
    a3 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x3 + i), a3);
  }
  s0 = hsum256(a0);
  s1 = hsum256(a1);
  s2 = hsum256(a2);
  s3 = hsum256(a3);
#endif
  for (; i < n; i++) {
    s0 += w[i] * x0[i];
    s1 += w[i] * x1[i];
    s2 += w[i] * x2[i];
    s3 += w[i] * x3[i];
  }
  out[0] = s0;
  out[1] = s1;
  out[2] = s2;
  out[3] = s3;
}

// Register-blocked micro-kernel: out[c*ldo + r] = w_r · x_c for R weight rows (stride ldw) and C activation
// rows (stride ldx): each loaded weight vector feeds C FMAs and each activation vector R.
template <int R, int C>
inline void dot_block(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t n, float* out,
                      int64_t ldo) {
  int64_t i = 0;
  float s[R][C];
#ifdef LETHE_AVX2
  __m256 acc[R][C];
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    __m256 xv[C];
    for (int c = 0; c < C; c++) xv[c] = _mm256_loadu_ps(x + c * ldx + i);
    for (int r = 0; r < R; r++) {
      const __m256 wv = _mm256_loadu_ps(w + r * ldw + i);
      for (int c = 0; c < C; c++) acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) s[r][c] = hsum256(acc[r][c]);
#else
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) s[r][c] = 0.f;
#endif
  for (; i < n; i++) {
    for (int r = 0; r < R; r++)
      for (int c = 0; c < C; c++) s[r][c] += w[r * ldw + i] * x[c * ldx + i];
  }
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) out[c * ldo + r] = s[r][c];
}

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(LETHE_AVX2)
#define LETHE_AVX512 1
inline float hsum512(__m512 v) {
  return hsum256(_mm256_add_ps(_mm512_extractf32x8_ps(v, 0), _mm512_extractf32x8_ps(v, 1)));
}

// AVX-512 register-blocked micro-kernel (16-wide): out[c*ldo + r] = w_r . x_c for R weight rows (stride ldw)
// and C activation rows (stride ldx). Per 16 columns: C activation loads kept in registers, R weight loads,
// R*C FMAs into R*C accumulators (R*C + C + 1 <= 32 zmm registers). The column tail uses masked loads.
template <int R, int C>
inline void dot_block16(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t n, float* out,
                        int64_t ldo) {
  __m512 acc[R][C];
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 xv[C];
    for (int c = 0; c < C; c++) xv[c] = _mm512_loadu_ps(x + c * ldx + i);
    for (int r = 0; r < R; r++) {
      const __m512 wv = _mm512_loadu_ps(w + r * ldw + i);
      for (int c = 0; c < C; c++) acc[r][c] = _mm512_fmadd_ps(wv, xv[c], acc[r][c]);
    }
  }
  if (i < n) {
    const __mmask16 mk = (__mmask16)((1u << (n - i)) - 1);
    __m512 xv[C];
    for (int c = 0; c < C; c++) xv[c] = _mm512_maskz_loadu_ps(mk, x + c * ldx + i);
    for (int r = 0; r < R; r++) {
      const __m512 wv = _mm512_maskz_loadu_ps(mk, w + r * ldw + i);
      for (int c = 0; c < C; c++) acc[r][c] = _mm512_fmadd_ps(wv, xv[c], acc[r][c]);
    }
  }
  // Reduce: for each activation c, the R row sums.
  for (int c = 0; c < C; c++)
    for (int r = 0; r < R; r++) out[c * ldo + r] = hsum512(acc[r][c]);
}
#endif

#ifdef LETHE_AVX2
// exp(x), 8 lanes (Cephes expf: x = n ln2 + r, degree-6 polynomial; ~1 ulp). Inputs below -88.37 give 0.
inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f)), _mm256_set1_ps(88.3762626647949f));
  __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_add_ps(_mm256_fmadd_ps(y, z, x), _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// The 8 horizontal sums of a[0..8) as one vector (lane i = sum of a[i]).
inline __m256 hsum8x8(const __m256* a) {
  const __m256 s01 = _mm256_hadd_ps(a[0], a[1]), s23 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 s45 = _mm256_hadd_ps(a[4], a[5]), s67 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
  return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

// 8 K/V elements at element index i of a row buffer of f32 or IEEE-half values, as f32.
template <bool F16>
inline __m256 load8(const void* base, size_t i) {
  if (F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)base + i)));
  return _mm256_loadu_ps((const float*)base + i);
}
#endif

// y[i] += a * x[i]
inline void axpy(float* y, const float* x, float a, int64_t n) {
  int64_t i = 0;
#ifdef LETHE_AVX2
  const __m256 va = _mm256_set1_ps(a);
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  }
#endif
  for (; i < n; i++) y[i] += a * x[i];
}

// y = x * rsqrt(mean(x^2) + eps) * w
inline void rmsnorm(float* y, const float* x, const float* w, int64_t n, float eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; i++) ss += (double)x[i] * (double)x[i];
  const float scale = (float)(1.0 / std::sqrt(ss / (double)n + (double)eps));
  for (int64_t i = 0; i < n; i++) y[i] = x[i] * scale * w[i];
}

}  // namespace lethe
