// Host entry points of csrc/logprob_cuda.cu. Plain C++ types only, so the binding file needs no CUDA headers.
#pragma once
#include <cstdint>

#include "common.h"

namespace smtpo {
void logprob_fwd_cuda(const LogprobFwdArgs& a, uintptr_t stream);
void logprob_bwd_cuda(const LogprobBwdArgs& a, uintptr_t stream);
}  // namespace smtpo
