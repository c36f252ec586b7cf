// Shared declarations for the native kernels. No torch headers: tensors arrive as raw addresses, sizes and
// element strides, with one of the dtype codes below (kept in sync with smtpo_fast/_ext.py).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

// Functions shared by host (CPU) and device (CUDA) code.
#ifdef __CUDACC__
#define SMTPO_HD __host__ __device__ __forceinline__
#else
#define SMTPO_HD inline
#endif

namespace smtpo {

enum DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kFloat64 = 3, kInt64 = 4, kInt32 = 5, kBool = 6 };

inline const char* dtype_name(int code) {
  switch (code) {
    case kFloat32: return "float32";
    case kBFloat16: return "bfloat16";
    case kFloat16: return "float16";
    case kFloat64: return "float64";
    case kInt64: return "int64";
    case kInt32: return "int32";
    case kBool: return "bool";
    default: return "unknown";
  }
}

inline void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}

// Calls f(std::integral_constant<int, code>{}) for a float32 / bfloat16 / float16 code (0 / 1 / 2), so one generic
// lambda instantiates a kernel per element type; `arg` names the tensor in the error for any other dtype.
template <typename F>
inline void dispatch_float_dtype(int dtype, const char* arg, F&& f) {
  switch (dtype) {
    case kFloat32: f(std::integral_constant<int, 0>{}); break;
    case kBFloat16: f(std::integral_constant<int, 1>{}); break;
    case kFloat16: f(std::integral_constant<int, 2>{}); break;
    default: throw std::invalid_argument(std::string(arg) + ": unsupported dtype " + dtype_name(dtype));
  }
}

// Rows of logits laid out as [B, T, V] with element strides (sB, sT) and unit stride along V; [N, V] is B = 1.
struct LogprobFwdArgs {
  const void* logits; int dtype;
  int64_t B, T, V, sB, sT;
  const int64_t* labels; int64_t lsB, lsT;
  float inv_temp; int64_t ignore_index;
  float* logp;      // [B*T]
  float* entropy;   // [B*T] or nullptr
  float* lse;       // [B*T]  log-sum-exp of logits * inv_temp, kept for backward
};

struct LogprobBwdArgs {
  const void* logits; int dtype;
  int64_t B, T, V, sB, sT;
  const int64_t* labels; int64_t lsB, lsT;
  float inv_temp; int64_t ignore_index;
  const float* lse;          // [B*T]
  const float* entropy;      // [B*T], needed when grad_entropy is given
  const float* grad_logp;    // [B*T] or nullptr
  const float* grad_entropy; // [B*T] or nullptr
  void* grad; int64_t gsB, gsT;  // output in `dtype`, may alias logits (in-place backward)
};

}  // namespace smtpo
