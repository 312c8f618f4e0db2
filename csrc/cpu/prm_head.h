// PRM head op (CPU): softmax over C candidate rows of a head at gathered step positions.
//
//   probs[p, c] = softmax_c( dot(hidden[positions[p]], weight[c]) + bias[c] )
//
// Never forms full-vocabulary logits: only the C rows of the LM head (token-logit PRM, e.g. the
// good/bad tokens' rows) or of a small classification head are read. Framework-free: raw
// pointers into row-major float32 buffers. Semantics: lrm_engine/ops/prm_head.py (reference).
#pragma once

#include <cstdint>

namespace lrm {
namespace cpu {

// Status codes of prm_head_scores (0 = ok; nothing is written on an error).
enum PrmHeadStatus : int {
  kPrmOk = 0,
  kPrmBadPosition = 1,  // a position outside [0, T)
  kPrmBadShape = 2,     // C < 1, d < 0, P < 0, T < 0 or hidden_row_stride < d
};

// hidden: T rows of d floats, row r at hidden + r * hidden_row_stride (the row itself contiguous).
// positions: P int64 row indices into hidden. weight: [C, d] contiguous. bias: [C] or nullptr.
// out: [P, C] contiguous float32.
int prm_head_scores(const float* hidden, int64_t T, int64_t d, int64_t hidden_row_stride,
                    const int64_t* positions, int64_t P, const float* weight, const float* bias,
                    int64_t C, float* out);

const char* prm_head_status_message(int status);

}  // namespace cpu
}  // namespace lrm
