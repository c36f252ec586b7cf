// RL math kernels for CUDA.
//
// GAE and discounted returns: one thread block per row. The backward recursion is an affine map of the state
// carried from the right (running advantage A, next valid value nv; csrc/advantages_math.h), so a row is scanned in
// tiles of kThreads * kItems tokens from its end to its start: each thread composes the maps of its kItems
// consecutive tokens, the block scans those maps (warp shuffles, then across warps), each thread applies the
// composite of everything to its right to the tile's incoming state and walks its own tokens, and the state at the
// tile's first token carries into the next tile to the left. Loads and stores go through shared memory so global
// accesses are coalesced; all arithmetic is float64. Any T, any B (int64 indexing).
// Group advantages: one thread per group over CSR member lists. PPO loss: one block per row, block reduction of
// the per-row partials in forward; elementwise backward. KL penalty: elementwise, grid-stride.
#include <cuda_runtime.h>

#include <string>

#include "cuda_common.cuh"
#include "advantages_cuda.h"
#include "advantages_math.h"

namespace smtpo {
namespace {

constexpr int kScanThreads = 256;
constexpr int kItems = 8;
constexpr int kTile = kScanThreads * kItems;
constexpr int kWarps = kScanThreads / 32;

// One padding slot every 32 entries: thread j reads entries j * kItems + i, which would otherwise share banks.
__device__ __forceinline__ int padded(int i) { return i + (i >> 5); }
constexpr int kPaddedTile = kTile + kTile / 32;

__device__ __forceinline__ AffineMap shfl_down_map(const AffineMap& m, int off) {
  return {__shfl_down_sync(0xffffffffu, m.a, off), __shfl_down_sync(0xffffffffu, m.b, off),
          __shfl_down_sync(0xffffffffu, m.c, off), __shfl_down_sync(0xffffffffu, m.d, off),
          __shfl_down_sync(0xffffffffu, m.e, off)};
}

template <typename F, int kKind>
__global__ void __launch_bounds__(kScanThreads) scan_kernel(ScanArgs a) {
  __shared__ double r_s[kPaddedTile];
  __shared__ double v_s[kKind == 0 ? kPaddedTile : 1];
  __shared__ uint8_t m_s[kPaddedTile];
  __shared__ AffineMap warp_maps[kWarps];
  __shared__ double carry[2];

  const int64_t row = blockIdx.x;
  const F* rewards = static_cast<const F*>(a.rewards) + row * a.T;
  const F* values = kKind == 0 ? static_cast<const F*>(a.values) + row * a.T : nullptr;
  const uint8_t* mask = a.mask + row * a.T;
  F* adv = kKind == 0 ? static_cast<F*>(a.advantages) + row * a.T : nullptr;
  F* ret = static_cast<F*>(a.returns) + row * a.T;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  double state_A = 0.0, state_nv = 0.0;  // the state entering the current tile from the right
  for (int64_t end = a.T; end > 0; end -= kTile) {
    const int64_t start = end > kTile ? end - kTile : 0;
    const int n = static_cast<int>(end - start);
    for (int i = tid; i < n; i += kScanThreads) {
      r_s[padded(i)] = static_cast<double>(rewards[start + i]);
      if (kKind == 0) v_s[padded(i)] = static_cast<double>(values[start + i]);
      m_s[padded(i)] = mask[start + i];
    }
    __syncthreads();

    // This thread's tokens [lo, hi) of the tile, composed right to left.
    const int lo = tid * kItems < n ? tid * kItems : n;
    const int hi = lo + kItems < n ? lo + kItems : n;
    AffineMap mine = identity_map();
    for (int i = hi - 1; i >= lo; --i) {
      if (!m_s[padded(i)]) continue;
      mine = compose(token_map(kKind, r_s[padded(i)], kKind == 0 ? v_s[padded(i)] : 0.0, a.gamma, a.lam), mine);
    }
    // Inclusive scan from the right within the warp: suffix = mine o (maps of the lanes to the right).
    AffineMap suffix = mine;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const AffineMap other = shfl_down_map(suffix, off);
      if (lane + off < 32) suffix = compose(suffix, other);
    }
    if (lane == 0) warp_maps[warp] = suffix;
    AffineMap right_in_warp = shfl_down_map(suffix, 1);
    if (lane == 31) right_in_warp = identity_map();
    __syncthreads();
    AffineMap right_of_warp = identity_map();
    for (int w = kWarps - 1; w > warp; --w) right_of_warp = compose(warp_maps[w], right_of_warp);
    const AffineMap right = compose(right_in_warp, right_of_warp);

    double A = right.a * state_A + right.b * state_nv + right.d;
    double nv = right.c * state_nv + right.e;
    for (int i = hi - 1; i >= lo; --i) {
      const int p = padded(i);
      if (!m_s[p]) {
        r_s[p] = 0.0;
        if (kKind == 0) v_s[p] = 0.0;
        continue;
      }
      if (kKind == 0) {
        const double v = v_s[p];
        A = r_s[p] + a.gamma * nv - v + a.gamma * a.lam * A;
        nv = v;
        r_s[p] = A;       // advantage
        v_s[p] = A + v;   // return
      } else {
        A = r_s[p] + a.gamma * A;
        r_s[p] = A;
      }
    }
    if (tid == 0) {
      carry[0] = A;
      carry[1] = nv;
    }
    __syncthreads();
    for (int i = tid; i < n; i += kScanThreads) {
      if (kKind == 0) {
        adv[start + i] = static_cast<F>(r_s[padded(i)]);
        ret[start + i] = static_cast<F>(v_s[padded(i)]);
      } else {
        ret[start + i] = static_cast<F>(r_s[padded(i)]);
      }
    }
    state_A = carry[0];
    state_nv = carry[1];
    __syncthreads();  // the next tile overwrites the shared buffers and carry
  }
}

template <typename F>
__global__ void batch_std_kernel(GroupAdvArgs a, double* out_std) {
  // One block: float64 mean, then the sum of squared deviations (two passes, exact 0 for constant rewards).
  __shared__ double part[1024];
  const F* r = static_cast<const F*>(a.rewards);
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < a.B; i += blockDim.x) s += static_cast<double>(r[i]);
  part[threadIdx.x] = s;
  __syncthreads();
  for (int k = blockDim.x / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) part[threadIdx.x] += part[threadIdx.x + k];
    __syncthreads();
  }
  const double mean = part[0] / static_cast<double>(a.B);
  __syncthreads();
  double q = 0.0;
  for (int64_t i = threadIdx.x; i < a.B; i += blockDim.x) {
    const double d = static_cast<double>(r[i]) - mean;
    q += d * d;
  }
  part[threadIdx.x] = q;
  __syncthreads();
  for (int k = blockDim.x / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) part[threadIdx.x] += part[threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out_std = a.B > 1 ? sqrt(part[0] / static_cast<double>(a.B - a.ddof)) : 1.0;
}

