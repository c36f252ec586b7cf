// Python bindings of the fused sampling kernels. smtpo_fast/ops/sampling.py validates the arguments first.
#include <pybind11/pybind11.h>

#include "sampling_args.h"
#ifdef SMTPO_WITH_CUDA
#include "sampling_cuda.h"
#endif

namespace py = pybind11;
using smtpo::SampleArgs;

namespace {

SampleArgs sample_args(uintptr_t logits, int dtype, int64_t B, int64_t V, int64_t sB, float inv_temp, int64_t top_k,
                       float top_p, float min_p, uintptr_t seed, uintptr_t tokens, uintptr_t logprobs,
                       uintptr_t cutoff) {
  smtpo::require(B >= 0 && V >= 1, "logits: need B >= 0 and V >= 1");
  smtpo::require(B == 0 || (logits && seed && tokens && logprobs && cutoff), "sample: null pointer");
  smtpo::require(top_k >= 0 && top_p > 0.f && top_p <= 1.f && min_p >= 0.f && min_p <= 1.f,
                 "sample: top_k >= 0, top_p in (0, 1], min_p in [0, 1]");
  return SampleArgs{reinterpret_cast<const void*>(logits), dtype, B, V, sB, inv_temp, top_k, top_p, min_p,
                    reinterpret_cast<const int64_t*>(seed), reinterpret_cast<int64_t*>(tokens),
                    reinterpret_cast<float*>(logprobs), reinterpret_cast<float*>(cutoff)};
}

}  // namespace

void register_sampling(py::module_& m) {
  m.def(
      "sample_cpu",
      [](uintptr_t logits, int dtype, int64_t B, int64_t V, int64_t sB, float inv_temp, int64_t top_k, float top_p,
         float min_p, uintptr_t seed, uintptr_t tokens, uintptr_t logprobs, uintptr_t cutoff) {
        auto a = sample_args(logits, dtype, B, V, sB, inv_temp, top_k, top_p, min_p, seed, tokens, logprobs, cutoff);
        py::gil_scoped_release nogil;
        SMTPO_ISA_CALL(sample, a);
      });
#ifdef SMTPO_WITH_CUDA
  m.def(
      "sample_cuda",
      [](uintptr_t logits, int dtype, int64_t B, int64_t V, int64_t sB, float inv_temp, int64_t top_k, float top_p,
         float min_p, uintptr_t seed, uintptr_t tokens, uintptr_t logprobs, uintptr_t cutoff, uintptr_t stream) {
        auto a = sample_args(logits, dtype, B, V, sB, inv_temp, top_k, top_p, min_p, seed, tokens, logprobs, cutoff);
        smtpo::sample_cuda(a, stream);
      });
#endif
}
