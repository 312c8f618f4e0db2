// PRM head op on the CPU: a fused gather + dot + softmax over C candidate rows
// (see prm_head.h). One pass over the positions; each gathered hidden row (d floats) is streamed
// from memory once and dotted with up to kRowGroup head rows at a time while it sits in L1, so
// the cost is P * d floats read (plus the C x d head, cache resident) instead of the P x V x d
// of full-vocabulary logits.
#include "cpu/prm_head.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace lrm {
namespace cpu {
namespace {

constexpr int kLanes = 16;     // independent partial sums per dot (vectorisable without -ffast-math)
constexpr int kRowGroup = 4;   // head rows dotted per pass over a hidden row
constexpr int64_t kPosBlock = 8;  // positions per block (their scores stay in a small buffer)

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define LRM_PRM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LRM_PRM_CLONES
#endif

// acc[r] = dot(h, w_r) for r < R; the head rows are `d` floats apart. kLanes independent partial
// sums per row (so the compiler vectorises without reassociating: -fno-fast-math), reduced
// pairwise at the end, plus a scalar tail.
template <int R>
inline void dot_rows_t(const float* __restrict h, const float* __restrict w, int64_t d,
                       float* __restrict acc) {
  float lanes[R][kLanes] = {};
  const int64_t dv = d - d % kLanes;
  for (int64_t i = 0; i < dv; i += kLanes) {
    for (int r = 0; r < R; ++r) {
      const float* wr = w + r * d + i;
      for (int l = 0; l < kLanes; ++l) lanes[r][l] += h[i + l] * wr[l];
    }
  }
  for (int r = 0; r < R; ++r) {
    const float* wr = w + r * d;
    float tail = 0.f;
    for (int64_t i = dv; i < d; ++i) tail += h[i] * wr[i];
    float s[kLanes];
    for (int l = 0; l < kLanes; ++l) s[l] = lanes[r][l];
    for (int width = kLanes / 2; width >= 1; width /= 2)
      for (int l = 0; l < width; ++l) s[l] += s[l + width];
    acc[r] = s[0] + tail;
  }
}

// Scores of one gathered hidden row against all C head rows, kRowGroup rows per pass.
LRM_PRM_CLONES
void dot_all_rows(const float* __restrict h, const float* __restrict w, int64_t d, int64_t C,
                  float* __restrict acc) {
  int64_t c0 = 0;
  for (; c0 + kRowGroup <= C; c0 += kRowGroup) dot_rows_t<kRowGroup>(h, w + c0 * d, d, acc + c0);
  switch (C - c0) {
    case 3: dot_rows_t<3>(h, w + c0 * d, d, acc + c0); break;
    case 2: dot_rows_t<2>(h, w + c0 * d, d, acc + c0); break;
    case 1: dot_rows_t<1>(h, w + c0 * d, d, acc + c0); break;
    default: break;
  }
}

// In-place softmax of C logits (max-subtracted, like torch.softmax).
inline void softmax_row(float* x, int64_t C) {
  float m = x[0];
  for (int64_t c = 1; c < C; ++c) m = std::max(m, x[c]);
  float sum = 0.f;
  for (int64_t c = 0; c < C; ++c) {
    x[c] = std::exp(x[c] - m);
    sum += x[c];
  }
  const float inv = 1.f / sum;
  for (int64_t c = 0; c < C; ++c) x[c] *= inv;
}

}  // namespace

int prm_head_scores(const float* hidden, int64_t T, int64_t d, int64_t hidden_row_stride,
                    const int64_t* positions, int64_t P, const float* weight, const float* bias,
                    int64_t C, float* out) {
  if (C < 1 || d < 0 || P < 0 || T < 0 || hidden_row_stride < d) return kPrmBadShape;
  for (int64_t p = 0; p < P; ++p)
    if (positions[p] < 0 || positions[p] >= T) return kPrmBadPosition;

  std::vector<float> buf(static_cast<size_t>(kPosBlock * C));
  for (int64_t p0 = 0; p0 < P; p0 += kPosBlock) {
    const int64_t pn = std::min(kPosBlock, P - p0);
    for (int64_t j = 0; j < pn; ++j) {
      const float* h = hidden + positions[p0 + j] * hidden_row_stride;
      float* row = buf.data() + j * C;
      dot_all_rows(h, weight, d, C, row);
      if (bias != nullptr)
        for (int64_t c = 0; c < C; ++c) row[c] += bias[c];
      softmax_row(row, C);
    }
    std::copy(buf.begin(), buf.begin() + pn * C, out + p0 * C);
  }
  return kPrmOk;
}

const char* prm_head_status_message(int status) {
  switch (status) {
    case kPrmOk:
      return "ok";
    case kPrmBadPosition:
      return "a step position is outside [0, T) of the hidden states";
    case kPrmBadShape:
      return "bad sizes (need C >= 1, d >= 0, P >= 0, T >= 0 and a hidden row stride >= d)";
    default:
      return "unknown error";
  }
}

}  // namespace cpu
}  // namespace lrm