template <typename F>
__global__ void group_adv_kernel(GroupAdvArgs a, const int64_t* order, const int64_t* offsets,
                                 const double* batch_std) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= a.G) return;
  const F* r = static_cast<const F*>(a.rewards);
  F* out = static_cast<F*>(a.out);
  const int64_t lo = offsets[g], hi = offsets[g + 1], n = hi - lo;
  double mean = 0.0;
  if (n > 1) {
    for (int64_t k = lo; k < hi; ++k) mean += static_cast<double>(r[order[k]]);
    mean /= static_cast<double>(n);
  }
  if (a.kind == 1) {
    for (int64_t k = lo; k < hi; ++k) {
      const double x = static_cast<double>(r[order[k]]);
      out[order[k]] = static_cast<F>(n > 1 ? (x - mean) * n / static_cast<double>(n - 1) : x);
    }
    return;
  }
  double denom = 1.0;
  if (a.scale == 0) {
    double q = 0.0;
    for (int64_t k = lo; k < hi; ++k) {
      const double d = static_cast<double>(r[order[k]]) - mean;
      q += d * d;
    }
    denom = (n > 1 ? sqrt(q / static_cast<double>(n - a.ddof)) : 1.0) + a.eps;
  } else if (a.scale == 1) {
    denom = *batch_std + a.eps;
  }
  for (int64_t k = lo; k < hi; ++k) {
    const double d = static_cast<double>(r[order[k]]) - mean;
    out[order[k]] = static_cast<F>(a.scale == 2 ? d : d / denom);
  }
}

