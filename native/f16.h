/*
 * Portable IEEE half <-> f32 conversions (no intrinsics), shared by the CPU library's non-F16C path, the CUDA
 * library's host-side weight upload and the CUDA host emulator.
 * f32 -> half rounds to nearest even, exactly like JS Math.f16round and F16C/cvt.rn.f16.f32: overflow to +-inf,
 * subnormals kept, NaN stays a quiet NaN.
 */
#ifndef LETHE_F16_H
#define LETHE_F16_H

#include <stdint.h>
#include <string.h>

static inline float lethe_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal
      int e = -1;
      do {
        e++;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static inline uint16_t lethe_f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  const uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return sign | 0x7c00 | (x > 0x7f800000u ? 0x200 | ((x >> 13) & 0x3ff) : 0);
  if (x >= 0x477ff000u) return sign | 0x7c00;  // >= 65520 rounds to inf
  if (x < 0x38800000u) {  // below 2^-14: f16 subnormal (or zero); the float add rounds at 2^-24 (RNE)
    float a;
    memcpy(&a, &x, 4);
    a += 0.5f;
    uint32_t b;
    memcpy(&b, &a, 4);
    return sign | (uint16_t)(b - 0x3f000000u);
  }
  const uint32_t odd = (x >> 13) & 1;
  x += ((uint32_t)(15 - 127) << 23) + 0xfff + odd;
  return sign | (uint16_t)(x >> 13);
}

#endif
