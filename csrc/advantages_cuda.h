// Host entry points of csrc/advantages_cuda.cu. Plain C++ types only, so the binding file needs no CUDA headers.
#pragma once
#include <cstdint>

#include "advantages.h"

namespace smtpo {
void rl_scan_cuda(const ScanArgs& a, uintptr_t stream);
// `group` must be sorted-order CSR here: members of group g are order[offsets[g] .. offsets[g + 1]).
void group_advantages_cuda(const GroupAdvArgs& a, const int64_t* order, const int64_t* offsets, uintptr_t stream);
void turn_rewards_cuda(const TurnRewardArgs& a, uintptr_t stream);
void ppo_loss_fwd_cuda(const PpoArgs& a, uintptr_t stream);
void ppo_loss_bwd_cuda(const PpoArgs& a, uintptr_t stream);
void kl_penalty_cuda(const KlArgs& a, bool backward, uintptr_t stream);
}  // namespace smtpo