template <typename F>
__global__ void turn_rewards_kernel(TurnRewardArgs a) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= a.B) return;
  const F* tr = static_cast<const F*>(a.turn_rewards) + b * a.K;
  const int64_t* ends = a.turn_end + b * a.K;
  F* out = static_cast<F*>(a.out) + b * a.T;
  double running = 0.0;
  for (int64_t k = a.K - 1; k >= 0; --k) {
    if (ends[k] < 0) continue;
    running = static_cast<double>(tr[k]) + a.gamma_turn * running;
    out[ends[k]] = static_cast<F>(running);
  }
}

constexpr int kPpoThreads = 256;

template <typename F>
__global__ void __launch_bounds__(kPpoThreads) ppo_fwd_kernel(PpoArgs a) {
  const int64_t row = blockIdx.x;
  const F* lp = static_cast<const F*>(a.logp) + row * a.T;
  const F* old = static_cast<const F*>(a.old_logp) + row * a.T;
  const F* adv = static_cast<const F*>(a.advantages) + row * a.T;
  const uint8_t* m = a.mask + row * a.T;
  double acc[kPpoStats] = {0.0, 0.0, 0.0, 0.0, 0.0};
  for (int64_t t = threadIdx.x; t < a.T; t += kPpoThreads) {
    if (!m[t]) continue;
    const PpoToken k = ppo_token(static_cast<double>(lp[t]), static_cast<double>(old[t]),
                                 static_cast<double>(adv[t]), a.clip_low, a.clip_high, a.dual_clip);
    acc[0] += 1.0;
    acc[1] += k.loss;
    acc[2] += k.clipped ? 1.0 : 0.0;
    acc[3] += k.neg_log_ratio;
    acc[4] += k.dual_clipped ? 1.0 : 0.0;
  }
  __shared__ double part[kPpoThreads / 32][kPpoStats];
#pragma unroll
  for (int s = 0; s < kPpoStats; ++s) {
    double v = acc[s];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5][s] = v;
  }
  __syncthreads();
  if (threadIdx.x < kPpoStats) {
    double v = 0.0;
    for (int w = 0; w < kPpoThreads / 32; ++w) v += part[w][threadIdx.x];
    a.row_stats[row * kPpoStats + threadIdx.x] = v;
  }
}

template <typename F>
__global__ void ppo_bwd_kernel(PpoArgs a) {
  const int64_t n = a.B * a.T;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    F* grad = static_cast<F*>(a.grad);
    if (!a.mask[i]) {
      grad[i] = F(0);
      continue;
    }
    const PpoToken k = ppo_token(static_cast<double>(static_cast<const F*>(a.logp)[i]),
                                 static_cast<double>(static_cast<const F*>(a.old_logp)[i]),
                                 static_cast<double>(static_cast<const F*>(a.advantages)[i]), a.clip_low,
                                 a.clip_high, a.dual_clip);
    grad[i] = static_cast<F>(a.row_scale[i / a.T] * k.dloss_dlogp);
  }
}

template <typename F, bool kBackward>
__global__ void kl_kernel(KlArgs a) {
  const F* lp = static_cast<const F*>(a.logp);
  const F* ref = static_cast<const F*>(a.ref_logp);
  F* out = static_cast<F*>(a.out);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < a.n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const KlToken k = kl_token(a.kind, static_cast<double>(lp[i]), static_cast<double>(ref[i]));
    out[i] = static_cast<F>(kBackward ? static_cast<double>(static_cast<const F*>(a.grad_out)[i]) * k.dvalue_dlogp
                                      : k.value);
  }
}

// Rows go on grid.x (up to 2^31 - 1), enough for any B a [B, T] tensor of this kind can have.
void check_rows(int64_t B) {
  require(B <= 2147483647LL, "rows: B must be < 2^31 for the CUDA kernels");
}

int64_t blocks_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return b < 65535LL * 32 ? b : 65535LL * 32;
}

}  // namespace

