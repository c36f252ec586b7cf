// Skinny linear on the CPU, compiled once per instruction set (namespace SMTPO_ISA): y = x @ w^T + bias for a
// handful of rows of x (one per sequence of a decode batch).
//
// Such a product is bound by reading w once from memory (every weight is used by only M rows). The weights are read
// in place in the nn.Linear layout [N, K]: a block of NB consecutive rows of w streams through registers while the
// M rows of x (a few KB, in L1) are reused from cache, NB x MB float32 dot-product accumulators, one horizontal
// sum per output at the end. No packing, no extra copy of the weights. bfloat16 weights use the AVX-512 BF16 dot
// product (vdpbf16ps: pairs of bf16 products summed into float32) where the CPU has it.
#include <algorithm>
#include <vector>

#include "../skinny_linear_args.h"
#include "vec_math.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define SMTPO_SKINNY_AVX512 1
#endif

#ifndef SMTPO_ISA
#error "SMTPO_ISA must name the namespace of this build (see CMakeLists.txt)"
#endif

namespace smtpo {
namespace SMTPO_ISA {

namespace {

constexpr int64_t kRowsPerTask = 32;  // rows of w per OpenMP work item
template <int DT>
inline void store_out(const SkinnyLinearArgs& a, int64_t m, int64_t n, float v) {
  using T = typename Elem<DT>::T;
  if (a.bias) v += Elem<DT>::load(static_cast<const T*>(a.bias), n);
  Elem<DT>::store(static_cast<T*>(a.y) + m * a.ys, n, v);
}

// Any instruction set, any float dtype: x converted to float32 once, one row of w (in L1) against every row of x.
template <int DT>
void rows_generic(const SkinnyLinearArgs& a, const float* xf, int64_t n0, int64_t n1) {
  using T = typename Elem<DT>::T;
  const T* W = static_cast<const T*>(a.w);
  const int64_t K = a.K;
  for (int64_t n = n0; n < n1; ++n) {
    const T* wr = W + n * a.ws;
    for (int64_t m = 0; m < a.M; ++m) {
      const float* xr = xf + m * K;
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int64_t k = 0; k < K; ++k) dot += xr[k] * Elem<DT>::load(wr, k);
      store_out<DT>(a, m, n, dot);
    }
  }
}

#ifdef SMTPO_SKINNY_AVX512
// Software prefetch distance along each row of w, in bytes: the hardware prefetchers alone leave the loop (which
// does M FMAs per loaded vector of w) waiting on memory; measured best at 8-16 KB ahead.
constexpr int64_t kPrefetchBytes = 16384;

template <typename T>
inline void prefetch_ahead(const T* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T0);
}

// float32: NB rows of w x MB rows of x, 16 lanes per step, a masked tail step when K % 16 != 0.
template <int MB, int NB>
inline void f32_block(const float* x, int64_t xs, const float* w, int64_t ws, int64_t K, float* out) {
  __m512 acc[NB][MB];
  for (int j = 0; j < NB; ++j)
    for (int m = 0; m < MB; ++m) acc[j][m] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = _mm512_loadu_ps(w + j * ws + k);
    for (int j = 0; j < NB; ++j) prefetch_ahead(w + j * ws + k);
    for (int m = 0; m < MB; ++m) {
      const __m512 xv = _mm512_loadu_ps(x + m * xs + k);
      for (int j = 0; j < NB; ++j) acc[j][m] = _mm512_fmadd_ps(wv[j], xv, acc[j][m]);
    }
  }
  if (k < K) {
    const __mmask16 mk = static_cast<__mmask16>((1u << (K - k)) - 1u);
    __m512 wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = _mm512_maskz_loadu_ps(mk, w + j * ws + k);
    for (int m = 0; m < MB; ++m) {
      const __m512 xv = _mm512_maskz_loadu_ps(mk, x + m * xs + k);
      for (int j = 0; j < NB; ++j) acc[j][m] = _mm512_fmadd_ps(wv[j], xv, acc[j][m]);
    }
  }
  for (int j = 0; j < NB; ++j)
    for (int m = 0; m < MB; ++m) out[j * MB + m] = _mm512_reduce_add_ps(acc[j][m]);
}

// bfloat16 with AVX512-BF16: 32 elements per step. Every function on this path carries the target attribute (a
// function with more ISA extensions does not inline into one with fewer).
#define SMTPO_BF16_TARGET __attribute__((target("avx512bf16")))

