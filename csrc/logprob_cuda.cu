// Fused token log-prob / entropy kernels for CUDA. One thread block per row of logits.
//
// Forward: every thread keeps an online (max m, sum s = sum e^(z-m), t = sum e^(z-m)(z-m)) over its strided share
// of the row, reading 16-byte vectors when the row is aligned; the block then merges the per-thread triples.
// The row is read once from device memory; nothing of size V is written. Backward reads the row once more and
// writes the gradient (possibly over the logits themselves).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "cuda_common.cuh"
#include "logprob_cuda.h"

namespace smtpo {
namespace {

struct Stats {
  float m, s, t;
};

// 2^x on the special-function unit (2^-inf = 0). The forward works in base 2: z2 = logit * inv_temp * log2(e),
// which saves one multiply per element against __expf.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Merge two online-softmax states (base 2). Guards keep -inf maxima and empty sums from producing NaN (0 * -inf).
__device__ __forceinline__ Stats merge(Stats a, Stats b, bool ent) {
  const float M = fmaxf(a.m, b.m);
  if (M == -INFINITY) return {M, 0.f, 0.f};
  const float da = a.m - M, db = b.m - M;
  const float ea = a.s > 0.f ? fast_exp2(da) : 0.f, eb = b.s > 0.f ? fast_exp2(db) : 0.f;
  Stats r;
  r.m = M;
  r.s = ea * a.s + eb * b.s;
  r.t = ent ? (a.s > 0.f ? ea * (a.t + da * a.s) : 0.f) + (b.s > 0.f ? eb * (b.t + db * b.s) : 0.f) : 0.f;
  return r;
}

// Add K values (already in base-2 units) to a thread's state (m, s = sum 2^(z-m), t = sum 2^(z-m) (z-m)).
template <int K, bool kEnt>
__device__ __forceinline__ void accumulate(Stats& st, const float (&z)[K]) {
  float vmax = z[0];
#pragma unroll
  for (int i = 1; i < K; ++i) vmax = fmaxf(vmax, z[i]);
  if (vmax > st.m) {
    if (st.s > 0.f) {
      const float d = st.m - vmax, a = fast_exp2(d);
      if (kEnt) st.t = a * (st.t + d * st.s);
      st.s *= a;
    }
    st.m = vmax;
  }
  if (st.m == -INFINITY) return;
  // Two partial sums halve the dependent-add chain.
  float s0 = 0.f, s1 = 0.f, t0 = 0.f, t1 = 0.f;
#pragma unroll
  for (int i = 0; i < K; ++i) {
    const float d = z[i] - st.m;
    const float e = fast_exp2(d);
    if (i % 2 == 0) { s0 += e; if (kEnt) t0 += e > 0.f ? e * d : 0.f; }
    else { s1 += e; if (kEnt) t1 += e > 0.f ? e * d : 0.f; }
  }
  st.s += s0 + s1;
  if (kEnt) st.t += t0 + t1;
}

template <typename T, int kThreads, bool kEnt>
__global__ void __launch_bounds__(kThreads) logprob_fwd_kernel(LogprobFwdArgs a) {
  constexpr int kVec = 16 / sizeof(T);
  // 16-byte loads in flight per thread before any arithmetic on them. On an H100 (bench/RESULTS.md) 4 raised
  // bf16 from 69% to 73% of copy bandwidth but lowered float32 from 91% to 81%, so float32 keeps one.
  constexpr int kUnroll = sizeof(T) == 4 ? 1 : 4;
  constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
  const int64_t r = blockIdx.x;
  const int64_t b = r / a.T, tt = r % a.T;
  const T* row = static_cast<const T*>(a.logits) + b * a.sB + tt * a.sT;
  const float it2 = a.inv_temp * kLog2e;
  Stats st{-INFINITY, 0.f, 0.f};

  // Unaligned head, 16-byte vector body (kUnroll vectors per step), tail.
  const int64_t mis = (reinterpret_cast<uintptr_t>(row) % 16) / sizeof(T);
  const int64_t head = mis ? (a.V < kVec - mis ? a.V : kVec - mis) : 0;
  for (int64_t j = threadIdx.x; j < head; j += kThreads) {
    float z[1] = {Cvt<T>::load(row[j]) * it2};
    accumulate<1, kEnt>(st, z);
  }
  const int64_t nvec = (a.V - head) / kVec;
  const uint4* vrow = reinterpret_cast<const uint4*>(row + head);
  int64_t v = threadIdx.x;
  for (; v + (kUnroll - 1) * kThreads < nvec; v += kUnroll * kThreads) {
    uint4 raw[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) raw[u] = __ldg(vrow + v + u * kThreads);
    float z[kUnroll * kVec];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const T* e = reinterpret_cast<const T*>(&raw[u]);
#pragma unroll
      for (int i = 0; i < kVec; ++i) z[u * kVec + i] = Cvt<T>::load(e[i]) * it2;
    }
    accumulate<kUnroll * kVec, kEnt>(st, z);
  }
  for (; v < nvec; v += kThreads) {
    uint4 raw = __ldg(vrow + v);
    const T* e = reinterpret_cast<const T*>(&raw);
    float z[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) z[i] = Cvt<T>::load(e[i]) * it2;
    accumulate<kVec, kEnt>(st, z);
  }
  for (int64_t j = head + nvec * kVec + threadIdx.x; j < a.V; j += kThreads) {
    float z[1] = {Cvt<T>::load(row[j]) * it2};
    accumulate<1, kEnt>(st, z);
  }

