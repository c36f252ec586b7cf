// Host entry point of csrc/decode_attention_cuda.cu. Plain C++ types only, so the binding needs no CUDA headers.
#pragma once
#include <cstdint>

#include "decode_attention_args.h"

namespace smtpo {
// work: float32 [B, Hq, splits, D + 2] scratch for the split-K partial results (allocated by the caller).
void decode_attention_cuda(const DecodeAttnArgs& a, float* work, int64_t splits, uintptr_t stream);
}  // namespace smtpo
