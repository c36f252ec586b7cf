// Python binding of the skinny linear (csrc/isa/skinny_linear_isa.cpp). Pointers are tensor.data_ptr() addresses,
// strides are in elements; smtpo_fast/rollout/cpu_linear.py checks shapes, dtypes and layouts before calling it.
#include <pybind11/pybind11.h>

#include "skinny_linear_args.h"

namespace py = pybind11;

void register_skinny_linear(py::module_& m) {
  m.def(
      "skinny_linear_cpu",
      [](uintptr_t x, int64_t xs, uintptr_t w, int64_t ws, uintptr_t bias, uintptr_t y, int64_t ys, int dtype,
         int64_t M, int64_t N, int64_t K) {
        smtpo::require(M >= 0 && N >= 0 && K >= 0, "skinny_linear: negative size");
        smtpo::require((M == 0 || N == 0) || (x && w && y), "skinny_linear: null pointer");
        smtpo::require(xs >= K && ws >= K && ys >= N, "skinny_linear: rows overlap (row stride < row length)");
        smtpo::SkinnyLinearArgs a{reinterpret_cast<const void*>(x), xs, reinterpret_cast<const void*>(w), ws,
                                  reinterpret_cast<const void*>(bias), reinterpret_cast<void*>(y), ys, dtype,
                                  M, N, K};
        py::gil_scoped_release nogil;
        SMTPO_ISA_CALL(skinny_linear, a);
      },
      "y[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]) for few rows M, weights read in place");
}
