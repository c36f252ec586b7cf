// Arguments of the decode-attention kernels (one query token per row over a static KV cache) and the run-time
// choice among the per-instruction-set CPU builds of csrc/isa/decode_attention_isa.cpp.
#pragma once
#include <cstdint>

#include "common.h"
#include "cpu_isa.h"

namespace smtpo {

// q: [B, Hq, D] (element strides qsB, qsH; unit along D). k/v: [Bc, Hkv, S, D] with strides (sB, sH, sS).
// Row b reads cache row rows[b] (b when rows is null) over positions [0, lengths[b]). out: [B, Hq, D] contiguous.
struct DecodeAttnArgs {
  const void* q; int64_t qsB, qsH;
  const void* k; const void* v;
  int64_t ksB, ksH, ksS, vsB, vsH, vsS;
  const int64_t* lengths; const int64_t* rows;
  void* out; int dtype;
  int64_t B, Hq, Hkv, S, D;
  float scale;
};

namespace isa_base { void decode_attention(const DecodeAttnArgs& a); }
#ifdef SMTPO_HAVE_X86_ISA
namespace isa_avx2 { void decode_attention(const DecodeAttnArgs& a); }
namespace isa_avx512 { void decode_attention(const DecodeAttnArgs& a); }
#endif

}  // namespace smtpo
