// The C++ CPU kernels: loops over trees / rows / segments around the framework-free logic of
// include/lrm/. Every function returns a lrm::Status (0 = ok); on an error nothing was written
// (select / segment ops) or the check ran before any write (expand / backup).
#pragma once

#include <cstdint>

#include "lrm/common.h"

namespace lrm {
namespace cpu {

int select(const TreeView& t, int K, const SelectParams& p, int32_t* out_node, int32_t* out_action);
int expand(const TreeView& t, int K, const int32_t* leaf_node, const int32_t* leaf_action,
           const float* child_prior, const uint8_t* terminal, int32_t* new_node);
int backup(const TreeView& t, int K, const int32_t* nodes, const float* values,
           const float* step_scores, float discount);
int topk_per_tree(const float* scores, const uint8_t* valid, int64_t B, int64_t M, int64_t k,
                  float* out_v, int32_t* out_i);
int segment_reduce(const float* values, int64_t T, const int64_t* offsets, int64_t S, int op,
                   float* out);
int group_normalize(const float* x, int64_t T, const int64_t* offsets, int64_t G, float eps,
                    bool unbiased, float* out);

}  // namespace cpu
}  // namespace lrm