template <int MB, int NB>
SMTPO_BF16_TARGET inline void bf16_block(const uint16_t* x, int64_t xs, const uint16_t* w, int64_t ws, int64_t K,
                                         float* out) {
  __m512 acc[NB][MB];
  for (int j = 0; j < NB; ++j)
    for (int m = 0; m < MB; ++m) acc[j][m] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512bh wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = (__m512bh)_mm512_loadu_si512(w + j * ws + k);
    for (int j = 0; j < NB; ++j) prefetch_ahead(w + j * ws + k);
    for (int m = 0; m < MB; ++m) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + m * xs + k);
      for (int j = 0; j < NB; ++j) acc[j][m] = _mm512_dpbf16_ps(acc[j][m], wv[j], xv);
    }
  }
  if (k < K) {  // zero-filled tail: 0 * 0 adds nothing
    const __mmask32 mk = static_cast<__mmask32>((K - k >= 32) ? ~0u : ((1u << (K - k)) - 1u));
    __m512bh wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = (__m512bh)_mm512_maskz_loadu_epi16(mk, w + j * ws + k);
    for (int m = 0; m < MB; ++m) {
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mk, x + m * xs + k);
      for (int j = 0; j < NB; ++j) acc[j][m] = _mm512_dpbf16_ps(acc[j][m], wv[j], xv);
    }
  }
  for (int j = 0; j < NB; ++j)
    for (int m = 0; m < MB; ++m) out[j * MB + m] = _mm512_reduce_add_ps(acc[j][m]);
}

// Rows [n0, n1) of w against all M rows of x: NB rows of w at a time (NB * MB accumulators fit the 32 registers),
// rows of x by chunks of up to 8 while those rows of w stay in L1.
#define SMTPO_SKINNY_ROWS(NAME, T, DT, BLOCK, ATTR)                                                        \
  template <int NB>                                                                                     \
  ATTR void NAME##_nb(const SkinnyLinearArgs& a, int64_t n) {                                           \
    const T* W = static_cast<const T*>(a.w) + n * a.ws;                                                 \
    float out[NB * 8];                                                                                  \
    for (int64_t m0 = 0; m0 < a.M; m0 += 8) {                                                           \
      const T* X = static_cast<const T*>(a.x) + m0 * a.xs;                                              \
      const int64_t mb = std::min<int64_t>(8, a.M - m0);                                                \
      int MB = static_cast<int>(mb);                                                                    \
      switch (MB) {                                                                                     \
        case 1: BLOCK<1, NB>(X, a.xs, W, a.ws, a.K, out); break;                                        \
        case 2: BLOCK<2, NB>(X, a.xs, W, a.ws, a.K, out); break;                                        \
        case 3: BLOCK<3, NB>(X, a.xs, W, a.ws, a.K, out); break;                                        \
        case 4: BLOCK<4, NB>(X, a.xs, W, a.ws, a.K, out); break;                                        \
        case 5: BLOCK<5, NB>(X, a.xs, W, a.ws, a.K, out); break;                                        \
        case 6: BLOCK<6, NB>(X, a.xs, W, a.ws, a.K, out); break;                                        \
        case 7: BLOCK<7, NB>(X, a.xs, W, a.ws, a.K, out); break;                                        \
        default: BLOCK<8, NB>(X, a.xs, W, a.ws, a.K, out); break;                                       \
      }                                                                                                 \
      for (int j = 0; j < NB; ++j)                                                                      \
        for (int m = 0; m < MB; ++m) store_out<DT>(a, m0 + m, n + j, out[j * MB + m]);                  \
    }                                                                                                   \
  }                                                                                                     \
  ATTR void NAME(const SkinnyLinearArgs& a, int64_t n0, int64_t n1) {                                   \
    constexpr int NB = 3;                                                                               \
    int64_t n = n0;                                                                                     \
    for (; n + NB <= n1; n += NB) NAME##_nb<NB>(a, n);                                                  \
    for (; n < n1; ++n) NAME##_nb<1>(a, n);                                                             \
  }

SMTPO_SKINNY_ROWS(rows_f32, float, 0, f32_block, )
SMTPO_SKINNY_ROWS(rows_bf16, uint16_t, 1, bf16_block, SMTPO_BF16_TARGET)

// bfloat16 with AMX (Sapphire Rapids and later): y^T = w x^T as tiles. A = 16 rows of w x 32 k (loaded in place,
// row stride ws), B = x^T for those 32 k in the VNNI pair layout (built once per call, [K/2][M][2]), C = 16 x M
// float32. Two row groups per step (two accumulators in flight), the next group's rows prefetched.
#define SMTPO_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512bf16")))

struct alignas(64) AmxTileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

inline bool amx_ready() {
  static const bool ok = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    const bool tile = (edx >> 24) & 1u, bf16 = (edx >> 22) & 1u;
    if (!tile || !bf16) return false;
    // Linux hands out the AMX register state on request, once per process: ARCH_REQ_XCOMP_PERM (0x1023) for
    // XFEATURE_XTILEDATA (18). Refused (old kernel, seccomp): the AVX512-BF16 path.
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  }();
  return ok;
}

