// Per-row / per-segment logic of topk_per_tree, segment_reduce and group_normalize, usable from
// host and device code. Specification: lrm_engine/ops/reference.py. Float32 arithmetic, elements
// accumulated in index order (as torch's CPU index_add_ / scatter_reduce do).
#pragma once

#include <math.h>

#include "lrm/common.h"

namespace lrm {

// ------------------------------------------------------------------------------------ topk
// The order of topk_per_tree: valid entries first, then score descending, then index ascending.
// A strict total order on indices of one row, so every sorting method gives the same result.
struct TopkKey {
  bool ok;
  float key;  // score if ok, else -inf
  int64_t index;
};

LRM_HD inline TopkKey topk_key(const float* scores, const uint8_t* valid, int64_t i) {
  const float s = scores[i];
  const bool ok = !is_nanf(s) && (valid == nullptr || valid[i] != 0);
  return TopkKey{ok, ok ? s : -inf_f(), i};
}

// true if x comes before y
LRM_HD inline bool topk_before(const TopkKey& x, const TopkKey& y) {
  if (x.ok != y.ok) return x.ok;
  if (x.key > y.key) return true;
  if (y.key > x.key) return false;
  return x.index < y.index;
}

// Writes the padded output of one row from its first kk = min(k, M) entries in order.
LRM_HD inline void topk_write(const TopkKey& e, float* out_v, int32_t* out_i) {
  *out_v = e.ok ? e.key : -inf_f();
  *out_i = e.ok ? (int32_t)e.index : -1;
}

// One row by repeated selection, O(k * M), no scratch memory (device code / small k).
LRM_HD inline void topk_row_select(const float* scores, const uint8_t* valid, int64_t M, int64_t k,
                                   float* out_v, int32_t* out_i) {
  TopkKey prev{true, inf_f(), -1};
  bool have_prev = false;
  for (int64_t j = 0; j < k; ++j) {
    if (j >= M) {
      out_v[j] = -inf_f();
      out_i[j] = -1;
      continue;
    }
    bool found = false;
    TopkKey best{false, 0.0f, 0};
    for (int64_t i = 0; i < M; ++i) {
      const TopkKey e = topk_key(scores, valid, i);
      if (have_prev && !topk_before(prev, e)) continue;  // already taken
      if (!found || topk_before(e, best)) {
        best = e;
        found = true;
      }
    }
    topk_write(best, out_v + j, out_i + j);
    prev = best;
    have_prev = true;
  }
}

// ------------------------------------------------------------------------------------ segments
enum SegmentOp : int { kSegMin = 0, kSegMax = 1, kSegSum = 2, kSegMean = 3, kSegLast = 4, kSegProd = 5 };

LRM_HD inline float segment_reduce_one(const float* values, int64_t lo, int64_t hi, int op) {
  switch (op) {
    case kSegMin: {
      float r = inf_f();
      for (int64_t i = lo; i < hi; ++i) r = nan_minf(r, values[i]);
      return r;
    }
    case kSegMax: {
      float r = -inf_f();
      for (int64_t i = lo; i < hi; ++i) r = nan_maxf(r, values[i]);
      return r;
    }
    case kSegSum: {
      float r = 0.0f;
      for (int64_t i = lo; i < hi; ++i) r += values[i];
      return r;
    }
    case kSegMean: {
      if (hi <= lo) return nan_f();
      float r = 0.0f;
      for (int64_t i = lo; i < hi; ++i) r += values[i];
      return r / (float)(hi - lo);
    }
    case kSegLast:
      return hi > lo ? values[hi - 1] : nan_f();
    case kSegProd: {
      float r = 1.0f;
      for (int64_t i = lo; i < hi; ++i) r *= values[i];
      return r;
    }
  }
  return nan_f();
}

// ------------------------------------------------------------------------------------ groups
// (x - mean) / (std + eps) over x[lo, hi) into out[lo, hi). std unbiased (n - 1) unless
// unbiased is false (n); a group of one (or an empty one) has std 0.
LRM_HD inline void group_normalize_one(const float* x, int64_t lo, int64_t hi, float eps,
                                       bool unbiased, float* out) {
  const int64_t len = hi - lo;
  if (len <= 0) return;
  const float n = (float)len;
  float sum = 0.0f;
  for (int64_t i = lo; i < hi; ++i) sum += x[i];
  const float mean = sum / n;
  float std = 0.0f;
  if (len > 1) {
    float ss = 0.0f;
    for (int64_t i = lo; i < hi; ++i) {
      const float d = x[i] - mean;
      ss += d * d;
    }
    const float denom = unbiased ? n - 1.0f : n;
    std = sqrtf(ss / denom);
  }
  const float scale = std + eps;
  for (int64_t i = lo; i < hi; ++i) out[i] = (x[i] - mean) / scale;
}

}  // namespace lrm
