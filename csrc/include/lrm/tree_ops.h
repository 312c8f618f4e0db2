// Per-tree logic of the search-tree ops select / expand / backup, usable from host code (the
// C++ CPU kernels loop over trees) and device code (the CUDA kernels run one thread per tree).
// The specification is lrm_engine/ops/reference.py; this file follows it operation by operation
// so that indices agree bit for bit and floats agree to the last bit wherever the math library
// agrees (select: float64; backup: float32 in k order).
#pragma once

#include <math.h>

#include "lrm/common.h"

namespace lrm {

// ------------------------------------------------------------------------------------ select
// Pending (node, action) pairs among the earlier leaves j < k of this call, for tree row
// out_node / out_action (each [K] for this tree).
LRM_HD inline int64_t count_pending(const int32_t* out_node, const int32_t* out_action, int k,
                                    int32_t node, int32_t action) {
  int64_t p = 0;
  for (int j = 0; j < k; ++j) p += (out_node[j] == node && out_action[j] == action) ? 1 : 0;
  return p;
}

// Effective visits / value sum of action a of node n (child or pending pair), this call.
// For the first leaf (k == 0) every virtual visit is 0, so the workspace is not read:
// visits + 0.0 == visits and sum - vl * 0.0 == sum - vl0 exactly (vl0 = vl * 0.0).
template <bool kFirst>
LRM_HD inline void child_stats(const TreeView& t, int64_t row, const int32_t* child, const int32_t* vv,
                               int k, const int32_t* out_node, const int32_t* out_action, int32_t n,
                               int64_t a, double vl, double vl0, double& c_vis, double& c_sum) {
  const int32_t c = child[a];
  if (kFirst) {
    c_vis = c >= 0 ? (double)t.visit_count[row + c] : 0.0;
    c_sum = c >= 0 ? (double)t.value_sum[row + c] - vl0 : 0.0;
    return;
  }
  if (c >= 0) {
    c_vis = (double)t.visit_count[row + c] + (double)vv[c];
    c_sum = (double)t.value_sum[row + c] - vl * (double)vv[c];
  } else {
    const double pend = k > 0 ? (double)count_pending(out_node, out_action, k, n, (int32_t)a) : 0.0;
    c_vis = pend;
    c_sum = -vl * pend;
  }
}

// Per-action statistics kept in registers / local memory for up to kLocalActions actions;
// wider nodes recompute them in the second pass (same values, same arithmetic).
constexpr int kLocalActions = 32;

// One descent step at node n of tree b: the chosen action (argmax of the rule's score, ties to
// the lowest index, NaN counts as the maximum like torch.argmax), or kNoAction when n is terminal
// or has no valid action.
template <bool kBuffered, bool kFirst>
LRM_HD inline int32_t select_action_impl(const TreeView& t, int64_t b, int32_t n, int k,
                                         const int32_t* out_node, const int32_t* out_action,
                                         const SelectParams& p) {
  const int64_t A = t.A, N = t.N;
  const int64_t row = b * N;
  if (t.terminal[row + n]) return kNoAction;
  const float* prior = t.children_prior + (row + n) * A;
  const int32_t* child = t.children_index + (row + n) * A;
  const int32_t* vv = t.vvisit + row;
  const double vl = p.virtual_loss;
  const bool puct = p.rule == kPuct;
  double cv_buf[kBuffered ? kLocalActions : 1];
  double q_buf[kBuffered ? kLocalActions : 1];

  const double vl0 = vl * 0.0;
  const double n_vis = kFirst ? (double)t.visit_count[row + n] : (double)t.visit_count[row + n] + (double)vv[n];
  const double n_sum = (double)t.value_sum[row + n] - (kFirst ? vl0 : vl * (double)vv[n]);

  // Pass 1: validity; PUCT: min / max of q over visited valid children and the node's value.
  bool any_valid = false;
  double qmin = inf_d(), qmax = -inf_d();
  for (int64_t a = 0; a < A; ++a) {
    const bool valid = (double)prior[a] >= 0.0;
    any_valid |= valid;
    if (!kBuffered && !(puct && valid)) continue;
    double c_vis, c_sum;
    child_stats<kFirst>(t, row, child, vv, k, out_node, out_action, n, a, vl, vl0, c_vis, c_sum);
    const double q = c_vis > 0.0 ? c_sum / c_vis : 0.0;
    if (kBuffered) {
      cv_buf[a] = c_vis;
      q_buf[a] = q;
    }
    if (puct && valid && c_vis > 0.0) {
      qmin = nan_min(qmin, q);
      qmax = nan_max(qmax, q);
    }
  }
  if (!any_valid) return kNoAction;

  // Pass 2: scores and argmax.
  double lo = 0.0, range = 0.0, sqrt_n = 0.0, pb_c = 0.0, log_n = 0.0;
  if (puct) {
    const double v_n = n_vis > 0.0 ? n_sum / n_vis : 0.0;
    lo = nan_min(v_n, qmin);
    const double hi = nan_max(v_n, qmax);
    range = hi - lo;
    range = range < 1e-8 ? 1e-8 : range;  // torch.clamp(min=1e-8); NaN stays NaN
  }
  // n_vis is a sum of two int32 counts: an exact integer, a valid table index when in range.
  const bool tabled = n_vis >= 0.0 && n_vis < (double)p.table_size;
  const int64_t ni = tabled ? (int64_t)n_vis : 0;
  if (puct) {
    sqrt_n = tabled ? p.sqrt_table[ni] : sqrt(n_vis);
    pb_c = tabled ? p.pb_table[ni] : puct_pb_c(n_vis, p.c1, p.c2);
  } else {
    log_n = tabled ? p.log_table[ni] : uct_log_n(n_vis);
  }
  int32_t best = 0;
  double best_score = 0.0;
  for (int64_t a = 0; a < A; ++a) {
    const double pr = (double)prior[a];
    double score;
    if (!(pr >= 0.0)) {
      score = -inf_d();
    } else {
      double c_vis, q;
      if (kBuffered) {
        c_vis = cv_buf[a];
        q = q_buf[a];
      } else {
        double c_sum;
        child_stats<kFirst>(t, row, child, vv, k, out_node, out_action, n, a, vl, vl0, c_vis, c_sum);
        q = c_vis > 0.0 ? c_sum / c_vis : 0.0;
      }
      const bool visited = c_vis > 0.0;
      if (puct) {
        // Unvisited: qhat = 0 and n_a + 1 = 1, and 0 + x / 1 == x exactly (up to the sign of a
        // zero, which argmax cannot see), so the two divisions are skipped.
        score = visited ? (q - lo) / range + pr * sqrt_n * pb_c / (c_vis + 1.0) : pr * sqrt_n * pb_c;
      } else {
        score = visited ? q + p.uct_c * sqrt(log_n / c_vis) : inf_d();
      }
    }
    if (a == 0) {
      best_score = score;
      if (is_nan(score)) return 0;
    } else {
      if (is_nan(score)) return (int32_t)a;  // torch.argmax: the first NaN is the maximum
      if (score > best_score) {
        best_score = score;
        best = (int32_t)a;
      }
    }
  }
  return best;
}

LRM_HD inline int32_t select_action(const TreeView& t, int64_t b, int32_t n, int k,
                                    const int32_t* out_node, const int32_t* out_action,
                                    const SelectParams& p) {
  if (t.A <= kLocalActions) {
    if (k == 0) return select_action_impl<true, true>(t, b, n, k, out_node, out_action, p);
    return select_action_impl<true, false>(t, b, n, k, out_node, out_action, p);
  }
  if (k == 0) return select_action_impl<false, true>(t, b, n, k, out_node, out_action, p);
  return select_action_impl<false, false>(t, b, n, k, out_node, out_action, p);
}

// K leaves of tree b: writes out_node[k], out_action[k] (this tree's row, [K] each).
// Uses t.vvisit[b] as the virtual-visit workspace and leaves it all zeros again.
LRM_HD inline int select_tree(const TreeView& t, int64_t b, int K, const SelectParams& p,
                              int32_t* out_node, int32_t* out_action) {
  const int64_t N = t.N, A = t.A;
  const int64_t row = b * N;
  int32_t* vv = t.vvisit + row;
  int status = kOk;
  int k = 0;
  for (; k < K; ++k) {
    int32_t n = kRoot;
    int32_t act = kNoAction;
    for (int64_t steps = 0;; ++steps) {
      if (steps > N) { status = kCorruptTree; break; }
      const int32_t a = select_action(t, b, n, k, out_node, out_action, p);
      if (a == kNoAction) break;
      const int32_t c = t.children_index[(row + n) * A + a];
      if (c < 0) { act = a; break; }
      if (c >= N) { status = kCorruptTree; break; }
      n = c;
    }
    out_node[k] = n;
    out_action[k] = act;
    if (status != kOk) break;
    // Virtual visits on the path leaf -> root (not needed after the last leaf).
    if (k + 1 < K) {
      int64_t steps = 0;
      for (int32_t m = n; m >= 0 && m < N && steps <= N; m = t.parent[row + m], ++steps) vv[m] += 1;
    }
  }
  // Zero the workspace back along the recorded paths.
  const int last = (status != kOk) ? k + 1 : K - 1;  // paths that received virtual visits
  for (int j = 0; j < last && j < K; ++j) {
    int64_t steps = 0;
    for (int32_t m = out_node[j]; m >= 0 && m < N && steps <= N; m = t.parent[row + m], ++steps) vv[m] = 0;
  }
  if (status != kOk) {
    for (int j = k; j < K; ++j) { out_node[j] = kNoParent; out_action[j] = kNoAction; }
  }
  return status;
}

// ------------------------------------------------------------------------------------ expand
// Checks tree b's leaves [K] before anything is written: indices in range and enough free slots.
LRM_HD inline int expand_check(const TreeView& t, int64_t b, int K, const int32_t* leaf_node,
                               const int32_t* leaf_action) {
  const int64_t N = t.N, A = t.A, row = b * N;
  for (int k = 0; k < K; ++k) {
    if (leaf_node[k] >= N) return kBadNodeIndex;
    if (leaf_action[k] >= A) return kBadActionIndex;
  }
  const int64_t nn = t.num_nodes[b];
  if (nn + K <= N) return kOk;
  // Tight count: distinct (node, action) pairs that have no child yet.
  int64_t fresh = 0;
  for (int k = 0; k < K; ++k) {
    const int32_t n = leaf_node[k], a = leaf_action[k];
    if (n < 0 || a < 0) continue;
    if (t.children_index[(row + n) * A + a] >= 0) continue;
    bool dup = false;
    for (int j = 0; j < k && !dup; ++j) dup = (leaf_node[j] == n && leaf_action[j] == a);
    fresh += dup ? 0 : 1;
  }
  return nn + fresh <= N ? kOk : kCapacity;
}

// Creates the children of tree b's leaves; writes new_node [K]. child_prior: this tree's
// [K, A] block; terminal: this tree's [K] (or nullptr = all false). Call expand_check first.
LRM_HD inline void expand_tree(const TreeView& t, int64_t b, int K, const int32_t* leaf_node,
                               const int32_t* leaf_action, const float* child_prior,
                               const uint8_t* terminal, int32_t* new_node) {
  const int64_t N = t.N, A = t.A, row = b * N;
  for (int k = 0; k < K; ++k) {
    const int32_t n = leaf_node[k], a = leaf_action[k];
    if (n < 0 || a < 0) { new_node[k] = kNoParent; continue; }
    int32_t* slot = t.children_index + (row + n) * A + a;
    if (*slot >= 0) { new_node[k] = *slot; continue; }
    const int32_t c = t.num_nodes[b];
    if (c >= N) { new_node[k] = kNoParent; continue; }  // unreachable after expand_check
    t.parent[row + c] = n;
    t.action_from_parent[row + c] = a;
    t.depth[row + c] = t.depth[row + n] + 1;
    *slot = c;
    int32_t* cc = t.children_index + (row + c) * A;
    float* cp = t.children_prior + (row + c) * A;
    const float* src = child_prior + (int64_t)k * A;
    for (int64_t i = 0; i < A; ++i) { cc[i] = kUnvisited; cp[i] = src[i]; }
    t.visit_count[row + c] = 0;
    t.value_sum[row + c] = 0.0f;
    t.terminal[row + c] = (terminal != nullptr && terminal[k]) ? 1 : 0;
    t.num_nodes[b] = c + 1;
    new_node[k] = c;
  }
}

// ------------------------------------------------------------------------------------ backup
// Checks count node indices (every tree's row) before anything is written.
LRM_HD inline int backup_check(const TreeView& t, int64_t count, const int32_t* nodes) {
  for (int64_t k = 0; k < count; ++k)
    if (nodes[k] >= t.N) return kBadNodeIndex;
  return kOk;
}

// Backs up tree b: nodes, values, step_scores (nullptr = none) are this tree's rows [K].
LRM_HD inline void backup_tree(const TreeView& t, int64_t b, int K, const int32_t* nodes,
                               const float* values, const float* step_scores, float discount) {
  const int64_t N = t.N, row = b * N;
  for (int k = 0; k < K; ++k) {
    const int32_t m = nodes[k];
    if (m < 0 || m >= N) continue;
    if (step_scores != nullptr) {
      const float s = step_scores[k];
      const int32_t par = t.parent[row + m];
      if (!is_nanf(s) && par >= 0) {
        t.step_score[row + m] = s;
        t.path_min[row + m] = nan_minf(t.path_min[row + par], s);
        t.path_sum[row + m] = t.path_sum[row + par] + s;
        t.path_sum_log[row + m] = t.path_sum_log[row + par] + logf(s);
        t.path_last[row + m] = s;
        t.path_len[row + m] = t.path_len[row + par] + 1;
      }
    }
    float v = values[k];
    int64_t steps = 0;
    for (int32_t n = m; n >= 0 && n < N && steps <= N; n = t.parent[row + n], ++steps) {
      t.visit_count[row + n] += 1;
      t.value_sum[row + n] += v;
      v = v * discount;
    }
  }
}

}  // namespace lrm
