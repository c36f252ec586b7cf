// Host entry point of csrc/sampling_cuda.cu. Plain C++ types only, so the binding needs no CUDA headers.
#pragma once
#include <cstdint>

#include "sampling_args.h"

namespace smtpo {
void sample_cuda(const SampleArgs& a, uintptr_t stream);
}  // namespace smtpo