  // Warp, then block merge.
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    Stats o{__shfl_xor_sync(0xffffffffu, st.m, off), __shfl_xor_sync(0xffffffffu, st.s, off),
            __shfl_xor_sync(0xffffffffu, st.t, off)};
    st = merge(st, o, kEnt);
  }
  constexpr int kWarps = kThreads / 32;
  __shared__ Stats warp_stats[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_stats[warp] = st;
  __syncthreads();
  if (warp == 0) {
    st = lane < kWarps ? warp_stats[lane] : Stats{-INFINITY, 0.f, 0.f};
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      Stats o{__shfl_xor_sync(0xffffffffu, st.m, off), __shfl_xor_sync(0xffffffffu, st.s, off),
              __shfl_xor_sync(0xffffffffu, st.t, off)};
      st = merge(st, o, kEnt);
    }
    if (lane == 0) {
      // Back to natural units: lse = ln2 (m + log2 s), H = ln2 (log2 s - t / s).
      const float log2_s = log2f(st.s);
      const float lse = kLn2 * (st.m + log2_s);
      a.lse[r] = lse;
      const int64_t label = a.labels[b * a.lsB + tt * a.lsT];
      a.logp[r] = label == a.ignore_index ? 0.f : Cvt<T>::load(row[label]) * a.inv_temp - lse;
      if (kEnt) a.entropy[r] = kLn2 * (log2_s - st.t / st.s);
    }
  }
}

template <typename T, bool kLp, bool kEnt>
__device__ __forceinline__ float grad_of(float x, float it, float lse, float H, float gl, float gh) {
  const float d = x * it - lse;
  const float p = __expf(d);
  float g = 0.f;
  if (kLp) g -= gl * p;
  if (kEnt) g -= gh * (p > 0.f ? p * (d + H) : 0.f);
  return g * it;
}

template <typename T, int kThreads, bool kLp, bool kEnt>
__global__ void __launch_bounds__(kThreads) logprob_bwd_kernel(LogprobBwdArgs a) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t r = blockIdx.x;
  const int64_t b = r / a.T, tt = r % a.T;
  const T* row = static_cast<const T*>(a.logits) + b * a.sB + tt * a.sT;
  T* grow = static_cast<T*>(a.grad) + b * a.gsB + tt * a.gsT;
  const float it = a.inv_temp, lse = a.lse[r];
  const int64_t label = a.labels[b * a.lsB + tt * a.lsT];
  const bool ignored = label == a.ignore_index;
  const float gl = (kLp && !ignored) ? a.grad_logp[r] : 0.f;
  const float gh = kEnt ? a.grad_entropy[r] : 0.f;
  const float H = kEnt ? a.entropy[r] : 0.f;
  // The label's logit is read before any thread may overwrite it (in-place backward).
  const float z_label = (kLp && !ignored) ? Cvt<T>::load(row[label]) : 0.f;
  __syncthreads();

  const bool vec_ok = (reinterpret_cast<uintptr_t>(row) % 16 == 0) && (reinterpret_cast<uintptr_t>(grow) % 16 == 0);
  int64_t done = 0;
  if (vec_ok) {
    const int64_t nvec = a.V / kVec;
    const uint4* vin = reinterpret_cast<const uint4*>(row);
    uint4* vout = reinterpret_cast<uint4*>(grow);
    for (int64_t v = threadIdx.x; v < nvec; v += kThreads) {
      uint4 raw = vin[v];
      const T* e = reinterpret_cast<const T*>(&raw);
      uint4 outraw;
      T* o = reinterpret_cast<T*>(&outraw);
#pragma unroll
      for (int i = 0; i < kVec; ++i) o[i] = Cvt<T>::store(grad_of<T, kLp, kEnt>(Cvt<T>::load(e[i]), it, lse, H, gl, gh));
      vout[v] = outraw;
    }
    done = nvec * kVec;
  }
  for (int64_t j = done + threadIdx.x; j < a.V; j += kThreads)
    grow[j] = Cvt<T>::store(grad_of<T, kLp, kEnt>(Cvt<T>::load(row[j]), it, lse, H, gl, gh));
  if (kLp && !ignored) {
    __syncthreads();
    if (threadIdx.x == 0) {
      const float d = z_label * it - lse;
      const float p = expf(d);
      float g = gl * (1.f - p);
      if (kEnt) g -= gh * (p > 0.f ? p * (d + H) : 0.f);
      grow[label] = Cvt<T>::store(g * it);
    }
  }
}

