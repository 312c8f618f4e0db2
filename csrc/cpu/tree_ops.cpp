// C++ CPU kernels of the tree ops: single-threaded loops over trees / rows / segments (the B
// trees of a batch are independent; the work per call is tens of microseconds for the
// benchmark's B=256, far below what waking threads would cost), deterministic by construction.
#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_ops.h"
#include "lrm/reduce_ops.h"
#include "lrm/tree_ops.h"

namespace lrm {
namespace cpu {

namespace {
// Per-thread tables of pb_c(n), sqrt(n), log(max(n, 1)) for the integer visit counts met so far
// (see SelectParams), grown on demand and rebuilt when c1 / c2 change.
struct SelectTables {
  double c1 = nan_d(), c2 = nan_d();
  std::vector<double> pb, sq, lg;
};
constexpr int64_t kMaxTable = int64_t(1) << 20;

void attach_tables(const TreeView& t, int K, SelectParams& p) {
  static thread_local SelectTables tab;
  // Largest effective visit count of this call: a root's visits plus its virtual visits (< K).
  int64_t need = 0;
  for (int64_t b = 0; b < t.B; ++b) {
    const int64_t v = t.visit_count[b * t.N + kRoot];
    if (v > need) need = v;
  }
  need = need + K + 1;
  if (need > kMaxTable) need = kMaxTable;
  // Compare bit patterns so that NaN parameters also match themselves.
  if (std::memcmp(&tab.c1, &p.c1, sizeof(double)) != 0 || std::memcmp(&tab.c2, &p.c2, sizeof(double)) != 0) {
    tab.c1 = p.c1;
    tab.c2 = p.c2;
    tab.pb.clear();
    tab.sq.clear();
    tab.lg.clear();
  }
  for (int64_t n = (int64_t)tab.pb.size(); n < need; ++n) {
    const double x = (double)n;
    tab.pb.push_back(puct_pb_c(x, p.c1, p.c2));
    tab.sq.push_back(sqrt(x));
    tab.lg.push_back(uct_log_n(x));
  }
  p.pb_table = tab.pb.data();
  p.sqrt_table = tab.sq.data();
  p.log_table = tab.lg.data();
  p.table_size = (int64_t)tab.pb.size();
}
}  // namespace

int select(const TreeView& t, int K, const SelectParams& params, int32_t* out_node, int32_t* out_action) {
  SelectParams p = params;
  attach_tables(t, K, p);
  int status = kOk;
  for (int64_t b = 0; b < t.B; ++b) {
    const int s = select_tree(t, b, K, p, out_node + b * K, out_action + b * K);
    if (s != kOk && status == kOk) status = s;
  }
  return status;
}

int expand(const TreeView& t, int K, const int32_t* leaf_node, const int32_t* leaf_action,
           const float* child_prior, const uint8_t* terminal, int32_t* new_node) {
  for (int64_t b = 0; b < t.B; ++b) {
    const int s = expand_check(t, b, K, leaf_node + b * K, leaf_action + b * K);
    if (s != kOk) return s;
  }
  for (int64_t b = 0; b < t.B; ++b)
    expand_tree(t, b, K, leaf_node + b * K, leaf_action + b * K, child_prior + b * K * t.A,
                terminal ? terminal + b * K : nullptr, new_node + b * K);
  return kOk;
}

int backup(const TreeView& t, int K, const int32_t* nodes, const float* values,
           const float* step_scores, float discount) {
  const int st = backup_check(t, t.B * K, nodes);
  if (st != kOk) return st;
  for (int64_t b = 0; b < t.B; ++b)
    backup_tree(t, b, K, nodes + b * K, values + b * K, step_scores ? step_scores + b * K : nullptr,
                discount);
  return kOk;
}

int topk_per_tree(const float* scores, const uint8_t* valid, int64_t B, int64_t M, int64_t k,
                  float* out_v, int32_t* out_i) {
  if (k <= 4 || M <= 16) {
    for (int64_t b = 0; b < B; ++b)
      topk_row_select(scores + b * M, valid ? valid + b * M : nullptr, M, k, out_v + b * k,
                      out_i + b * k);
    return kOk;
  }
  const int64_t kk = std::min(k, M);
  std::vector<TopkKey> keys((size_t)M);
  for (int64_t b = 0; b < B; ++b) {
    const float* s = scores + b * M;
    const uint8_t* v = valid ? valid + b * M : nullptr;
    for (int64_t i = 0; i < M; ++i) keys[(size_t)i] = topk_key(s, v, i);
    std::partial_sort(keys.begin(), keys.begin() + kk, keys.end(),
                      [](const TopkKey& x, const TopkKey& y) { return topk_before(x, y); });
    for (int64_t j = 0; j < k; ++j) {
      if (j < kk) {
        topk_write(keys[(size_t)j], out_v + b * k + j, out_i + b * k + j);
      } else {
        out_v[b * k + j] = -inf_f();
        out_i[b * k + j] = -1;
      }
    }
  }
  return kOk;
}

static int check_offsets(const int64_t* offsets, int64_t S, int64_t T) {
  if (offsets[0] < 0 || offsets[S] > T) return kBadOffsets;
  for (int64_t s = 0; s < S; ++s)
    if (offsets[s + 1] < offsets[s]) return kBadOffsets;
  return kOk;
}

int segment_reduce(const float* values, int64_t T, const int64_t* offsets, int64_t S, int op,
                   float* out) {
  const int st = check_offsets(offsets, S, T);
  if (st != kOk) return st;
  for (int64_t s = 0; s < S; ++s) out[s] = segment_reduce_one(values, offsets[s], offsets[s + 1], op);
  return kOk;
}

int group_normalize(const float* x, int64_t T, const int64_t* offsets, int64_t G, float eps,
                    bool unbiased, float* out) {
  const int st = check_offsets(offsets, G, T);
  if (st != kOk) return st;
  // Elements outside [offsets[0], offsets[G]) are copied unchanged.
  if (offsets[0] > 0) std::memcpy(out, x, sizeof(float) * (size_t)offsets[0]);
  if (offsets[G] < T) std::memcpy(out + offsets[G], x + offsets[G], sizeof(float) * (size_t)(T - offsets[G]));
  for (int64_t g = 0; g < G; ++g) group_normalize_one(x, offsets[g], offsets[g + 1], eps, unbiased, out);
  return kOk;
}

}  // namespace cpu
}  // namespace lrm
