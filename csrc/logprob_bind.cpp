// Python bindings of the fused token log-prob kernels. Every pointer is an address from tensor.data_ptr(), every
// stride is in elements; smtpo_fast/ops/logprob.py validates shapes, dtypes and devices before calling these.
#include <pybind11/pybind11.h>

#include "common.h"
#include "cpu_isa.h"
#ifdef SMTPO_WITH_CUDA
#include "logprob_cuda.h"
#endif

namespace py = pybind11;
using smtpo::LogprobBwdArgs;
using smtpo::LogprobFwdArgs;

namespace {

template <typename T>
T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

LogprobFwdArgs fwd_args(uintptr_t logits, int dtype, int64_t B, int64_t T, int64_t V, int64_t sB, int64_t sT,
                        uintptr_t labels, int64_t lsB, int64_t lsT, float inv_temp, int64_t ignore_index,
                        uintptr_t logp, uintptr_t entropy, uintptr_t lse) {
  smtpo::require(B >= 0 && T >= 0 && V >= 1, "logits: need B, T >= 0 and V >= 1");
  smtpo::require(logits != 0 || B * T == 0, "logits: null pointer");
  return LogprobFwdArgs{ptr<const void>(logits), dtype, B, T, V, sB, sT, ptr<const int64_t>(labels), lsB, lsT,
                        inv_temp, ignore_index, ptr<float>(logp), ptr<float>(entropy), ptr<float>(lse)};
}

LogprobBwdArgs bwd_args(uintptr_t logits, int dtype, int64_t B, int64_t T, int64_t V, int64_t sB, int64_t sT,
                        uintptr_t labels, int64_t lsB, int64_t lsT, float inv_temp, int64_t ignore_index,
                        uintptr_t lse, uintptr_t entropy, uintptr_t grad_logp, uintptr_t grad_entropy,
                        uintptr_t grad, int64_t gsB, int64_t gsT) {
  smtpo::require(B >= 0 && T >= 0 && V >= 1, "logits: need B, T >= 0 and V >= 1");
  smtpo::require(grad_entropy == 0 || entropy != 0, "entropy: needed when grad_entropy is given");
  return LogprobBwdArgs{ptr<const void>(logits), dtype, B, T, V, sB, sT, ptr<const int64_t>(labels), lsB, lsT,
                        inv_temp, ignore_index, ptr<const float>(lse), ptr<const float>(entropy),
                        ptr<const float>(grad_logp), ptr<const float>(grad_entropy), ptr<void>(grad), gsB, gsT};
}

}  // namespace

void register_logprob(py::module_& m) {
  m.def("cpu_isa", [] { return std::string(smtpo::cpu_isa_name()); },
        "Instruction set the CPU kernels run with (SMTPO_CPU_ISA caps it).");
  m.def(
      "logprob_fwd_cpu",
      [](uintptr_t logits, int dtype, int64_t B, int64_t T, int64_t V, int64_t sB, int64_t sT, uintptr_t labels,
         int64_t lsB, int64_t lsT, float inv_temp, int64_t ignore_index, uintptr_t logp, uintptr_t entropy,
         uintptr_t lse) {
        auto a = fwd_args(logits, dtype, B, T, V, sB, sT, labels, lsB, lsT, inv_temp, ignore_index, logp, entropy,
                          lse);
        py::gil_scoped_release nogil;
        SMTPO_ISA_CALL(logprob_fwd, a);
      });
  m.def(
      "logprob_bwd_cpu",
      [](uintptr_t logits, int dtype, int64_t B, int64_t T, int64_t V, int64_t sB, int64_t sT, uintptr_t labels,
         int64_t lsB, int64_t lsT, float inv_temp, int64_t ignore_index, uintptr_t lse, uintptr_t entropy,
         uintptr_t grad_logp, uintptr_t grad_entropy, uintptr_t grad, int64_t gsB, int64_t gsT) {
        auto a = bwd_args(logits, dtype, B, T, V, sB, sT, labels, lsB, lsT, inv_temp, ignore_index, lse, entropy,
                          grad_logp, grad_entropy, grad, gsB, gsT);
        py::gil_scoped_release nogil;
        SMTPO_ISA_CALL(logprob_bwd, a);
      });
#ifdef SMTPO_WITH_CUDA
  m.def(
      "logprob_fwd_cuda",
      [](uintptr_t logits, int dtype, int64_t B, int64_t T, int64_t V, int64_t sB, int64_t sT, uintptr_t labels,
         int64_t lsB, int64_t lsT, float inv_temp, int64_t ignore_index, uintptr_t logp, uintptr_t entropy,
         uintptr_t lse, uintptr_t stream) {
        auto a = fwd_args(logits, dtype, B, T, V, sB, sT, labels, lsB, lsT, inv_temp, ignore_index, logp, entropy,
                          lse);
        smtpo::logprob_fwd_cuda(a, stream);
      });
  m.def(
      "logprob_bwd_cuda",
      [](uintptr_t logits, int dtype, int64_t B, int64_t T, int64_t V, int64_t sB, int64_t sT, uintptr_t labels,
         int64_t lsB, int64_t lsT, float inv_temp, int64_t ignore_index, uintptr_t lse, uintptr_t entropy,
         uintptr_t grad_logp, uintptr_t grad_entropy, uintptr_t grad, int64_t gsB, int64_t gsT, uintptr_t stream) {
        auto a = bwd_args(logits, dtype, B, T, V, sB, sT, labels, lsB, lsT, inv_temp, ignore_index, lse, entropy,
                          grad_logp, grad_entropy, grad, gsB, gsT);
        smtpo::logprob_bwd_cuda(a, stream);
      });
#endif
}