template <typename T, int kThreads>
void launch_fwd(const LogprobFwdArgs& a, cudaStream_t s) {
  const unsigned rows = static_cast<unsigned>(a.B * a.T);
  if (a.entropy) logprob_fwd_kernel<T, kThreads, true><<<rows, kThreads, 0, s>>>(a);
  else logprob_fwd_kernel<T, kThreads, false><<<rows, kThreads, 0, s>>>(a);
}

template <typename T>
void fwd_dispatch(const LogprobFwdArgs& a, cudaStream_t s) {
  // Enough threads that each reads a handful of 16-byte vectors; small vocabularies get small blocks.
  const int64_t vecs = a.V / (16 / sizeof(T));
  if (vecs >= 8192) launch_fwd<T, 1024>(a, s);
  else if (vecs >= 2048) launch_fwd<T, 512>(a, s);
  else if (vecs >= 256) launch_fwd<T, 256>(a, s);
  else launch_fwd<T, 64>(a, s);
}

template <typename T, int kThreads>
void launch_bwd(const LogprobBwdArgs& a, cudaStream_t s) {
  const unsigned rows = static_cast<unsigned>(a.B * a.T);
  const bool lp = a.grad_logp != nullptr, ent = a.grad_entropy != nullptr;
  if (lp && ent) logprob_bwd_kernel<T, kThreads, true, true><<<rows, kThreads, 0, s>>>(a);
  else if (lp) logprob_bwd_kernel<T, kThreads, true, false><<<rows, kThreads, 0, s>>>(a);
  else if (ent) logprob_bwd_kernel<T, kThreads, false, true><<<rows, kThreads, 0, s>>>(a);
  else logprob_bwd_kernel<T, kThreads, false, false><<<rows, kThreads, 0, s>>>(a);
}

template <typename T>
void bwd_dispatch(const LogprobBwdArgs& a, cudaStream_t s) {
  const int64_t vecs = a.V / (16 / sizeof(T));
  if (vecs >= 8192) launch_bwd<T, 1024>(a, s);
  else if (vecs >= 2048) launch_bwd<T, 512>(a, s);
  else if (vecs >= 256) launch_bwd<T, 256>(a, s);
  else launch_bwd<T, 64>(a, s);
}

void check_rows(int64_t rows) {
  if (rows > 0x7fffffff) throw std::invalid_argument("logits: more than 2^31 - 1 rows");
}

}  // namespace

void logprob_fwd_cuda(const LogprobFwdArgs& a, uintptr_t stream) {
  if (a.B * a.T == 0) return;
  check_rows(a.B * a.T);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  switch (a.dtype) {
    case kFloat32: fwd_dispatch<float>(a, s); break;
    case kBFloat16: fwd_dispatch<__nv_bfloat16>(a, s); break;
    case kFloat16: fwd_dispatch<__half>(a, s); break;
    default: throw std::invalid_argument(std::string("logits: unsupported dtype ") + dtype_name(a.dtype));
  }
  SMTPO_CUDA_CHECK(cudaGetLastError());
}

void logprob_bwd_cuda(const LogprobBwdArgs& a, uintptr_t stream) {
  if (a.B * a.T == 0) return;
  check_rows(a.B * a.T);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  switch (a.dtype) {
    case kFloat32: bwd_dispatch<float>(a, s); break;
    case kBFloat16: bwd_dispatch<__nv_bfloat16>(a, s); break;
    case kFloat16: bwd_dispatch<__half>(a, s); break;
    default: throw std::invalid_argument(std::string("logits: unsupported dtype ") + dtype_name(a.dtype));
  }
  SMTPO_CUDA_CHECK(cudaGetLastError());
}

}  // namespace smtpo
