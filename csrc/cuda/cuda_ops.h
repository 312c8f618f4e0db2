// Host-side launchers of the CUDA kernels (csrc/cuda/tree_ops.cu). All pointers are device
// pointers on CUDA device `device`; `stream` is a cudaStream_t of that device passed as an
// integer (0 = the legacy default stream).
// Each launcher returns 0 or a cudaError_t code (see cuda_error_string). Launches are
// asynchronous; the kernels cannot raise, so input errors are handled in the kernels:
//   select  a corrupt tree (child index out of range, cycle) ends that leaf with (-1, -1);
//   expand  a tree whose leaves hold an index out of range or need more slots than it has is
//           left unchanged and its new_node row is all -1 (check capacity first);
//   backup  node indices out of range are skipped;
//   segment ops: a segment whose offsets are out of order or out of [0, T] gives NaN.
#pragma once

#include <cstdint>

#include "lrm/common.h"

namespace lrm {
namespace cuda {

int select(const TreeView& t, int K, const SelectParams& p, int32_t* out_node, int32_t* out_action,
           uintptr_t stream, int device);
int expand(const TreeView& t, int K, const int32_t* leaf_node, const int32_t* leaf_action,
           const float* child_prior, const uint8_t* terminal, int32_t* new_node, uintptr_t stream, int device);
int backup(const TreeView& t, int K, const int32_t* nodes, const float* values,
           const float* step_scores, float discount, uintptr_t stream, int device);
int topk_per_tree(const float* scores, const uint8_t* valid, int64_t B, int64_t M, int64_t k,
                  float* out_v, int32_t* out_i, uintptr_t stream, int device);
int segment_reduce(const float* values, int64_t T, const int64_t* offsets, int64_t S, int op,
                   float* out, uintptr_t stream, int device);
int group_normalize(const float* x, int64_t T, const int64_t* offsets, int64_t G, float eps,
                    bool unbiased, float* out, uintptr_t stream, int device);

// Runtime checks for the Python side.
int device_count(int* count);
const char* cuda_error_string(int code);

}  // namespace cuda
}  // namespace lrm
