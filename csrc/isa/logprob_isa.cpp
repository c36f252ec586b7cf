// Fused token log-prob / entropy kernels for the CPU, compiled once per instruction set (namespace SMTPO_ISA).
//
// Forward, per row: one pass over the vocabulary in L1-sized chunks. Each chunk is converted to float32 and scaled
// by 1/temperature into a small stack buffer, its max found, and the running (max m, sum s = sum e^(z-m),
// t = sum e^(z-m) (z-m)) rescaled when the max grows. Then lse = m + log s and entropy = log s - t / s.
// Backward, per row (in chunks, see bwd_row): grad_j = inv_temp * (g_lp (onehot_j - p_j) - g_H p_j (log p_j + H)), p_j = e^(z_j - lse).
#include <cmath>
#include <limits>

#include "../common.h"
#include "vec_math.h"

#ifndef SMTPO_ISA
#error "SMTPO_ISA must name the namespace of this build (see CMakeLists.txt)"
#endif

namespace smtpo {
namespace SMTPO_ISA {

namespace {

constexpr int64_t kChunk = 2048;  // 8 KiB of float32: stays in L1 between the max and the exp pass
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Below this many elements, waking the thread pool costs more than the work.
constexpr int64_t kParallelMin = 1 << 17;
// Backward chunk length in elements (see bwd_row): 1 KiB of float32, 4 KiB of 16-bit logits (measured best).
template <int DT>
constexpr int64_t kBwdChunk = DT == 0 ? 256 : 2048;

template <int DT>
static inline void load_scaled(const typename Elem<DT>::T* src, int64_t n, float inv_temp, float* dst) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = Elem<DT>::load(src, i) * inv_temp;
}

static inline float chunk_max(const float* x, int64_t n) {
  float m = kNegInf;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

template <bool kEntropy, int DT>
static void fwd_row(const typename Elem<DT>::T* row, int64_t V, float inv_temp, float* buf, float& m_out,
                    float& s_out, float& t_out) {
  float m = kNegInf, s = 0.f, t = 0.f;
  for (int64_t c0 = 0; c0 < V; c0 += kChunk) {
    const int64_t n = V - c0 < kChunk ? V - c0 : kChunk;
    load_scaled<DT>(row + c0, n, inv_temp, buf);
    const float cm = chunk_max(buf, n);
    if (cm > m) {
      if (m != kNegInf) {
        const float alpha = std::exp(m - cm);
        if (kEntropy) t = alpha * (t + (m - cm) * s);
        s *= alpha;
      }
      m = cm;
    }
    if (m == kNegInf) continue;  // everything so far is -inf: nothing to add
    float cs = 0.f, ct = 0.f;
    if (kEntropy) {
#pragma omp simd reduction(+ : cs, ct)
      for (int64_t i = 0; i < n; ++i) {
        const float d = buf[i] - m;
        const float e = fast_exp(d);
        cs += e;
        ct += e > 0.f ? e * d : 0.f;  // e = 0 where d = -inf: skip 0 * -inf
      }
    } else {
#pragma omp simd reduction(+ : cs)
      for (int64_t i = 0; i < n; ++i) cs += fast_exp(buf[i] - m);
    }
    s += cs;
    t += ct;
  }
  m_out = m; s_out = s; t_out = t;
}

template <int DT>
static void fwd_impl(const LogprobFwdArgs& a) {
  using T = typename Elem<DT>::T;
  const T* logits = static_cast<const T*>(a.logits);
  const int64_t rows = a.B * a.T;
#pragma omp parallel if (rows > 1 && rows * a.V >= kParallelMin)
  {
    alignas(64) float buf[kChunk];
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = r / a.T, tt = r % a.T;
      const T* row = logits + b * a.sB + tt * a.sT;
      float m, s, t;
      if (a.entropy) fwd_row<true, DT>(row, a.V, a.inv_temp, buf, m, s, t);
      else fwd_row<false, DT>(row, a.V, a.inv_temp, buf, m, s, t);
      const float log_s = std::log(s);
      const float lse = m + log_s;
      a.lse[r] = lse;
      const int64_t label = a.labels[b * a.lsB + tt * a.lsT];
      a.logp[r] = label == a.ignore_index ? 0.f : Elem<DT>::load(row, label) * a.inv_temp - lse;
      if (a.entropy) a.entropy[r] = log_s - t / s;
    }
  }
}

// One row of the backward in chunks of kBwdChunk: each chunk's gradient goes to a small buffer, then to grow.
// CPU time at 4096 x 49152 against writing each element straight after reading it (alternating runs, 2 threads,
// loaded machine): float32 in place ~315 -> ~168 ms, out of place ~180 ms either way; bfloat16 out of place ~275 ->
// ~157 ms, in place ~275 -> 180-250 ms. Longer chunks were slower (float32 8 KiB: ~210 ms): the writes then come in
// bursts that no computation overlaps. Non-temporal stores for the chunk gave nothing measurable here.
// A vector copy loop kept as one: GCC turns a plain copy loop (or a memcpy of bounded length) into `rep movs`,
// which measured 35% slower here (float32 out of place, 1 KiB chunks).
template <typename T>
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-loop-distribute-patterns")))
#endif
static void copy_out(T* __restrict dst, const T* __restrict src, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dst[j] = src[j];
}

template <int DT, bool kLp, bool kEnt>
static inline void bwd_row(const typename Elem<DT>::T* row, typename Elem<DT>::T* grow, int64_t V, float inv_temp,
                           float lse, float H, float gl, float gh, typename Elem<DT>::T* buf) {
  using T = typename Elem<DT>::T;
  // grad_j = inv_temp * (-gl p_j - gh p_j (z_j - lse + H)) (+ inv_temp gl at the label, added by the caller)
  for (int64_t c0 = 0; c0 < V; c0 += kBwdChunk<DT>) {
    const int64_t n = V - c0 < kBwdChunk<DT> ? V - c0 : kBwdChunk<DT>;
    const T* src = row + c0;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const float d = Elem<DT>::load(src, j) * inv_temp - lse;  // log p_j
      const float p = fast_exp(d);
      float g = 0.f;
      if (kLp) g -= gl * p;
      if (kEnt) g -= gh * (p > 0.f ? p * (d + H) : 0.f);
      Elem<DT>::store(buf, j, g * inv_temp);
    }
    copy_out(grow + c0, buf, n);
  }
}

template <int DT>
static void bwd_impl(const LogprobBwdArgs& a) {
  using T = typename Elem<DT>::T;
  const T* logits = static_cast<const T*>(a.logits);
  T* grad = static_cast<T*>(a.grad);
  const int64_t rows = a.B * a.T;
#pragma omp parallel if (rows > 1 && rows * a.V >= kParallelMin)
  {
    alignas(64) T buf[kBwdChunk<DT>];
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = r / a.T, tt = r % a.T;
      const T* row = logits + b * a.sB + tt * a.sT;
      T* grow = grad + b * a.gsB + tt * a.gsT;
      const int64_t label = a.labels[b * a.lsB + tt * a.lsT];
      const bool ignored = label == a.ignore_index;
      const float gl = (a.grad_logp && !ignored) ? a.grad_logp[r] : 0.f;
      const float gh = a.grad_entropy ? a.grad_entropy[r] : 0.f;
      const float lse = a.lse[r];
      const float H = a.grad_entropy ? a.entropy[r] : 0.f;
      // Read the label's logit before the row may be overwritten (in-place backward).
      const float z_label = ignored ? 0.f : Elem<DT>::load(row, label) * a.inv_temp;
      const bool lp = gl != 0.f, ent = gh != 0.f;
      if (lp && ent) bwd_row<DT, true, true>(row, grow, a.V, a.inv_temp, lse, H, gl, gh, buf);
      else if (lp) bwd_row<DT, true, false>(row, grow, a.V, a.inv_temp, lse, H, gl, gh, buf);
      else if (ent) bwd_row<DT, false, true>(row, grow, a.V, a.inv_temp, lse, H, gl, gh, buf);
      else bwd_row<DT, false, false>(row, grow, a.V, a.inv_temp, lse, H, gl, gh, buf);
      if (lp) {
        // The label's entry, recomputed from its original logit: onehot - p, plus the entropy term.
        const float d = z_label - lse;
        const float p = std::exp(d);
        float g = gl * (1.f - p);
        if (ent) g -= gh * (p > 0.f ? p * (d + H) : 0.f);
        Elem<DT>::store(grow, label, g * a.inv_temp);
      }
    }
  }
}

}  // namespace

void logprob_fwd(const LogprobFwdArgs& a) {
  dispatch_float_dtype(a.dtype, "logits", [&](auto dt) { fwd_impl<decltype(dt)::value>(a); });
}

void logprob_bwd(const LogprobBwdArgs& a) {
  dispatch_float_dtype(a.dtype, "logits", [&](auto dt) { bwd_impl<decltype(dt)::value>(a); });
}

}  // namespace SMTPO_ISA
}  // namespace smtpo
