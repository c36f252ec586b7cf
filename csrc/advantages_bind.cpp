// Python bindings of the RL math kernels (GAE, returns, group advantages, turn rewards, PPO loss). Every pointer is
// an address from tensor.data_ptr(); smtpo_fast/ops/advantages.py and policy_loss.py validate shapes, dtypes,
// devices and contiguity before calling these. The GIL is released around the CPU kernels.
#include <pybind11/pybind11.h>

#include "advantages.h"
#ifdef SMTPO_WITH_CUDA
#include "advantages_cuda.h"
#endif

namespace py = pybind11;

namespace smtpo {
void rl_scan_cpu(const ScanArgs& a);
void group_advantages_cpu(const GroupAdvArgs& a);
void turn_rewards_cpu(const TurnRewardArgs& a);
void ppo_loss_fwd_cpu(const PpoArgs& a);
void ppo_loss_bwd_cpu(const PpoArgs& a);
void kl_penalty_fwd_cpu(const KlArgs& a);
void kl_penalty_bwd_cpu(const KlArgs& a);
}  // namespace smtpo

namespace {

using namespace smtpo;

template <typename T>
T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

void check_float_dtype(int dtype, const char* what) {
  require(dtype == kFloat32 || dtype == kFloat64, std::string(what) + ": dtype must be float32 or float64, got " +
                                                      dtype_name(dtype));
}

ScanArgs scan_args(int kind, int dtype, int64_t B, int64_t T, uintptr_t rewards, uintptr_t values, uintptr_t mask,
                   double gamma, double lam, uintptr_t adv, uintptr_t ret) {
  check_float_dtype(dtype, "rewards");
  require(kind == 0 || kind == 1, "kind: 0 (GAE) or 1 (returns)");
  require(B >= 0 && T >= 0, "rewards: need B, T >= 0");
  require(B * T == 0 || (rewards && mask && ret && (kind == 1 || (values && adv))), "rewards: null pointer");
  return ScanArgs{kind, dtype, B, T, ptr<const void>(rewards), ptr<const void>(values), ptr<const uint8_t>(mask),
                  gamma, lam, ptr<void>(adv), ptr<void>(ret)};
}

GroupAdvArgs group_args(int kind, int dtype, int64_t B, int64_t G, uintptr_t rewards, uintptr_t group, int scale,
                        int ddof, double eps, uintptr_t out, bool raw_ids_ok) {
  check_float_dtype(dtype, "rewards");
  require(kind == 0 || kind == 1, "kind: 0 (GRPO) or 1 (RLOO)");
  require(scale >= 0 && scale <= 2 && (ddof == 0 || ddof == 1), "scale/ddof out of range");
  require(B >= 0 && G >= 0 && (B == 0 || G >= 1 || raw_ids_ok), "group_ids: need G >= 1 groups for B > 0 rewards");
  require(B == 0 || (rewards && group && out), "rewards: null pointer");
  return GroupAdvArgs{kind, dtype, B, G, ptr<const void>(rewards), ptr<const int64_t>(group), scale, ddof, eps,
                      ptr<void>(out)};
}

TurnRewardArgs turn_args(int dtype, int64_t B, int64_t K, int64_t T, uintptr_t tr, uintptr_t ends, double gamma,
                         uintptr_t out) {
  check_float_dtype(dtype, "turn_rewards");
  require(B >= 0 && K >= 0 && T >= 0, "turn_rewards: need B, K, T >= 0");
  return TurnRewardArgs{dtype, B, K, T, ptr<const void>(tr), ptr<const int64_t>(ends), gamma, ptr<void>(out)};
}

PpoArgs ppo_args(int dtype, int64_t B, int64_t T, uintptr_t logp, uintptr_t old, uintptr_t adv, uintptr_t mask,
                 double clip_low, double clip_high, double dual_clip, uintptr_t row_stats, uintptr_t row_scale,
                 uintptr_t grad) {
  check_float_dtype(dtype, "logp");
  require(B >= 0 && T >= 0, "logp: need B, T >= 0");
  return PpoArgs{dtype, B, T, ptr<const void>(logp), ptr<const void>(old), ptr<const void>(adv),
                 ptr<const uint8_t>(mask), clip_low, clip_high, dual_clip, ptr<double>(row_stats),
                 ptr<const double>(row_scale), ptr<void>(grad)};
}

KlArgs kl_args(int kind, int dtype, int64_t n, uintptr_t logp, uintptr_t ref, uintptr_t grad_out, uintptr_t out) {
  check_float_dtype(dtype, "logp");
  require(kind >= 0 && kind <= 2, "kind: 0 (k1), 1 (k2) or 2 (k3)");
  require(n >= 0 && (n == 0 || (logp && ref && out)), "logp: null pointer");
  return KlArgs{kind, dtype, n, ptr<const void>(logp), ptr<const void>(ref), ptr<const void>(grad_out), ptr<void>(out)};
}

}  // namespace

