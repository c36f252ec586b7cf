// Decode attention on the CPU, compiled once per instruction set (namespace SMTPO_ISA).
//
// One task per (row, key/value head): the Hq / Hkv query heads that share the key/value head are handled together,
// so each cached key and value vector is read once from memory for all of them (decode is bandwidth-bound). Cache
// positions go by blocks of kBlock: scores for the block, an online-softmax rescale of the running (max, sum,
// accumulator), then the weighted values. Everything accumulates in float32.
#include <cmath>
#include <limits>
#include <vector>

#include "../decode_attention_args.h"
#include "vec_math.h"

#ifndef SMTPO_ISA
#error "SMTPO_ISA must name the namespace of this build (see CMakeLists.txt)"
#endif

namespace smtpo {
namespace SMTPO_ISA {

namespace {

constexpr int64_t kBlock = 64;
template <typename T>
constexpr int64_t kLineElems = 64 / sizeof(T);  // elements per 64-byte cache line
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// DC: the head dim when known at compile time (64, 128: the loops over it unroll into whole vectors), else 0.
template <int DT, int DC>
static void attn_impl(const DecodeAttnArgs& a) {
  using T = typename Elem<DT>::T;
  const int64_t G = a.Hq / a.Hkv, D = DC > 0 ? DC : a.D;
  const int64_t tasks = a.B * a.Hkv;
  const T* Q = static_cast<const T*>(a.q);
  const T* K = static_cast<const T*>(a.k);
  const T* Vv = static_cast<const T*>(a.v);
  T* O = static_cast<T*>(a.out);
#pragma omp parallel
  {
    std::vector<float> qf(G * D), acc(G * D), sc(G * kBlock), mx(G), sum(G);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t b = t / a.Hkv, hk = t % a.Hkv;
      const int64_t row = a.rows ? a.rows[b] : b;
      int64_t L = a.lengths[b];
      L = L < 0 ? 0 : (L > a.S ? a.S : L);
      for (int64_t g = 0; g < G; ++g) {
        const T* qp = Q + b * a.qsB + (hk * G + g) * a.qsH;
        float* qg = qf.data() + g * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) qg[d] = Elem<DT>::load(qp, d) * a.scale;
        mx[g] = kNegInf;
        sum[g] = 0.f;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      const T* kb = K + row * a.ksB + hk * a.ksH;
      const T* vb = Vv + row * a.vsB + hk * a.vsH;
      for (int64_t s0 = 0; s0 < L; s0 += kBlock) {
        const int64_t n = L - s0 < kBlock ? L - s0 : kBlock;
        for (int64_t j = 0; j < n; ++j) {
          const T* kr = kb + (s0 + j) * a.ksS;
          // The cache is cold (one pass per layer and step): ask for the next block's keys and this block's values
          // now, or the loop waits on every cache line.
          const T* kn = kr + kBlock * a.ksS;
          const T* vn = vb + (s0 + j) * a.vsS;
          for (int64_t off = 0; off < D; off += kLineElems<T>) {
            if (s0 + j + kBlock < L) __builtin_prefetch(kn + off, 0, 3);
            __builtin_prefetch(vn + off, 0, 3);
          }
          for (int64_t g = 0; g < G; ++g) {
            const float* qg = qf.data() + g * D;
            float dot = 0.f;
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < D; ++d) dot += qg[d] * Elem<DT>::load(kr, d);
            sc[g * kBlock + j] = dot;
          }
        }
        for (int64_t g = 0; g < G; ++g) {
          float* sg = sc.data() + g * kBlock;
          float bm = kNegInf;
          for (int64_t j = 0; j < n; ++j) bm = sg[j] > bm ? sg[j] : bm;
          const float m_new = bm > mx[g] ? bm : mx[g];
          if (m_new == kNegInf) {  // every score so far is -inf: weights 0
            for (int64_t j = 0; j < n; ++j) sg[j] = 0.f;
            continue;
          }
          const float alpha = mx[g] == kNegInf ? 0.f : std::exp(mx[g] - m_new);
          if (alpha != 1.f) {
            float* ag = acc.data() + g * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) ag[d] *= alpha;
          }
          float bs = 0.f;
#pragma omp simd reduction(+ : bs)
          for (int64_t j = 0; j < n; ++j) {
            const float p = fast_exp(sg[j] - m_new);
            sg[j] = p;
            bs += p;
          }
          sum[g] = sum[g] * alpha + bs;
          mx[g] = m_new;
        }
        for (int64_t j = 0; j < n; ++j) {
          const T* vr = vb + (s0 + j) * a.vsS;
          for (int64_t g = 0; g < G; ++g) {
            const float p = sc[g * kBlock + j];
            float* ag = acc.data() + g * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) ag[d] += p * Elem<DT>::load(vr, d);
          }
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        const float inv = sum[g] > 0.f ? 1.f / sum[g] : 0.f;
        const float* ag = acc.data() + g * D;
        T* og = O + (b * a.Hq + hk * G + g) * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) Elem<DT>::store(og, d, ag[d] * inv);
      }
    }
  }
}

template <int DT>
static void attn_dispatch_d(const DecodeAttnArgs& a) {
  if (a.D == 64) attn_impl<DT, 64>(a);
  else if (a.D == 128) attn_impl<DT, 128>(a);
  else attn_impl<DT, 0>(a);
}

}  // namespace

void decode_attention(const DecodeAttnArgs& a) {
  dispatch_float_dtype(a.dtype, "q", [&](auto dt) { attn_dispatch_d<decltype(dt)::value>(a); });
}

}  // namespace SMTPO_ISA
}  // namespace smtpo
