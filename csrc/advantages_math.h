// Per-element math of the RL kernels, shared by the CPU and CUDA builds so both compute the same thing.
#pragma once
#include <cmath>
#include <cstdint>

#include "common.h"

namespace smtpo {

// The backward recursions of GAE and discounted returns as affine maps of the state carried from the right:
// (A, nv) -> (a A + b nv + d, c nv + e), with A the running advantage (or return) and nv the value of the next
// valid token. A masked token is the identity map; composing maps lets the CUDA kernel scan a row in parallel.
struct AffineMap {
  double a, b, c, d, e;
};

SMTPO_HD AffineMap identity_map() { return {1.0, 0.0, 1.0, 0.0, 0.0}; }

// f after g: apply g first (the map of the tokens to the right), then f.
SMTPO_HD AffineMap compose(const AffineMap& f, const AffineMap& g) {
  return {f.a * g.a, f.a * g.b + f.b * g.c, f.c * g.c, f.a * g.d + f.b * g.e + f.d, f.c * g.e + f.e};
}

// The map of one valid token. GAE: delta = r + gamma nv - v, A' = delta + gamma lam A, nv' = v.
// Returns: R' = r + gamma R (nv unused).
SMTPO_HD AffineMap token_map(int kind, double r, double v, double gamma, double lam) {
  if (kind == 0) return {gamma * lam, gamma, 0.0, r - v, v};
  return {gamma, 0.0, 1.0, r, 0.0};
}

// One token of the clipped PPO surrogate with verl's conventions: log-ratio clamped to [-20, 20], asymmetric
// clip [1 - clip_low, 1 + clip_high], and for negative advantages the dual clip at -A * dual_clip when enabled.
struct PpoToken {
  double loss, dloss_dlogp;
  bool clipped, dual_clipped;
  double neg_log_ratio;  // old_logp - logp after the clamp: the per-token approx-KL term
};

SMTPO_HD PpoToken ppo_token(double logp, double old_logp, double adv, double clip_low, double clip_high,
                            double dual_clip) {
  const double raw = logp - old_logp;
  const double d = raw < -20.0 ? -20.0 : (raw > 20.0 ? 20.0 : raw);
  const bool in_clamp = raw >= -20.0 && raw <= 20.0;  // NaN: false, and the NaN flows through loss
  const double ratio = exp(d);
  const double lo = 1.0 - clip_low, hi = 1.0 + clip_high;
  const double rc = ratio < lo ? lo : (ratio > hi ? hi : ratio);
  const double l1 = -adv * ratio, l2 = -adv * rc;
  const bool clipped = l2 > l1;
  double loss = clipped ? l2 : l1;
  // Gradient of max(l1, l2): l1's when it is the max; l2's is 0 whenever l2 > l1 (the ratio was clipped).
  double g = clipped ? 0.0 : -adv * ratio;
  bool dual = false;
  if (dual_clip > 0.0 && adv < 0.0) {
    const double l3 = -adv * dual_clip;
    dual = loss > l3;
    if (dual) {
      loss = l3;
      g = 0.0;
    }
  }
  return {loss, in_clamp ? g : 0.0, clipped, dual, -d};
}

// Schulman's KL estimators with verl's clamps (k3 = verl's "low_var_kl"), and their derivative w.r.t. logp.
// Clamps pass the gradient at their bounds (as torch.clamp) and NaN flows through (comparisons are false).
struct KlToken {
  double value, dvalue_dlogp;
};

SMTPO_HD KlToken kl_token(int kind, double logp, double ref_logp) {
  const double d = logp - ref_logp;
  if (kind == 0) return {d, 1.0};
  if (kind == 1) return {0.5 * d * d, d};
  const double x_raw = -d;
  const double x = x_raw < -20.0 ? -20.0 : (x_raw > 20.0 ? 20.0 : x_raw);
  const double ex = exp(x);
  const double y = ex - x - 1.0;  // >= 0 up to rounding
  const double v = y < -10.0 ? -10.0 : (y > 10.0 ? 10.0 : y);
  const bool passes = x_raw >= -20.0 && x_raw <= 20.0 && y >= -10.0 && y <= 10.0;
  return {v, passes ? 1.0 - ex : 0.0};
}

}  // namespace smtpo
