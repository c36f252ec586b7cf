// Arguments of the fused sampling kernels, the counter-based random bits they share with the torch and Triton
// backends (smtpo_fast/ops/sampling.py: hash_uniform), the order-preserving float keys their threshold searches
// bisect over, and the per-instruction-set declarations of csrc/isa/sampling_isa.cpp.
#pragma once
#include <cstdint>
#include <cstring>

#include "common.h"
#include "cpu_isa.h"

namespace smtpo {

// logits: [B, V] rows with element stride sB (unit along V). Outputs per row: the token (int64), its log-prob under
// the truncated distribution, and the cutoff: the kept tokens are the finite x = logit * inv_temp with x >= cutoff.
struct SampleArgs {
  const void* logits; int dtype;
  int64_t B, V, sB;
  float inv_temp;
  int64_t top_k;      // 0: off
  float top_p;        // 1: off
  float min_p;        // 0: off
  const int64_t* seed;  // one element
  int64_t* tokens; float* logprobs; float* cutoff;
};

// murmur3's 32-bit finaliser.
SMTPO_HD uint32_t fmix32(uint32_t h) {
  h ^= h >> 16; h *= 0x85EBCA6Bu; h ^= h >> 13; h *= 0xC2B2AE35u; h ^= h >> 16;
  return h;
}

SMTPO_HD uint32_t hash_row_key(int64_t seed, int64_t row) {
  const uint32_t lo = static_cast<uint32_t>(seed & 0xFFFFFFFFll);
  const uint32_t hi = static_cast<uint32_t>((seed >> 32) & 0xFFFFFFFFll);
  return fmix32(lo ^ fmix32(hi ^ fmix32(static_cast<uint32_t>(row) + 0x9E3779B9u)));
}

// A uniform in (0, 1) with 24 random bits for (row key, column).
SMTPO_HD float hash_uniform(uint32_t row_key, int64_t col) {
  const uint32_t c = static_cast<uint32_t>(col) * 0x27D4EB2Fu + 0x165667B1u;
  const uint32_t bits = fmix32(row_key ^ fmix32(c));
  return (static_cast<float>(bits >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

// Order-preserving map float -> int32 (-0 and +0 both map to 0), and back.
SMTPO_HD int32_t float_key(float x) {
  x = x + 0.0f;  // -0 -> +0
  int32_t i;
#ifdef __CUDA_ARCH__
  i = __float_as_int(x);
#else
  std::memcpy(&i, &x, 4);
#endif
  return i < 0 ? (i ^ 0x7FFFFFFF) : i;
}

SMTPO_HD float key_float(int32_t k) {
  const int32_t i = k < 0 ? (k ^ 0x7FFFFFFF) : k;
#ifdef __CUDA_ARCH__
  return __int_as_float(i);
#else
  float x;
  std::memcpy(&x, &i, 4);
  return x;
#endif
}

namespace isa_base { void sample(const SampleArgs& a); }
#ifdef SMTPO_HAVE_X86_ISA
namespace isa_avx2 { void sample(const SampleArgs& a); }
namespace isa_avx512 { void sample(const SampleArgs& a); }
#endif

}  // namespace smtpo
