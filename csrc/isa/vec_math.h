// Branch-free scalar math written so that GCC/Clang vectorise loops that call it (no libm calls, selects instead
// of branches). This file is compiled once per instruction set (see CMakeLists.txt), so the same loops become
// SSE2, AVX2 or AVX-512 code and the module picks one at run time.
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>

namespace smtpo {

static inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// exp(x) for float32, ~1 ulp on the range that matters for softmax (x <= 0 mostly). exp(-inf) = 0 exactly and
// results under ~1e-38 flush to 0, which changes a sum of exponentials by far less than its rounding error.
static inline float fast_exp(float x) {
  const float hi = 88.3762626647949f, lo = -87.3365447504f;
  float xc = x > hi ? hi : x;
  xc = xc < lo ? lo : xc;
  // n = round(x / ln 2) with the 1.5 * 2^23 trick: no rounding instruction needed on plain SSE2.
  const float shifter = 12582912.0f;
  float kn = xc * 1.44269504088896341f + shifter;
  float n = kn - shifter;
  int32_t ni = static_cast<int32_t>(float_to_bits(kn)) - 0x4B400000;
  float r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.0f;
  float scale = bits_to_float(static_cast<uint32_t>(ni + 127) << 23);
  y = y * scale;
  return x < lo ? 0.0f : y;
}

static inline float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

static inline uint16_t float_to_bf16(float f) {  // round to nearest even, NaN stays NaN
  uint32_t u = float_to_bits(f);
  uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  uint32_t nan = (u >> 16) | 0x40u;
  return static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? nan : rounded);
}

// IEEE half -> float without F16C: shift the exponent/mantissa into place and let one multiply by 2^112 rebias
// (this also turns half subnormals into the right float normals); inf/NaN get the float all-ones exponent.
static inline float fp16_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t em = h & 0x7FFFu;
  float mag = bits_to_float(em << 13) * 0x1.0p112f;
  uint32_t special = (em << 13) | 0x7F800000u;
  uint32_t out = em >= 0x7C00u ? special : float_to_bits(mag);
  return bits_to_float(out | sign);
}

static inline uint16_t float_to_fp16(float f) {  // round to nearest even, overflow to inf, NaN kept
  uint32_t u = float_to_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7FFFFFFFu;
  // Normal range: rebias by adding, rounding via the float adder (the denormal trick for small values).
  float af = bits_to_float(a);
  float small = af + 0.5f;                                  // |f| < 2^-14: result is a half subnormal
  uint32_t small_bits = float_to_bits(small) - 0x3F000000u;
  uint32_t mant_odd = (a >> 13) & 1u;
  uint32_t normal = (a + (static_cast<uint32_t>(15 - 127) << 23) + 0xFFFu + mant_odd) >> 13;
  uint32_t r = a < 0x38800000u ? small_bits : normal;
  r = a >= 0x47800000u ? 0x7C00u : r;                       // overflow (incl. inf) -> inf
  r = a > 0x7F800000u ? 0x7E00u : r;                         // NaN
  return static_cast<uint16_t>(r | sign);
}

template <int DT> struct Elem;
template <> struct Elem<0> { using T = float;    static inline float load(const float* p, int64_t i) { return p[i]; }
                             static inline void store(float* p, int64_t i, float v) { p[i] = v; } };
template <> struct Elem<1> { using T = uint16_t; static inline float load(const uint16_t* p, int64_t i) { return bf16_to_float(p[i]); }
                             static inline void store(uint16_t* p, int64_t i, float v) { p[i] = float_to_bf16(v); } };
template <> struct Elem<2> { using T = uint16_t; static inline float load(const uint16_t* p, int64_t i) { return fp16_to_float(p[i]); }
                             static inline void store(uint16_t* p, int64_t i, float v) { p[i] = float_to_fp16(v); } };

}  // namespace smtpo
