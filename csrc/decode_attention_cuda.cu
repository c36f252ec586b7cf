// Decode attention on CUDA: one query token per row over a static KV cache, split-K over the sequence
// (flash-decoding). Pass 1: a block per (split, query head, row) runs an online softmax over its slice of the row's
// cached positions (4 warps interleave positions; lanes split the head dim) and writes an unnormalised partial
// (acc[D], max, sum) to the workspace. Pass 2: a block per (row, head) merges the partials. Slices past the row's
// length write an empty partial, so the grid does not depend on the lengths (no host sync, graph-capturable).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "cuda_common.cuh"
#include "decode_attention_cuda.h"

namespace smtpo {
namespace {

constexpr int kWarps = 4;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// DPL: head-dim elements per lane (D <= 32 * DPL).
template <typename T, int DPL>
__global__ void decode_attn_split_kernel(DecodeAttnArgs a, float* __restrict__ work, int64_t splits, int64_t chunk) {
  const int64_t split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t G = a.Hq / a.Hkv, hk = h / G, D = a.D;
  const int64_t row = a.rows ? a.rows[b] : b;
  int64_t L = a.lengths[b];
  L = L < 0 ? 0 : (L > a.S ? a.S : L);
  const int64_t s0 = split * chunk;
  const int64_t s1 = s0 + chunk < L ? s0 + chunk : L;

  const T* q = static_cast<const T*>(a.q) + b * a.qsB + h * a.qsH;
  const T* kb = static_cast<const T*>(a.k) + row * a.ksB + hk * a.ksH;
  const T* vb = static_cast<const T*>(a.v) + row * a.vsB + hk * a.vsH;
  float qr[DPL], acc[DPL];
#pragma unroll
  for (int i = 0; i < DPL; ++i) {
    const int64_t d = lane * DPL + i;
    qr[i] = d < D ? Cvt<T>::load(q[d]) * a.scale : 0.f;
    acc[i] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int64_t s = s0 + warp; s < s1; s += kWarps) {
    const T* kr = kb + s * a.ksS;
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
      const int64_t d = lane * DPL + i;
      if (d < D) dot += qr[i] * Cvt<T>::load(kr[d]);
    }
    dot = warp_sum(dot);
    const float m_new = fmaxf(m, dot);
    const float alpha = m == -INFINITY ? 0.f : __expf(m - m_new);
    const float p = __expf(dot - m_new);
    l = l * alpha + p;
    const T* vr = vb + s * a.vsS;
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
      const int64_t d = lane * DPL + i;
      acc[i] = acc[i] * alpha + (d < D ? p * Cvt<T>::load(vr[d]) : 0.f);
    }
    m = m_new;
  }
  // Merge the warps' states.
  __shared__ float sm[kWarps], sl[kWarps];
  __shared__ float sacc[kWarps][32 * DPL];
  if (lane == 0) { sm[warp] = m; sl[warp] = l; }
#pragma unroll
  for (int i = 0; i < DPL; ++i) sacc[warp][lane * DPL + i] = acc[i];
  __syncthreads();
  if (warp == 0) {
    float M = -INFINITY;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm[w]);
    float* out = work + ((b * a.Hq + h) * splits + split) * (D + 2);
    float tot = 0.f;
    float res[DPL];
#pragma unroll
    for (int i = 0; i < DPL; ++i) res[i] = 0.f;
    for (int w = 0; w < kWarps; ++w) {
      const float f = (sm[w] == -INFINITY) ? 0.f : __expf(sm[w] - M);
      tot += f * sl[w];
#pragma unroll
      for (int i = 0; i < DPL; ++i) res[i] += f * sacc[w][lane * DPL + i];
    }
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
      const int64_t d = lane * DPL + i;
      if (d < D) out[d] = res[i];
    }
    if (lane == 0) { out[D] = M; out[D + 1] = tot; }
  }
}

template <typename T>
__global__ void decode_attn_combine_kernel(DecodeAttnArgs a, const float* __restrict__ work, int64_t splits) {
  const int64_t bh = blockIdx.x;  // b * Hq + h
  const int64_t D = a.D;
  const float* part = work + bh * splits * (D + 2);
  float M = -INFINITY;
  for (int64_t s = 0; s < splits; ++s) {
    const float* p = part + s * (D + 2);
    if (p[D + 1] > 0.f) M = fmaxf(M, p[D]);
  }
  float tot = 0.f;
  for (int64_t s = 0; s < splits; ++s) {
    const float* p = part + s * (D + 2);
    if (p[D + 1] > 0.f) tot += __expf(p[D] - M) * p[D + 1];
  }
  const float inv = tot > 0.f ? 1.f / tot : 0.f;
  T* out = static_cast<T*>(a.out) + bh * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float v = 0.f;
    for (int64_t s = 0; s < splits; ++s) {
      const float* p = part + s * (D + 2);
      if (p[D + 1] > 0.f) v += __expf(p[D] - M) * p[d];
    }
    out[d] = Cvt<T>::store(v * inv);
  }
}

template <typename T>
void launch(const DecodeAttnArgs& a, float* work, int64_t splits, cudaStream_t st) {
  const int64_t chunk = (a.S + splits - 1) / splits;
  require(a.Hq <= 65535 && a.B <= 65535, "decode_attention: CUDA grid limits B <= 65535 and Hq <= 65535");
  dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(a.Hq), static_cast<unsigned>(a.B));
  const int threads = 32 * kWarps;
  if (a.D <= 32) decode_attn_split_kernel<T, 1><<<grid, threads, 0, st>>>(a, work, splits, chunk);
  else if (a.D <= 64) decode_attn_split_kernel<T, 2><<<grid, threads, 0, st>>>(a, work, splits, chunk);
  else if (a.D <= 128) decode_attn_split_kernel<T, 4><<<grid, threads, 0, st>>>(a, work, splits, chunk);
  else if (a.D <= 256) decode_attn_split_kernel<T, 8><<<grid, threads, 0, st>>>(a, work, splits, chunk);
  else throw std::invalid_argument("q: head dim over 256 is not supported by the CUDA decode_attention kernel");
  SMTPO_CUDA_CHECK(cudaGetLastError());
  decode_attn_combine_kernel<T><<<static_cast<unsigned>(a.B * a.Hq), 64, 0, st>>>(a, work, splits);
  SMTPO_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void decode_attention_cuda(const DecodeAttnArgs& a, float* work, int64_t splits, uintptr_t stream) {
  if (a.B == 0 || a.Hq == 0) return;
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  switch (a.dtype) {
    case kFloat32: launch<float>(a, work, splits, st); break;
    case kBFloat16: launch<__nv_bfloat16>(a, work, splits, st); break;
    case kFloat16: launch<__half>(a, work, splits, st); break;
    default: throw std::invalid_argument(std::string("q: unsupported dtype ") + dtype_name(a.dtype));
  }
}

}  // namespace smtpo
