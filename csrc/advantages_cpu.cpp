// RL math kernels for the CPU: OpenMP over rows (for large enough work), one sequential float64 pass per row (the
// recursions of GAE and returns run backward in time, so a row is a chain; rows are independent). Group advantages
// are two passes over B with per-group float64 sums. See csrc/advantages.h for the argument blocks.
#include <algorithm>
#include <cmath>
#include <unordered_map>
#include <vector>

#include "advantages.h"
#include "advantages_math.h"

namespace smtpo {

namespace {

// Parallel regions only for work worth waking threads for: on a busy machine a region costs a scheduler tick.
constexpr int64_t kParallelWork = int64_t(1) << 21;

// Rows are scanned kLanes at a time in lockstep: each row's recursion is a serial chain of dependent float64 ops,
// so interleaving independent rows keeps the pipeline full (about 8x a one-row loop). Masked tokens are selects,
// not branches or multiplications, so a NaN at a masked token cannot leak in.
constexpr int kLanes = 8;

template <typename F, int kKind>
void scan_block(const ScanArgs& a, int64_t b0, int64_t nrows) {
  const int64_t T = a.T;
  const double gamma = a.gamma, gl = a.gamma * a.lam;
  const F* r[kLanes];
  const F* v[kLanes];
  const uint8_t* m[kLanes];
  F* adv[kLanes];
  F* ret[kLanes];
  for (int j = 0; j < kLanes; ++j) {
    // Lanes past the last row redo the last row: same values to the same places, and no branch in the loop.
    const int64_t b = b0 + (j < nrows ? j : nrows - 1);
    r[j] = static_cast<const F*>(a.rewards) + b * T;
    v[j] = kKind == 0 ? static_cast<const F*>(a.values) + b * T : nullptr;
    m[j] = a.mask + b * T;
    adv[j] = kKind == 0 ? static_cast<F*>(a.advantages) + b * T : nullptr;
    ret[j] = static_cast<F*>(a.returns) + b * T;
  }
  double running[kLanes] = {}, next_value[kLanes] = {};
  for (int64_t t = T - 1; t >= 0; --t) {
#pragma GCC unroll 8
    for (int j = 0; j < kLanes; ++j) {
      const bool valid = m[j][t] != 0;
      const double rt = double(r[j][t]);
      if (kKind == 0) {
        const double vt = double(v[j][t]);
        const double updated = rt + gamma * next_value[j] - vt + gl * running[j];
        running[j] = valid ? updated : running[j];
        next_value[j] = valid ? vt : next_value[j];
        adv[j][t] = valid ? F(running[j]) : F(0);
        ret[j][t] = valid ? F(running[j] + vt) : F(0);
      } else {
        const double updated = rt + gamma * running[j];
        running[j] = valid ? updated : running[j];
        ret[j][t] = valid ? F(running[j]) : F(0);
      }
    }
  }
}

template <typename F, int kKind>
void scan_rows(const ScanArgs& a) {
  const int64_t blocks = (a.B + kLanes - 1) / kLanes;
#pragma omp parallel for schedule(static) if (a.B * a.T >= kParallelWork)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t b0 = blk * kLanes;
    scan_block<F, kKind>(a, b0, a.B - b0 < kLanes ? a.B - b0 : kLanes);
  }
}

// Dense ids in [0, G) for arbitrary int64 group ids, numbered by first appearance: a direct table when the ids span
// a small range (prompt indices, the usual case), else a hash map. Single-threaded: B is small (thousands), and a
// sort (torch.unique) on a busy machine costs more than the whole op.
int64_t dense_group_ids(const int64_t* ids, int64_t B, std::vector<int64_t>& dense) {
  dense.resize(B);
  if (B == 0) return 0;
  int64_t lo = ids[0], hi = ids[0];
  for (int64_t i = 1; i < B; ++i) {
    lo = ids[i] < lo ? ids[i] : lo;
    hi = ids[i] > hi ? ids[i] : hi;
  }
  const uint64_t span = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo);  // no signed overflow
  int64_t G = 0;
  if (span < static_cast<uint64_t>(4 * B + 4096)) {
    std::vector<int64_t> table(span + 1, -1);
    for (int64_t i = 0; i < B; ++i) {
      int64_t& slot = table[static_cast<uint64_t>(ids[i]) - static_cast<uint64_t>(lo)];
      if (slot < 0) slot = G++;
      dense[i] = slot;
    }
  } else {
    std::unordered_map<int64_t, int64_t> table;
    table.reserve(static_cast<size_t>(B));
    for (int64_t i = 0; i < B; ++i) {
      auto it = table.emplace(ids[i], G).first;
      if (it->second == G) ++G;
      dense[i] = it->second;
    }
  }
  return G;
}