void register_advantages(py::module_& m) {
  m.def("kl_penalty_fwd_cpu", [](int kind, int dtype, int64_t n, uintptr_t logp, uintptr_t ref, uintptr_t out) {
    auto a = kl_args(kind, dtype, n, logp, ref, 0, out);
    py::gil_scoped_release nogil;
    kl_penalty_fwd_cpu(a);
  });
  m.def("kl_penalty_bwd_cpu", [](int kind, int dtype, int64_t n, uintptr_t logp, uintptr_t ref, uintptr_t grad_out,
                                 uintptr_t out) {
    auto a = kl_args(kind, dtype, n, logp, ref, grad_out, out);
    require(n == 0 || grad_out != 0, "grad_out: null pointer");
    py::gil_scoped_release nogil;
    kl_penalty_bwd_cpu(a);
  });
  m.def("rl_scan_cpu", [](int kind, int dtype, int64_t B, int64_t T, uintptr_t rewards, uintptr_t values,
                          uintptr_t mask, double gamma, double lam, uintptr_t adv, uintptr_t ret) {
    auto a = scan_args(kind, dtype, B, T, rewards, values, mask, gamma, lam, adv, ret);
    py::gil_scoped_release nogil;
    rl_scan_cpu(a);
  });
  m.def("group_advantages_cpu", [](int kind, int dtype, int64_t B, int64_t G, uintptr_t rewards, uintptr_t group,
                                   int scale, int ddof, double eps, uintptr_t out) {
    auto a = group_args(kind, dtype, B, G, rewards, group, scale, ddof, eps, out, /*raw_ids_ok=*/true);
    py::gil_scoped_release nogil;
    group_advantages_cpu(a);
  });
  m.def("turn_rewards_cpu", [](int dtype, int64_t B, int64_t K, int64_t T, uintptr_t tr, uintptr_t ends,
                               double gamma, uintptr_t out) {
    auto a = turn_args(dtype, B, K, T, tr, ends, gamma, out);
    py::gil_scoped_release nogil;
    turn_rewards_cpu(a);
  });
  m.def("ppo_loss_fwd_cpu", [](int dtype, int64_t B, int64_t T, uintptr_t logp, uintptr_t old, uintptr_t adv,
                               uintptr_t mask, double cl, double ch, double dual, uintptr_t row_stats) {
    auto a = ppo_args(dtype, B, T, logp, old, adv, mask, cl, ch, dual, row_stats, 0, 0);
    py::gil_scoped_release nogil;
    ppo_loss_fwd_cpu(a);
  });
  m.def("ppo_loss_bwd_cpu", [](int dtype, int64_t B, int64_t T, uintptr_t logp, uintptr_t old, uintptr_t adv,
                               uintptr_t mask, double cl, double ch, double dual, uintptr_t row_scale,
                               uintptr_t grad) {
    auto a = ppo_args(dtype, B, T, logp, old, adv, mask, cl, ch, dual, 0, row_scale, grad);
    py::gil_scoped_release nogil;
    ppo_loss_bwd_cpu(a);
  });
#ifdef SMTPO_WITH_CUDA
  m.def("rl_scan_cuda", [](int kind, int dtype, int64_t B, int64_t T, uintptr_t rewards, uintptr_t values,
                           uintptr_t mask, double gamma, double lam, uintptr_t adv, uintptr_t ret, uintptr_t stream) {
    rl_scan_cuda(scan_args(kind, dtype, B, T, rewards, values, mask, gamma, lam, adv, ret), stream);
  });
  m.def("group_advantages_cuda", [](int kind, int dtype, int64_t B, int64_t G, uintptr_t rewards, uintptr_t group,
                                    int scale, int ddof, double eps, uintptr_t out, uintptr_t order,
                                    uintptr_t offsets, uintptr_t stream) {
    group_advantages_cuda(group_args(kind, dtype, B, G, rewards, group, scale, ddof, eps, out, false),
                          ptr<const int64_t>(order), ptr<const int64_t>(offsets), stream);
  });
  m.def("turn_rewards_cuda", [](int dtype, int64_t B, int64_t K, int64_t T, uintptr_t tr, uintptr_t ends,
                                double gamma, uintptr_t out, uintptr_t stream) {
    turn_rewards_cuda(turn_args(dtype, B, K, T, tr, ends, gamma, out), stream);
  });
  m.def("kl_penalty_fwd_cuda", [](int kind, int dtype, int64_t n, uintptr_t logp, uintptr_t ref, uintptr_t out,
                                  uintptr_t stream) {
    kl_penalty_cuda(kl_args(kind, dtype, n, logp, ref, 0, out), false, stream);
  });
  m.def("kl_penalty_bwd_cuda", [](int kind, int dtype, int64_t n, uintptr_t logp, uintptr_t ref, uintptr_t grad_out,
                                  uintptr_t out, uintptr_t stream) {
    require(n == 0 || grad_out != 0, "grad_out: null pointer");
    kl_penalty_cuda(kl_args(kind, dtype, n, logp, ref, grad_out, out), true, stream);
  });
  m.def("ppo_loss_fwd_cuda", [](int dtype, int64_t B, int64_t T, uintptr_t logp, uintptr_t old, uintptr_t adv,
                                uintptr_t mask, double cl, double ch, double dual, uintptr_t row_stats,
                                uintptr_t stream) {
    ppo_loss_fwd_cuda(ppo_args(dtype, B, T, logp, old, adv, mask, cl, ch, dual, row_stats, 0, 0), stream);
  });
  m.def("ppo_loss_bwd_cuda", [](int dtype, int64_t B, int64_t T, uintptr_t logp, uintptr_t old, uintptr_t adv,
                                uintptr_t mask, double cl, double ch, double dual, uintptr_t row_scale,
                                uintptr_t grad, uintptr_t stream) {
    ppo_loss_bwd_cuda(ppo_args(dtype, B, T, logp, old, adv, mask, cl, ch, dual, 0, row_scale, grad), stream);
  });
#endif
}
