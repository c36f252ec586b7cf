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

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define SMTPO_ATTN_AVX512 1
#endif

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

#ifdef SMTPO_ATTN_AVX512
// AVX-512 build, head dim D a multiple of 16 and G = Hq / Hkv <= 8: the same algorithm with the per-position dot
// products kept in vectors. Scores go 16 positions at a time (16 partial-product vectors, then one transpose-and-add
// tree instead of 16 horizontal sums) and the running accumulators of the G heads stay in registers.
template <int DT>
inline __m512 load16(const typename Elem<DT>::T* p);
template <>
inline __m512 load16<0>(const float* p) { return _mm512_loadu_ps(p); }
template <>
inline __m512 load16<1>(const uint16_t* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
template <>
inline __m512 load16<2>(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// [sum(t[0]), sum(t[1]), ..., sum(t[15])]
inline __m512 hsum16(const __m512* t) {
  __m512 a[8], b[4];
  for (int i = 0; i < 8; ++i)
    a[i] = _mm512_add_ps(_mm512_unpacklo_ps(t[2 * i], t[2 * i + 1]), _mm512_unpackhi_ps(t[2 * i], t[2 * i + 1]));
  for (int i = 0; i < 4; ++i)
    b[i] = _mm512_add_ps(_mm512_shuffle_ps(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 c0 = _mm512_add_ps(_mm512_shuffle_f32x4(b[0], b[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(b[0], b[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 c1 = _mm512_add_ps(_mm512_shuffle_f32x4(b[2], b[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(b[2], b[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(c0, c1, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(c0, c1, _MM_SHUFFLE(3, 1, 3, 1)));
}

template <int DT, int D, int G>
static void attn_avx512(const DecodeAttnArgs& a) {
  using T = typename Elem<DT>::T;
  constexpr int C = D / 16;
  const int64_t tasks = a.B * a.Hkv;
  const T* Q = static_cast<const T*>(a.q);
  const T* K = static_cast<const T*>(a.k);
  const T* Vv = static_cast<const T*>(a.v);
  T* O = static_cast<T*>(a.out);
#pragma omp parallel
  {
    alignas(64) float sc[G * kBlock];
    alignas(64) float kf[16 * D];  // one chunk of 16 keys as float32 (bf16 / fp16 caches)
    float mx[G], sum[G], alpha[G];
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t b = t / a.Hkv, hk = t % a.Hkv;
      const int64_t row = a.rows ? a.rows[b] : b;
      int64_t L = a.lengths[b];
      L = L < 0 ? 0 : (L > a.S ? a.S : L);
      __m512 qv[G][C], acc[G][C];
      const __m512 vscale = _mm512_set1_ps(a.scale);
      for (int g = 0; g < G; ++g) {
        const T* qp = Q + b * a.qsB + (hk * G + g) * a.qsH;
        for (int c = 0; c < C; ++c) {
          qv[g][c] = _mm512_mul_ps(load16<DT>(qp + 16 * c), vscale);
          acc[g][c] = _mm512_setzero_ps();
        }
        mx[g] = kNegInf;
        sum[g] = 0.f;
      }
      const T* kb = K + row * a.ksB + hk * a.ksH;
      const T* vb = Vv + row * a.vsB + hk * a.vsH;
      for (int64_t s0 = 0; s0 < L; s0 += kBlock) {
        const int64_t n = L - s0 < kBlock ? L - s0 : kBlock;
        for (int64_t j0 = 0; j0 < n; j0 += 16) {
          const int64_t cnt = n - j0 < 16 ? n - j0 : 16;
          // Prefetch: the next block's keys, this block's values (the cache is cold: one pass per layer and step).
          for (int64_t j = 0; j < cnt; ++j) {
            const int64_t s = s0 + j0 + j;
            for (int64_t off = 0; off < D; off += kLineElems<T>) {
              if (s + kBlock < L) __builtin_prefetch(kb + (s + kBlock) * a.ksS + off, 0, 3);
              __builtin_prefetch(vb + s * a.vsS + off, 0, 3);
            }
          }
          const float* kc;
          int64_t kcs;
          if (DT == 0) {
            kc = reinterpret_cast<const float*>(kb + (s0 + j0) * a.ksS);
            kcs = a.ksS;
          } else {
            for (int64_t j = 0; j < cnt; ++j)
              for (int c = 0; c < C; ++c)
                _mm512_store_ps(kf + j * D + 16 * c, load16<DT>(kb + (s0 + j0 + j) * a.ksS + 16 * c));
            kc = kf;
            kcs = D;
          }
          for (int g = 0; g < G; ++g) {
            __m512 part[16];
            for (int j = 0; j < 16; ++j) {
              if (j < cnt) {
                __m512 p = _mm512_mul_ps(qv[g][0], _mm512_loadu_ps(kc + j * kcs));
                for (int c = 1; c < C; ++c) p = _mm512_fmadd_ps(qv[g][c], _mm512_loadu_ps(kc + j * kcs + 16 * c), p);
                part[j] = p;
              } else {
                part[j] = _mm512_setzero_ps();
              }
            }
            _mm512_store_ps(sc + g * kBlock + j0, hsum16(part));
          }
        }
        for (int g = 0; g < G; ++g) {  // online softmax over the block, as in attn_impl
          float* sg = sc + g * kBlock;
          float bm = kNegInf;
          for (int64_t j = 0; j < n; ++j) bm = sg[j] > bm ? sg[j] : bm;
          const float m_new = bm > mx[g] ? bm : mx[g];
          if (m_new == kNegInf) {
            for (int64_t j = 0; j < n; ++j) sg[j] = 0.f;
            alpha[g] = 1.f;
            continue;
          }
          alpha[g] = mx[g] == kNegInf ? 0.f : std::exp(mx[g] - m_new);
          float bs = 0.f;
#pragma omp simd reduction(+ : bs)
          for (int64_t j = 0; j < n; ++j) {
            const float p = fast_exp(sg[j] - m_new);
            sg[j] = p;
            bs += p;
          }
          sum[g] = sum[g] * alpha[g] + bs;
          mx[g] = m_new;
        }
        for (int g = 0; g < G; ++g) {
          if (alpha[g] != 1.f) {
            const __m512 al = _mm512_set1_ps(alpha[g]);
            for (int c = 0; c < C; ++c) acc[g][c] = _mm512_mul_ps(acc[g][c], al);
          }
        }
        for (int64_t j = 0; j < n; ++j) {
          const T* vr = vb + (s0 + j) * a.vsS;
          __m512 vv[C];
          for (int c = 0; c < C; ++c) vv[c] = load16<DT>(vr + 16 * c);
          for (int g = 0; g < G; ++g) {
            const __m512 p = _mm512_set1_ps(sc[g * kBlock + j]);
            for (int c = 0; c < C; ++c) acc[g][c] = _mm512_fmadd_ps(p, vv[c], acc[g][c]);
          }
        }
      }
      for (int g = 0; g < G; ++g) {
        const float inv = sum[g] > 0.f ? 1.f / sum[g] : 0.f;
        T* og = O + (b * a.Hq + hk * G + g) * D;
        alignas(64) float tmp[D];
        for (int c = 0; c < C; ++c) _mm512_store_ps(tmp + 16 * c, _mm512_mul_ps(acc[g][c], _mm512_set1_ps(inv)));
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) Elem<DT>::store(og, d, tmp[d]);
      }
    }
  }
}

template <int DT, int D>
static bool attn_avx512_g(const DecodeAttnArgs& a) {
  switch (a.Hq / a.Hkv) {
    case 1: attn_avx512<DT, D, 1>(a); return true;
    case 2: attn_avx512<DT, D, 2>(a); return true;
    case 3: attn_avx512<DT, D, 3>(a); return true;
    case 4: attn_avx512<DT, D, 4>(a); return true;
    case 5: attn_avx512<DT, D, 5>(a); return true;
    case 6: attn_avx512<DT, D, 6>(a); return true;
    case 7: attn_avx512<DT, D, 7>(a); return true;
    case 8: attn_avx512<DT, D, 8>(a); return true;
    default: return false;
  }
}
#endif  // SMTPO_ATTN_AVX512

template <int DT>
static void attn_dispatch_d(const DecodeAttnArgs& a) {
#ifdef SMTPO_ATTN_AVX512
  if (a.D == 64 && attn_avx512_g<DT, 64>(a)) return;
  if (a.D == 128 && attn_avx512_g<DT, 128>(a)) return;
#endif
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
