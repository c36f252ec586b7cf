// Fused sampling on CUDA: one block per row, no sort of the vocabulary.
//
// The block makes passes over its row (L2-resident after the first): max / smallest finite key / finite count;
// for top-k, a 32-step bisection over order-preserving int32 keys counting x >= t (the k-th largest value exactly);
// for top-p, the normaliser of the top-k survivors and a 32-step bisection on mass(x > t) < top_p * Z; min-p is one
// comparison with max + log(min_p). The draw is Gumbel-max over the kept tokens with the counter-based hash of
// (seed, row, column) shared with the torch and Triton backends; the seed is read from device memory, so the kernel
// can be replayed in a CUDA graph with a seed the caller bumps in place.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "cuda_common.cuh"
#include "sampling_cuda.h"

namespace smtpo {
namespace {

constexpr int kThreads = 1024;

// Block-wide reductions; every thread gets the result. `scratch` holds 32 values.
template <typename V, typename Op>
__device__ __forceinline__ V block_reduce(V v, Op op, V* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int nw = (blockDim.x + 31) >> 5;
  V r = scratch[0];
  for (int w = 1; w < nw; ++w) r = op(r, scratch[w]);
  return r;
}

struct Sum { template <typename V> __device__ V operator()(V a, V b) const { return a + b; } };
struct Max { __device__ float operator()(float a, float b) const { return fmaxf(a, b); } };
struct MinI { __device__ int operator()(int a, int b) const { return a < b ? a : b; } };
struct MinLL { __device__ long long operator()(long long a, long long b) const { return a < b ? a : b; } };

template <typename T>
__global__ void sample_kernel(SampleArgs a) {
  const int64_t r = blockIdx.x;
  const T* row = static_cast<const T*>(a.logits) + r * a.sB;
  const int64_t V = a.V;
  __shared__ float fs[32];
  __shared__ int is[32];
  __shared__ long long ls[32];
  auto X = [&](int64_t i) { return Cvt<T>::load(row[i]) * a.inv_temp; };

  float m = -INFINITY;
  int kmin = 0x7FFFFFFF;
  long long nfin = 0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float x = X(i);
    m = fmaxf(m, x);
    if (x > -INFINITY) {
      ++nfin;
      const int k = float_key(x);
      kmin = k < kmin ? k : kmin;
    }
  }
  m = block_reduce(m, Max(), fs);
  kmin = block_reduce(kmin, MinI(), is);
  nfin = block_reduce(nfin, Sum(), ls);
  if (!(m > -INFINITY)) {
    if (threadIdx.x == 0) {
      a.tokens[r] = 0;
      a.logprobs[r] = NAN;
      a.cutoff[r] = INFINITY;
    }
    return;
  }
  const int m_key = float_key(m);
  float cut = -INFINITY;
  int cut_key = kmin;
  if (a.top_k > 0 && a.top_k < nfin) {
    long long lo = kmin, hi = static_cast<long long>(m_key) + 1;
    while (hi - lo > 1) {  // uniform across the block: every thread sees the same reductions
      const long long mid = lo + (hi - lo) / 2;
      long long c = 0;
      for (int64_t i = threadIdx.x; i < V; i += blockDim.x) c += float_key(X(i)) >= mid ? 1 : 0;
      c = block_reduce(c, Sum(), ls);
      if (c >= a.top_k) lo = mid; else hi = mid;
    }
    cut_key = static_cast<int>(lo);
    cut = key_float(cut_key);
  }
  if (a.top_p < 1.f) {
    float Z = 0.f;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
      const float x = X(i);
      if (x > -INFINITY && float_key(x) >= cut_key) Z += __expf(x - m);
    }
    Z = block_reduce(Z, Sum(), fs);
    const float target = a.top_p * Z;
    long long lo = static_cast<long long>(cut_key) - 1, hi = m_key;
    while (hi - lo > 1) {
      const long long mid = lo + (hi - lo) / 2;
      float s = 0.f;
      for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
        const float x = X(i);
        const int k = float_key(x);
        if (x > -INFINITY && k >= cut_key && k > mid) s += __expf(x - m);
      }
      s = block_reduce(s, Sum(), fs);
      if (s < target) hi = mid; else lo = mid;
    }
    cut = fmaxf(cut, key_float(static_cast<int>(hi)));
  }
  if (a.min_p > 0.f) cut = fmaxf(cut, m + logf(a.min_p));

  const uint32_t row_key = hash_row_key(a.seed[0], r);
  float Z = 0.f, best = -INFINITY;
  long long best_i = V;  // larger than any index: loses ties
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float x = X(i);
    if (x > -INFINITY && x >= cut) {
      Z += __expf(x - m);
      const float u = hash_uniform(row_key, i);
      const float s = x - logf(-logf(u));
      if (s > best) { best = s; best_i = i; }
    }
  }
  Z = block_reduce(Z, Sum(), fs);
  const float top = block_reduce(best, Max(), fs);
  long long cand = (best == top) ? best_i : static_cast<long long>(V);
  cand = block_reduce(cand, MinLL(), ls);
  if (threadIdx.x == 0) {
    const int64_t tok = cand < V ? cand : 0;
    a.tokens[r] = tok;
    a.logprobs[r] = X(tok) - m - logf(Z);
    a.cutoff[r] = cut;
  }
}

}  // namespace

void sample_cuda(const SampleArgs& a, uintptr_t stream) {
  if (a.B == 0) return;
  require(a.B <= 2147483647LL, "logits: too many rows for one CUDA grid");
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  const int threads = a.V >= kThreads ? kThreads : (a.V >= 256 ? 256 : 64);
  const unsigned blocks = static_cast<unsigned>(a.B);
  switch (a.dtype) {
    case kFloat32: sample_kernel<float><<<blocks, threads, 0, st>>>(a); break;
    case kBFloat16: sample_kernel<__nv_bfloat16><<<blocks, threads, 0, st>>>(a); break;
    case kFloat16: sample_kernel<__half><<<blocks, threads, 0, st>>>(a); break;
    default: throw std::invalid_argument(std::string("logits: unsupported dtype ") + dtype_name(a.dtype));
  }
  SMTPO_CUDA_CHECK(cudaGetLastError());
}

}  // namespace smtpo
