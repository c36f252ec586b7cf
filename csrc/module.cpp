// The one Python module of the package: smtpo_fast._C. Each op family registers its functions here.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_logprob(py::module_& m);
void register_advantages(py::module_& m);
void register_decode_attention(py::module_& m);
void register_sampling(py::module_& m);
void register_skinny_linear(py::module_& m);

PYBIND11_MODULE(_C, m) {
  m.doc() = "smtpo-fast native kernels (raw-pointer interface; see smtpo_fast/_ext.py)";
#ifdef SMTPO_WITH_CUDA
  m.attr("built_with_cuda") = true;
#else
  m.attr("built_with_cuda") = false;
#endif
  register_logprob(m);
  register_advantages(m);
  register_decode_attention(m);
  register_sampling(m);
  register_skinny_linear(m);
}
