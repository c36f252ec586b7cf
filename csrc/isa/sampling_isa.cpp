// Fused sampling on the CPU, compiled once per instruction set (namespace SMTPO_ISA). One row per task:
//
// 1. x = logit * inv_temp into a float32 buffer, its max m;
// 2. top-k: the k-th largest x exactly, by a 32-step bisection over order-preserving int32 keys (count x >= t);
// 3. top-p: over the top-k survivors, the smallest key t with mass(x > t) < top_p * Z, by the same bisection
//    (no sort of the vocabulary: 32 vectorised passes);
// 4. min-p: x >= m + log(min_p);
// 5. an inverse-CDF draw over the kept tokens with one uniform per row (hash of seed, row), and the log-prob.
#include <cmath>
#include <limits>
#include <vector>

#include "../sampling_args.h"
#include "vec_math.h"

#ifndef SMTPO_ISA
#error "SMTPO_ISA must name the namespace of this build (see CMakeLists.txt)"
#endif

namespace smtpo {
namespace SMTPO_ISA {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

static inline int64_t count_at_least(const int32_t* keys, int64_t V, int32_t t) {
  int64_t c = 0;
#pragma omp simd reduction(+ : c)
  for (int64_t i = 0; i < V; ++i) c += keys[i] >= t ? 1 : 0;
  return c;
}

static inline float mass_above(const int32_t* keys, const float* e, int64_t V, int32_t t) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < V; ++i) s += keys[i] > t ? e[i] : 0.f;
  return s;
}

template <int DT>
static void sample_impl(const SampleArgs& a) {
  using T = typename Elem<DT>::T;
  const T* logits = static_cast<const T*>(a.logits);
  const int64_t V = a.V;
  const int64_t seed = a.seed[0];
#pragma omp parallel
  {
    std::vector<float> x(V), e(V);
    std::vector<int32_t> keys(V);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < a.B; ++r) {
      const T* row = logits + r * a.sB;
      float m = kNegInf;
#pragma omp simd reduction(max : m)
      for (int64_t i = 0; i < V; ++i) {
        x[i] = Elem<DT>::load(row, i) * a.inv_temp;
        m = x[i] > m ? x[i] : m;
      }
      if (!(m > kNegInf)) {  // no finite logit (or NaN): nothing to sample from
        a.tokens[r] = 0;
        a.logprobs[r] = std::numeric_limits<float>::quiet_NaN();
        a.cutoff[r] = std::numeric_limits<float>::infinity();
        continue;
      }
      int64_t n_finite = 0;
      int32_t kmin = float_key(m);
      for (int64_t i = 0; i < V; ++i) {
        keys[i] = float_key(x[i]);
        if (x[i] > kNegInf) {
          ++n_finite;
          kmin = keys[i] < kmin ? keys[i] : kmin;
        }
      }
      float cut = kNegInf;
      if (a.top_k > 0 && a.top_k < n_finite) {
        // Largest key t with count(key >= t) >= k: the k-th largest value.
        int64_t lo = kmin, hi = static_cast<int64_t>(float_key(m)) + 1;
        while (hi - lo > 1) {
          const int64_t mid = lo + (hi - lo) / 2;
          if (count_at_least(keys.data(), V, static_cast<int32_t>(mid)) >= a.top_k) lo = mid; else hi = mid;
        }
        cut = key_float(static_cast<int32_t>(lo));
      }
      if (a.top_p < 1.f) {
        const int32_t cut_key = cut > kNegInf ? float_key(cut) : kmin;
        float Z = 0.f;
#pragma omp simd reduction(+ : Z)
        for (int64_t i = 0; i < V; ++i) {
          e[i] = keys[i] >= cut_key && x[i] > kNegInf ? fast_exp(x[i] - m) : 0.f;
          Z += e[i];
        }
        const float target = a.top_p * Z;
        // Smallest key t with mass(key > t) < target; mass(key > cut_key - 1) = Z is not below it.
        int64_t lo = static_cast<int64_t>(cut_key) - 1, hi = float_key(m);
        while (hi - lo > 1) {
          const int64_t mid = lo + (hi - lo) / 2;
          if (mass_above(keys.data(), e.data(), V, static_cast<int32_t>(mid)) < target) hi = mid; else lo = mid;
        }
        const float cut_p = key_float(static_cast<int32_t>(hi));
        cut = cut_p > cut ? cut_p : cut;
      }
      if (a.min_p > 0.f) {
        const float cut_m = m + std::log(a.min_p);
        cut = cut_m > cut ? cut_m : cut;
      }
      float Z = 0.f;
#pragma omp simd reduction(+ : Z)
      for (int64_t i = 0; i < V; ++i) {
        e[i] = x[i] >= cut && x[i] > kNegInf ? fast_exp(x[i] - m) : 0.f;
        Z += e[i];
      }
      const float u = hash_uniform(hash_row_key(seed, r), V) * Z;
      int64_t tok = -1, last = 0;
      float c = 0.f;
      for (int64_t i = 0; i < V; ++i) {
        if (e[i] > 0.f) {
          last = i;
          c += e[i];
          if (c > u) { tok = i; break; }
        }
      }
      if (tok < 0) tok = last;  // u * Z rounded up to the total
      a.tokens[r] = tok;
      a.logprobs[r] = x[tok] - m - std::log(Z);
      a.cutoff[r] = cut;
    }
  }
}

}  // namespace

void sample(const SampleArgs& a) {
  dispatch_float_dtype(a.dtype, "logits", [&](auto dt) { sample_impl<decltype(dt)::value>(a); });
}

}  // namespace SMTPO_ISA
}  // namespace smtpo
