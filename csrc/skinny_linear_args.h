// Arguments of the skinny linear (y = x @ w^T + bias for a few rows of x: the matmuls of a CPU decode step) and the
// run-time choice among the per-instruction-set CPU builds of csrc/isa/skinny_linear_isa.cpp.
#pragma once
#include <cstdint>

#include "common.h"
#include "cpu_isa.h"

namespace smtpo {

// x: [M, K] (row stride xs, unit along K); w: [N, K] (row stride ws, unit along K), the nn.Linear layout, read in
// place; bias: [N] contiguous or null; y: [M, N] (row stride ys, unit along N). All of one float dtype; the sums
// accumulate in float32 and y is rounded once.
struct SkinnyLinearArgs {
  const void* x; int64_t xs;
  const void* w; int64_t ws;
  const void* bias;
  void* y; int64_t ys;
  int dtype;
  int64_t M, N, K;
};

namespace isa_base { void skinny_linear(const SkinnyLinearArgs& a); }
#ifdef SMTPO_HAVE_X86_ISA
namespace isa_avx2 { void skinny_linear(const SkinnyLinearArgs& a); }
namespace isa_avx512 { void skinny_linear(const SkinnyLinearArgs& a); }
#endif

}  // namespace smtpo