template <typename F>
void group_adv(GroupAdvArgs a) {
  const F* r = static_cast<const F*>(a.rewards);
  F* out = static_cast<F*>(a.out);
  std::vector<int64_t> dense;
  if (a.G == 0) {
    a.G = dense_group_ids(a.group, a.B, dense);
    a.group = dense.data();
  }
  std::vector<double> sum(a.G, 0.0), sq(a.G, 0.0);
  std::vector<int64_t> count(a.G, 0);
  for (int64_t i = 0; i < a.B; ++i) {
    sum[a.group[i]] += double(r[i]);
    ++count[a.group[i]];
  }
  // A group of one has mean 0 (verl's convention: its advantage is its reward, scaled by 1 / (1 + eps)).
  for (int64_t g = 0; g < a.G; ++g) sum[g] = count[g] > 1 ? sum[g] / double(count[g]) : 0.0;  // now the mean
  const bool rloo = a.kind == 1;
  if (rloo) {
    for (int64_t i = 0; i < a.B; ++i) {
      const int64_t n = count[a.group[i]];
      const double x = double(r[i]);
      out[i] = F(n > 1 ? (x - sum[a.group[i]]) * double(n) / double(n - 1) : x);
    }
    return;
  }
  if (a.scale == 2) {
    for (int64_t i = 0; i < a.B; ++i) out[i] = F(double(r[i]) - sum[a.group[i]]);
    return;
  }
  double batch_std = 1.0;
  if (a.scale == 1) {
    if (a.B > 1) {
      double mean = 0.0, ss = 0.0;
      for (int64_t i = 0; i < a.B; ++i) mean += double(r[i]);
      mean /= double(a.B);
      for (int64_t i = 0; i < a.B; ++i) ss += (double(r[i]) - mean) * (double(r[i]) - mean);
      batch_std = std::sqrt(ss / double(a.B - a.ddof));
    }
  } else {
    // Second pass about the mean (not sum of squares minus squared sum): exact zero for zero-variance groups.
    for (int64_t i = 0; i < a.B; ++i) {
      const double dx = double(r[i]) - sum[a.group[i]];
      sq[a.group[i]] += dx * dx;
    }
    for (int64_t g = 0; g < a.G; ++g) sq[g] = count[g] > 1 ? std::sqrt(sq[g] / double(count[g] - a.ddof)) : 1.0;
  }
  for (int64_t i = 0; i < a.B; ++i) {
    const double s = a.scale == 1 ? batch_std : sq[a.group[i]];
    out[i] = F((double(r[i]) - sum[a.group[i]]) / (s + a.eps));
  }
}

template <typename F>
void turn_rewards(const TurnRewardArgs& a) {
  const F* tr = static_cast<const F*>(a.turn_rewards);
  F* out = static_cast<F*>(a.out);
#pragma omp parallel for schedule(static) if (a.B * a.T >= kParallelWork)
  for (int64_t b = 0; b < a.B; ++b) {
    // The output arrives uninitialised: zeroing it here, row by row, saves a separate pass over [B, T].
    std::fill(out + b * a.T, out + (b + 1) * a.T, F(0));
    double running = 0.0;
    for (int64_t k = a.K - 1; k >= 0; --k) {
      const int64_t end = a.turn_end[b * a.K + k];
      if (end < 0) continue;
      running = double(tr[b * a.K + k]) + a.gamma_turn * running;
      out[b * a.T + end] = F(running);
    }
  }
}

