// CUDA kernels of the tree ops: one thread per tree (select / expand / backup), one thread per
// row (topk_per_tree), segment (segment_reduce) or group (group_normalize). The per-tree /
// per-segment logic is the same framework-free code as the CPU kernels (include/lrm/*.h), so the
// two agree by construction. Compiled with --fmad=false: no FMA contraction, IEEE division and
// square root (nvcc's defaults), as the float64 / float32 arithmetic of the reference.
#include <cuda_runtime.h>

#include "cuda_ops.h"
#include "lrm/reduce_ops.h"
#include "lrm/tree_ops.h"

namespace lrm {
namespace cuda {
namespace {

constexpr int kThreads = 128;

inline unsigned blocks_for(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }
inline cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

__global__ void select_kernel(TreeView t, int K, SelectParams p, int32_t* out_node, int32_t* out_action) {
  const int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= t.B) return;
  select_tree(t, b, K, p, out_node + b * K, out_action + b * K);
}

__global__ void expand_kernel(TreeView t, int K, const int32_t* leaf_node, const int32_t* leaf_action,
                              const float* child_prior, const uint8_t* terminal, int32_t* new_node) {
  const int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= t.B) return;
  const int32_t* ln = leaf_node + b * K;
  const int32_t* la = leaf_action + b * K;
  int32_t* out = new_node + b * K;
  if (expand_check(t, b, K, ln, la) != kOk) {
    for (int k = 0; k < K; ++k) out[k] = kNoParent;
    return;
  }
  expand_tree(t, b, K, ln, la, child_prior + b * K * t.A, terminal ? terminal + b * K : nullptr, out);
}

__global__ void backup_kernel(TreeView t, int K, const int32_t* nodes, const float* values,
                              const float* step_scores, float discount) {
  const int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= t.B) return;
  backup_tree(t, b, K, nodes + b * K, values + b * K, step_scores ? step_scores + b * K : nullptr, discount);
}

__global__ void topk_kernel(const float* scores, const uint8_t* valid, int64_t B, int64_t M, int64_t k,
                            float* out_v, int32_t* out_i) {
  const int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= B) return;
  topk_row_select(scores + b * M, valid ? valid + b * M : nullptr, M, k, out_v + b * k, out_i + b * k);
}

__device__ inline bool segment_ok(int64_t lo, int64_t hi, int64_t T) { return 0 <= lo && lo <= hi && hi <= T; }

__global__ void segment_reduce_kernel(const float* values, int64_t T, const int64_t* offsets, int64_t S,
                                      int op, float* out) {
  const int64_t s = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (s >= S) return;
  const int64_t lo = offsets[s], hi = offsets[s + 1];
  out[s] = segment_ok(lo, hi, T) ? segment_reduce_one(values, lo, hi, op) : nan_f();
}

// out holds a copy of x (elements outside every group stay as they are).
__global__ void group_normalize_kernel(const float* x, int64_t T, const int64_t* offsets, int64_t G,
                                       float eps, bool unbiased, float* out) {
  const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= G) return;
  const int64_t lo = offsets[g], hi = offsets[g + 1];
  if (!segment_ok(lo, hi, T)) {
    for (int64_t i = lo < 0 ? 0 : lo; i < hi && i < T; ++i) out[i] = nan_f();
    return;
  }
  group_normalize_one(x, lo, hi, eps, unbiased, out);
}

inline int last_error() { return (int)cudaGetLastError(); }

// This module links the CUDA runtime statically, so its current device is its own (torch's
// runtime keeps a separate one): select the tensors' device before every launch.
inline int use_device(int device) {
  int cur = -1;
  cudaError_t e = cudaGetDevice(&cur);
  if (e != cudaSuccess) return (int)e;
  if (cur != device) e = cudaSetDevice(device);
  return (int)e;
}
#define LRM_USE_DEVICE(device)          \
  do {                                  \
    const int e_ = use_device(device);  \
    if (e_ != 0) return e_;             \
  } while (0)

}  // namespace

int select(const TreeView& t, int K, const SelectParams& p, int32_t* out_node, int32_t* out_action,
           uintptr_t stream, int device) {
  if (t.B <= 0 || K <= 0) return 0;
  LRM_USE_DEVICE(device);
  select_kernel<<<blocks_for(t.B), kThreads, 0, as_stream(stream)>>>(t, K, p, out_node, out_action);
  return last_error();
}

int expand(const TreeView& t, int K, const int32_t* leaf_node, const int32_t* leaf_action,
           const float* child_prior, const uint8_t* terminal, int32_t* new_node, uintptr_t stream, int device) {
  if (t.B <= 0 || K <= 0) return 0;
  LRM_USE_DEVICE(device);
  expand_kernel<<<blocks_for(t.B), kThreads, 0, as_stream(stream)>>>(t, K, leaf_node, leaf_action,
                                                                       child_prior, terminal, new_node);
  return last_error();
}

int backup(const TreeView& t, int K, const int32_t* nodes, const float* values, const float* step_scores,
           float discount, uintptr_t stream, int device) {
  if (t.B <= 0 || K <= 0) return 0;
  LRM_USE_DEVICE(device);
  backup_kernel<<<blocks_for(t.B), kThreads, 0, as_stream(stream)>>>(t, K, nodes, values, step_scores,
                                                                       discount);
  return last_error();
}

int topk_per_tree(const float* scores, const uint8_t* valid, int64_t B, int64_t M, int64_t k, float* out_v,
                  int32_t* out_i, uintptr_t stream, int device) {
  if (B <= 0 || k <= 0) return 0;
  LRM_USE_DEVICE(device);
  topk_kernel<<<blocks_for(B), kThreads, 0, as_stream(stream)>>>(scores, valid, B, M, k, out_v, out_i);
  return last_error();
}

int segment_reduce(const float* values, int64_t T, const int64_t* offsets, int64_t S, int op, float* out,
                   uintptr_t stream, int device) {
  if (S <= 0) return 0;
  LRM_USE_DEVICE(device);
  segment_reduce_kernel<<<blocks_for(S), kThreads, 0, as_stream(stream)>>>(values, T, offsets, S, op, out);
  return last_error();
}

int group_normalize(const float* x, int64_t T, const int64_t* offsets, int64_t G, float eps, bool unbiased,
                    float* out, uintptr_t stream, int device) {
  if (T <= 0 && G <= 0) return 0;
  LRM_USE_DEVICE(device);
  cudaStream_t s = as_stream(stream);
  if (T > 0) {
    const cudaError_t e = cudaMemcpyAsync(out, x, sizeof(float) * (size_t)T, cudaMemcpyDeviceToDevice, s);
    if (e != cudaSuccess) return (int)e;
  }
  if (G <= 0) return 0;
  group_normalize_kernel<<<blocks_for(G), kThreads, 0, s>>>(x, T, offsets, G, eps, unbiased, out);
  return last_error();
}

int device_count(int* count) {
  *count = 0;
  return (int)cudaGetDeviceCount(count);
}

const char* cuda_error_string(int code) { return cudaGetErrorString((cudaError_t)code); }

}  // namespace cuda
}  // namespace lrm
