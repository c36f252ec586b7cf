// Python bindings of the decode-attention kernels. Pointers are tensor.data_ptr() addresses, strides are in
// elements; smtpo_fast/ops/attention.py validates shapes, dtypes and devices before calling these.
#include <pybind11/pybind11.h>

#include "decode_attention_args.h"
#ifdef SMTPO_WITH_CUDA
#include "decode_attention_cuda.h"
#endif

namespace py = pybind11;
using smtpo::DecodeAttnArgs;

namespace {

DecodeAttnArgs attn_args(uintptr_t q, int64_t qsB, int64_t qsH, uintptr_t k, uintptr_t v, int64_t ksB, int64_t ksH,
                         int64_t ksS, int64_t vsB, int64_t vsH, int64_t vsS, uintptr_t lengths, uintptr_t rows,
                         uintptr_t out, int dtype, int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int64_t D,
                         float scale) {
  smtpo::require(B >= 0 && Hkv >= 1 && Hq % Hkv == 0 && S >= 0 && D >= 1,
                 "q / k_cache: need Hq a multiple of Hkv >= 1, S >= 0 and D >= 1");
  smtpo::require(B == 0 || (q && k && v && lengths && out), "decode_attention: null pointer");
  return DecodeAttnArgs{reinterpret_cast<const void*>(q), qsB, qsH,
                        reinterpret_cast<const void*>(k), reinterpret_cast<const void*>(v),
                        ksB, ksH, ksS, vsB, vsH, vsS,
                        reinterpret_cast<const int64_t*>(lengths), reinterpret_cast<const int64_t*>(rows),
                        reinterpret_cast<void*>(out), dtype, B, Hq, Hkv, S, D, scale};
}

}  // namespace

void register_decode_attention(py::module_& m) {
  m.def(
      "decode_attention_cpu",
      [](uintptr_t q, int64_t qsB, int64_t qsH, uintptr_t k, uintptr_t v, int64_t ksB, int64_t ksH, int64_t ksS,
         int64_t vsB, int64_t vsH, int64_t vsS, uintptr_t lengths, uintptr_t rows, uintptr_t out, int dtype,
         int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int64_t D, float scale) {
        auto a = attn_args(q, qsB, qsH, k, v, ksB, ksH, ksS, vsB, vsH, vsS, lengths, rows, out, dtype, B, Hq, Hkv,
                           S, D, scale);
        py::gil_scoped_release nogil;
        SMTPO_ISA_CALL(decode_attention, a);
      });
#ifdef SMTPO_WITH_CUDA
  m.def(
      "decode_attention_cuda",
      [](uintptr_t q, int64_t qsB, int64_t qsH, uintptr_t k, uintptr_t v, int64_t ksB, int64_t ksH, int64_t ksS,
         int64_t vsB, int64_t vsH, int64_t vsS, uintptr_t lengths, uintptr_t rows, uintptr_t out, int dtype,
         int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int64_t D, float scale, uintptr_t work, int64_t splits,
         uintptr_t stream) {
        auto a = attn_args(q, qsB, qsH, k, v, ksB, ksH, ksS, vsB, vsH, vsS, lengths, rows, out, dtype, B, Hq, Hkv,
                           S, D, scale);
        smtpo::require(splits >= 1 && work != 0, "decode_attention: need a split-K workspace");
        smtpo::decode_attention_cuda(a, reinterpret_cast<float*>(work), splits, stream);
      });
#endif
}
