// Argument blocks of the RL math kernels (GAE, discounted returns, group advantages, turn rewards, PPO policy
// loss), shared by the CPU (csrc/advantages_cpu.cpp) and CUDA (csrc/advantages_cuda.cu) implementations.
//
// Every [B, T] tensor is contiguous (smtpo_fast/ops/advantages.py and policy_loss.py make it so); values are
// float32 or float64 (`dtype`, a code of common.h), outputs have the same dtype, and every kernel accumulates in
// float64 so that float32 outputs are the correctly rounded float64 result up to a few ulps. Masks are bytes
// (torch.bool): nonzero = a token the policy produced.
#pragma once
#include <cstdint>

#include "common.h"

namespace smtpo {

// GAE (kind 0) or discounted returns (kind 1) over [B, T]. Masked positions are skipped by the recursion (the next
// value and the running advantage/return carry over them) and get 0 in every output.
struct ScanArgs {
  int kind;  // 0: GAE, 1: discounted returns
  int dtype; // kFloat32 or kFloat64, for rewards, values and outputs
  int64_t B, T;
  const void* rewards;  // [B, T]
  const void* values;   // [B, T] (GAE only)
  const uint8_t* mask;  // [B, T]
  double gamma, lam;
  void* advantages;     // [B, T] (GAE only)
  void* returns;        // [B, T]
};

// GRPO (kind 0) or RLOO (kind 1) advantages of B outcome rewards in G groups given as dense ids in [0, G), or (CPU
// only, G = 0) as arbitrary int64 ids that the kernel maps to dense ones itself.
struct GroupAdvArgs {
  int kind;   // 0: GRPO, 1: RLOO
  int dtype;  // rewards and out
  int64_t B, G;
  const void* rewards;    // [B]
  const int64_t* group;   // [B] dense ids, or any ids when G = 0
  int scale;              // GRPO: 0 group std, 1 batch std, 2 no division
  int ddof;               // 1 unbiased, 0 biased
  double eps;
  void* out;              // [B]
};

// Per-turn rewards [B, K] placed at token positions turn_end [B, K] (-1: padding turn) of a zeroed [B, T] output,
// each valid turn getting its reward plus gamma_turn times the value of the next valid turn.
struct TurnRewardArgs {
  int dtype;
  int64_t B, K, T;
  const void* turn_rewards;   // [B, K]
  const int64_t* turn_end;    // [B, K]
  double gamma_turn;
  void* out;                  // [B, T]: the CPU kernel writes every entry; the CUDA kernel expects it zeroed
};

// Clipped PPO surrogate (verl's compute_policy_loss): per-token loss and its gradient w.r.t. logp.
// Per-row partials of the forward: valid count, loss sum, clipped count, approx-KL sum, dual-clipped count.
constexpr int kPpoStats = 5;
struct PpoArgs {
  int dtype;
  int64_t B, T;
  const void* logp;       // [B, T]
  const void* old_logp;   // [B, T]
  const void* advantages; // [B, T]
  const uint8_t* mask;    // [B, T]
  double clip_low, clip_high, dual_clip;  // dual_clip <= 0: off
  double* row_stats;      // forward: [B, kPpoStats] float64
  const double* row_scale;// backward: [B] d loss / d (per-token loss) of that row's valid tokens
  void* grad;             // backward: [B, T] d loss / d logp
};

// Per-token KL estimate (kind 0: k1, 1: k2, 2: k3) of logp against ref_logp, flattened to n elements; forward
// writes `out`, backward writes grad = grad_out * d out / d logp.
struct KlArgs {
  int kind;
  int dtype;
  int64_t n;
  const void* logp;      // [n]
  const void* ref_logp;  // [n]
  const void* grad_out;  // [n], backward only
  void* out;             // [n]: the estimate (forward) or the gradient (backward)
};

}  // namespace smtpo
