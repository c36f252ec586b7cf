// Run-time choice among the per-instruction-set builds of csrc/isa/*.cpp.
#pragma once
#include <cstdlib>
#include <cstring>

#include "common.h"

#define SMTPO_DECLARE_ISA_KERNELS(ns)                 \
  namespace smtpo {                                   \
  namespace ns {                                      \
  void logprob_fwd(const LogprobFwdArgs& a);          \
  void logprob_bwd(const LogprobBwdArgs& a);          \
  }                                                   \
  }

SMTPO_DECLARE_ISA_KERNELS(isa_base)
#ifdef SMTPO_HAVE_X86_ISA
SMTPO_DECLARE_ISA_KERNELS(isa_avx2)
SMTPO_DECLARE_ISA_KERNELS(isa_avx512)
#endif

namespace smtpo {

enum class Isa { kBase = 0, kAvx2 = 1, kAvx512 = 2 };

// The best instruction set this CPU runs, capped by SMTPO_CPU_ISA=base|avx2|avx512 when set.
inline Isa cpu_isa() {
  static const Isa chosen = [] {
    Isa best = Isa::kBase;
#ifdef SMTPO_HAVE_X86_ISA
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      best = Isa::kAvx512;
#endif
    const char* cap = std::getenv("SMTPO_CPU_ISA");
    if (cap) {
      Isa want = !std::strcmp(cap, "base") ? Isa::kBase : !std::strcmp(cap, "avx2") ? Isa::kAvx2 : Isa::kAvx512;
      if (want < best) best = want;
    }
    return best;
  }();
  return chosen;
}

inline const char* cpu_isa_name() {
  switch (cpu_isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "base";
  }
}

}  // namespace smtpo

// Calls ns::fn(args) in the namespace of the chosen instruction set.
#ifdef SMTPO_HAVE_X86_ISA
#define SMTPO_ISA_CALL(fn, ...)                                            \
  do {                                                                     \
    switch (::smtpo::cpu_isa()) {                                          \
      case ::smtpo::Isa::kAvx512: ::smtpo::isa_avx512::fn(__VA_ARGS__); break; \
      case ::smtpo::Isa::kAvx2: ::smtpo::isa_avx2::fn(__VA_ARGS__); break;     \
      default: ::smtpo::isa_base::fn(__VA_ARGS__); break;                      \
    }                                                                      \
  } while (0)
#else
#define SMTPO_ISA_CALL(fn, ...) ::smtpo::isa_base::fn(__VA_ARGS__)
#endif