SMTPO_AMX_TARGET void rows_amx(const SkinnyLinearArgs& a, const uint16_t* xb, int64_t n0, int64_t n1) {
  const int M = static_cast<int>(a.M);
  AmxTileConfig cfg{};
  cfg.palette_id = 1;
  for (int t = 0; t < 2; ++t) { cfg.rows[t] = 16; cfg.colsb[t] = static_cast<uint16_t>(M * 4); }  // C
  for (int t = 2; t < 4; ++t) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }                            // A
  cfg.rows[4] = 16;                                                                              // B
  cfg.colsb[4] = static_cast<uint16_t>(M * 4);
  _tile_loadconfig(&cfg);
  const uint16_t* W = static_cast<const uint16_t*>(a.w);
  const int64_t ws = a.ws, wsb = a.ws * 2, K = a.K;
  alignas(64) float c[2][16][16];
  int64_t n = n0;
  for (; n + 32 <= n1; n += 32) {
    _tile_zero(0);
    _tile_zero(1);
    const uint16_t* w0 = W + n * ws;
    for (int64_t k = 0; k < K; k += 32) {
      for (int j = 0; j < 32; ++j) _mm_prefetch(reinterpret_cast<const char*>(w0 + (32 + j) * ws + k), _MM_HINT_T0);
      _tile_loadd(4, xb + k * M, M * 4);
      _tile_loadd(2, w0 + k, wsb);
      _tile_loadd(3, w0 + 16 * ws + k, wsb);
      _tile_dpbf16ps(0, 2, 4);
      _tile_dpbf16ps(1, 3, 4);
    }
    _tile_stored(0, c[0], 64);
    _tile_stored(1, c[1], 64);
    for (int g = 0; g < 2; ++g)
      for (int i = 0; i < 16; ++i)
        for (int m = 0; m < M; ++m) store_out<1>(a, m, n + 16 * g + i, c[g][i][m]);
  }
  for (; n + 16 <= n1; n += 16) {
    _tile_zero(0);
    const uint16_t* w0 = W + n * ws;
    for (int64_t k = 0; k < K; k += 32) {
      _tile_loadd(4, xb + k * M, M * 4);
      _tile_loadd(2, w0 + k, wsb);
      _tile_dpbf16ps(0, 2, 4);
    }
    _tile_stored(0, c[0], 64);
    for (int i = 0; i < 16; ++i)
      for (int m = 0; m < M; ++m) store_out<1>(a, m, n + i, c[0][i][m]);
  }
  _tile_release();
  if (n < n1) rows_bf16(a, n, n1);
}

inline bool has_avx512_bf16() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") != 0;
  }();
  return ok;
}
#endif  // SMTPO_SKINNY_AVX512

template <typename Rows>
void parallel_rows(const SkinnyLinearArgs& a, Rows rows) {
  const int64_t tasks = (a.N + kRowsPerTask - 1) / kRowsPerTask;
#pragma omp parallel for schedule(static) if (tasks > 1 && a.N * a.K * a.M >= (1 << 16))
  for (int64_t t = 0; t < tasks; ++t) rows(t * kRowsPerTask, std::min(a.N, (t + 1) * kRowsPerTask));
}

template <int DT>
void run_generic(const SkinnyLinearArgs& a) {
  using T = typename Elem<DT>::T;
  std::vector<float> xf(static_cast<size_t>(a.M * a.K));
  const T* X = static_cast<const T*>(a.x);
  for (int64_t m = 0; m < a.M; ++m)
    for (int64_t k = 0; k < a.K; ++k) xf[m * a.K + k] = Elem<DT>::load(X + m * a.xs, k);
  parallel_rows(a, [&](int64_t n0, int64_t n1) { rows_generic<DT>(a, xf.data(), n0, n1); });
}

}  // namespace

void skinny_linear(const SkinnyLinearArgs& a) {
  if (a.M == 0 || a.N == 0) return;
#ifdef SMTPO_SKINNY_AVX512
  if (a.dtype == kFloat32) {
    parallel_rows(a, [&](int64_t n0, int64_t n1) { rows_f32(a, n0, n1); });
    return;
  }
  if (a.dtype == kBFloat16 && a.M >= 2 && a.M <= 16 && a.K % 32 == 0 && a.N >= 16 && has_avx512_bf16() &&
      amx_ready()) {
    // x^T in VNNI pairs: xb[(k / 2) * M + m] holds x[m, k], x[m, k + 1].
    std::vector<uint16_t> xb(static_cast<size_t>(a.K * a.M));
    const uint16_t* X = static_cast<const uint16_t*>(a.x);
    for (int64_t r = 0; r < a.K / 2; ++r)
      for (int64_t m = 0; m < a.M; ++m) {
        xb[(r * a.M + m) * 2] = X[m * a.xs + 2 * r];
        xb[(r * a.M + m) * 2 + 1] = X[m * a.xs + 2 * r + 1];
      }
    parallel_rows(a, [&](int64_t n0, int64_t n1) { rows_amx(a, xb.data(), n0, n1); });
    return;
  }
  if (a.dtype == kBFloat16 && has_avx512_bf16()) {
    parallel_rows(a, [&](int64_t n0, int64_t n1) { rows_bf16(a, n0, n1); });
    return;
  }
#endif
  dispatch_float_dtype(a.dtype, "x", [&](auto dt) { run_generic<decltype(dt)::value>(a); });
}

}  // namespace SMTPO_ISA
}  // namespace smtpo