template <typename F>
void ppo_fwd(const PpoArgs& a) {
  const F* lp = static_cast<const F*>(a.logp);
  const F* old = static_cast<const F*>(a.old_logp);
  const F* adv = static_cast<const F*>(a.advantages);
#pragma omp parallel for schedule(static) if (a.B * a.T >= kParallelWork)
  for (int64_t b = 0; b < a.B; ++b) {
    double n = 0, loss = 0, clipped = 0, kl = 0, dual = 0;
    for (int64_t t = b * a.T; t < (b + 1) * a.T; ++t) {
      if (!a.mask[t]) continue;
      const PpoToken k = ppo_token(double(lp[t]), double(old[t]), double(adv[t]), a.clip_low, a.clip_high,
                                   a.dual_clip);
      n += 1.0;
      loss += k.loss;
      clipped += k.clipped ? 1.0 : 0.0;
      kl += k.neg_log_ratio;
      dual += k.dual_clipped ? 1.0 : 0.0;
    }
    double* s = a.row_stats + b * kPpoStats;
    s[0] = n; s[1] = loss; s[2] = clipped; s[3] = kl; s[4] = dual;
  }
}

template <typename F>
void ppo_bwd(const PpoArgs& a) {
  const F* lp = static_cast<const F*>(a.logp);
  const F* old = static_cast<const F*>(a.old_logp);
  const F* adv = static_cast<const F*>(a.advantages);
  F* grad = static_cast<F*>(a.grad);
#pragma omp parallel for schedule(static) if (a.B * a.T >= kParallelWork)
  for (int64_t b = 0; b < a.B; ++b) {
    const double scale = a.row_scale[b];
    for (int64_t t = b * a.T; t < (b + 1) * a.T; ++t) {
      if (!a.mask[t]) {
        grad[t] = F(0);
        continue;
      }
      const PpoToken k = ppo_token(double(lp[t]), double(old[t]), double(adv[t]), a.clip_low, a.clip_high,
                                   a.dual_clip);
      grad[t] = F(scale * k.dloss_dlogp);
    }
  }
}

template <typename F>
void kl_fwd(const KlArgs& a) {
  const F* lp = static_cast<const F*>(a.logp);
  const F* ref = static_cast<const F*>(a.ref_logp);
  F* out = static_cast<F*>(a.out);
#pragma omp parallel for schedule(static) if (a.n >= kParallelWork)
  for (int64_t i = 0; i < a.n; ++i) out[i] = F(kl_token(a.kind, double(lp[i]), double(ref[i])).value);
}

template <typename F>
void kl_bwd(const KlArgs& a) {
  const F* lp = static_cast<const F*>(a.logp);
  const F* ref = static_cast<const F*>(a.ref_logp);
  const F* g = static_cast<const F*>(a.grad_out);
  F* out = static_cast<F*>(a.out);
#pragma omp parallel for schedule(static) if (a.n >= kParallelWork)
  for (int64_t i = 0; i < a.n; ++i)
    out[i] = F(double(g[i]) * kl_token(a.kind, double(lp[i]), double(ref[i])).dvalue_dlogp);
}

}  // namespace

void kl_penalty_fwd_cpu(const KlArgs& a) {
  if (a.dtype == kFloat64) kl_fwd<double>(a);
  else kl_fwd<float>(a);
}

void kl_penalty_bwd_cpu(const KlArgs& a) {
  if (a.dtype == kFloat64) kl_bwd<double>(a);
  else kl_bwd<float>(a);
}

void rl_scan_cpu(const ScanArgs& a) {
  if (a.dtype == kFloat64) {
    if (a.kind == 0) scan_rows<double, 0>(a);
    else scan_rows<double, 1>(a);
  } else {
    if (a.kind == 0) scan_rows<float, 0>(a);
    else scan_rows<float, 1>(a);
  }
}

void group_advantages_cpu(const GroupAdvArgs& a) {
  if (a.dtype == kFloat64) group_adv<double>(a);
  else group_adv<float>(a);
}

void turn_rewards_cpu(const TurnRewardArgs& a) {
  if (a.dtype == kFloat64) turn_rewards<double>(a);
  else turn_rewards<float>(a);
}

void ppo_loss_fwd_cpu(const PpoArgs& a) {
  if (a.dtype == kFloat64) ppo_fwd<double>(a);
  else ppo_fwd<float>(a);
}

void ppo_loss_bwd_cpu(const PpoArgs& a) {
  if (a.dtype == kFloat64) ppo_bwd<double>(a);
  else ppo_bwd<float>(a);
}

}  // namespace smtpo