void rl_scan_cuda(const ScanArgs& a, uintptr_t stream) {
  if (a.B == 0 || a.T == 0) return;
  check_rows(a.B);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(a.B));
  if (a.dtype == kFloat64) {
    if (a.kind == 0) scan_kernel<double, 0><<<grid, kScanThreads, 0, s>>>(a);
    else scan_kernel<double, 1><<<grid, kScanThreads, 0, s>>>(a);
  } else {
    if (a.kind == 0) scan_kernel<float, 0><<<grid, kScanThreads, 0, s>>>(a);
    else scan_kernel<float, 1><<<grid, kScanThreads, 0, s>>>(a);
  }
  SMTPO_CUDA_CHECK(cudaGetLastError());
}

void group_advantages_cuda(const GroupAdvArgs& a, const int64_t* order, const int64_t* offsets, uintptr_t stream) {
  if (a.B == 0) return;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  // TRL's scale_rewards="batch": one float64 std of all rewards, kept in a stream-ordered scratch allocation.
  double* batch_std = nullptr;
  if (a.kind == 0 && a.scale == 1) {
    SMTPO_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&batch_std), sizeof(double), s));
    if (a.dtype == kFloat64) batch_std_kernel<double><<<1, 1024, 0, s>>>(a, batch_std);
    else batch_std_kernel<float><<<1, 1024, 0, s>>>(a, batch_std);
    SMTPO_CUDA_CHECK(cudaGetLastError());
  }
  const int threads = 128;
  const unsigned blocks = static_cast<unsigned>((a.G + threads - 1) / threads);
  if (a.dtype == kFloat64) group_adv_kernel<double><<<blocks, threads, 0, s>>>(a, order, offsets, batch_std);
  else group_adv_kernel<float><<<blocks, threads, 0, s>>>(a, order, offsets, batch_std);
  SMTPO_CUDA_CHECK(cudaGetLastError());
  if (batch_std) SMTPO_CUDA_CHECK(cudaFreeAsync(batch_std, s));
}

void turn_rewards_cuda(const TurnRewardArgs& a, uintptr_t stream) {
  if (a.B == 0 || a.K == 0) return;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const int threads = 128;
  const unsigned blocks = static_cast<unsigned>((a.B + threads - 1) / threads);
  if (a.dtype == kFloat64) turn_rewards_kernel<double><<<blocks, threads, 0, s>>>(a);
  else turn_rewards_kernel<float><<<blocks, threads, 0, s>>>(a);
  SMTPO_CUDA_CHECK(cudaGetLastError());
}

void ppo_loss_fwd_cuda(const PpoArgs& a, uintptr_t stream) {
  if (a.B == 0) return;
  check_rows(a.B);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(a.B));
  if (a.dtype == kFloat64) ppo_fwd_kernel<double><<<grid, kPpoThreads, 0, s>>>(a);
  else ppo_fwd_kernel<float><<<grid, kPpoThreads, 0, s>>>(a);
  SMTPO_CUDA_CHECK(cudaGetLastError());
}

void kl_penalty_cuda(const KlArgs& a, bool backward, uintptr_t stream) {
  if (a.n == 0) return;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>(blocks_for(a.n, threads));
  if (a.dtype == kFloat64) {
    if (backward) kl_kernel<double, true><<<blocks, threads, 0, s>>>(a);
    else kl_kernel<double, false><<<blocks, threads, 0, s>>>(a);
  } else {
    if (backward) kl_kernel<float, true><<<blocks, threads, 0, s>>>(a);
    else kl_kernel<float, false><<<blocks, threads, 0, s>>>(a);
  }
  SMTPO_CUDA_CHECK(cudaGetLastError());
}

void ppo_loss_bwd_cuda(const PpoArgs& a, uintptr_t stream) {
  if (a.B == 0 || a.T == 0) return;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>(blocks_for(a.B * a.T, threads));
  if (a.dtype == kFloat64) ppo_bwd_kernel<double><<<blocks, threads, 0, s>>>(a);
  else ppo_bwd_kernel<float><<<blocks, threads, 0, s>>>(a);
  SMTPO_CUDA_CHECK(cudaGetLastError());
}

}  // namespace smtpo
