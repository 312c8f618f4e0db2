// C++ CPU kernels of the tree ops: single-threaded loops over trees / rows / segments (the B
// trees of a batch are independent; the work per call is tens of microseconds for the
// benchmark's B=256, far below what waking threads would cost), deterministic by construction.
// select has an AVX2 path for K == 1, PUCT, A == 8 (runtime-dispatched, same results; below).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>  // the AVX2 select path below (compiled with a target attribute)
#endif

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


// ------------------------------------------------------------------ select: AVX2 fast path
// The benchmark's case and MCTS's common one: one leaf per tree (K == 1), PUCT, A == 8. The
// first leaf of a call sees no virtual visits and no pending pairs, so a descent step reads
// only the tree. One step below does select_action_impl<true, true>'s work on all 8 actions at
// once (two 4-double vectors), with the same IEEE operations on the same operands in the same
// order inside every expression, so each score is bit-identical; the min / max over the
// visited children and the argmax are exact for any order once NaN is ruled out, and any NaN
// (a NaN score, prior or value) sends that step to the scalar code, which defines the NaN
// rules. No data-dependent branch is left in a step, so the descents of kSlots trees are
// interleaved: each slot descends one tree and takes the next tree when its own is done, and
// the independent dependency chains (loads, divisions, reductions) overlap in the core.
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define LRM_HAVE_AVX2_PATH 1

namespace {
constexpr int kSlots = 8;

#define LRM_AVX2 __attribute__((target("avx2")))

// Horizontal min / max of 4 doubles (no NaN reaches them where their result is used).
LRM_AVX2 inline double hmin4(__m256d v) {
  __m128d lo = _mm256_castpd256_pd128(v), hi = _mm256_extractf128_pd(v, 1);
  __m128d m = _mm_min_pd(lo, hi);
  return _mm_cvtsd_f64(_mm_min_sd(m, _mm_unpackhi_pd(m, m)));
}
LRM_AVX2 inline double hmax4(__m256d v) {
  __m128d lo = _mm256_castpd256_pd128(v), hi = _mm256_extractf128_pd(v, 1);
  __m128d m = _mm_max_pd(lo, hi);
  return _mm_cvtsd_f64(_mm_max_sd(m, _mm_unpackhi_pd(m, m)));
}

// One step at node n of tree b (row = b * N): the chosen action, kNoAction, or -2 = "use the
// scalar code" (a NaN somewhere).
LRM_AVX2 inline int32_t puct_step8(const TreeView& t, int64_t row, int32_t n, const SelectParams& p,
                                   double vl0) {
  if (t.terminal[row + n]) return kNoAction;
  const int32_t* vc = t.visit_count + row;
  const float* vs = t.value_sum + row;
  const __m256i child = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.children_index + (row + n) * 8));
  const __m256 prf = _mm256_loadu_ps(t.children_prior + (row + n) * 8);
  const __m256d zero = _mm256_setzero_pd();
  const __m256d pr0 = _mm256_cvtps_pd(_mm256_castps256_ps128(prf));
  const __m256d pr1 = _mm256_cvtps_pd(_mm256_extractf128_ps(prf, 1));
  const __m256d valid0 = _mm256_cmp_pd(pr0, zero, _CMP_GE_OQ);  // (double)prior >= 0.0
  const __m256d valid1 = _mm256_cmp_pd(pr1, zero, _CMP_GE_OQ);
  const int vmask = _mm256_movemask_pd(valid0) | (_mm256_movemask_pd(valid1) << 4);
  if (vmask == 0) return kNoAction;
  // Expanded children: c >= 0; their visits / value sums (index 0 for the others, masked out).
  const __m256i expanded = _mm256_cmpgt_epi32(child, _mm256_set1_epi32(-1));
  const __m256i cc = _mm256_and_si256(child, expanded);
  const __m256i vis_i = _mm256_and_si256(_mm256_i32gather_epi32(vc, cc, 4), expanded);
  const __m256 sum_f = _mm256_i32gather_ps(vs, cc, 4);
  const __m256d e0 = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(expanded)));
  const __m256d e1 = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_extracti128_si256(expanded, 1)));
  // c_vis = expanded ? (double)visits : 0.0 (the masked integer is 0 -> 0.0).
  const __m256d cv0 = _mm256_cvtepi32_pd(_mm256_castsi256_si128(vis_i));
  const __m256d cv1 = _mm256_cvtepi32_pd(_mm256_extracti128_si256(vis_i, 1));
  // c_sum = expanded ? (double)value_sum - vl0 : 0.0
  const __m256d vl0v = _mm256_set1_pd(vl0);
  const __m256d cs0 = _mm256_and_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(sum_f)), vl0v), e0);
  const __m256d cs1 = _mm256_and_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(sum_f, 1)), vl0v), e1);
  // q = c_vis > 0 ? c_sum / c_vis : 0.0
  const __m256d vis0 = _mm256_cmp_pd(cv0, zero, _CMP_GT_OQ);
  const __m256d vis1 = _mm256_cmp_pd(cv1, zero, _CMP_GT_OQ);
  const __m256d one = _mm256_set1_pd(1.0);
  const __m256d q0 = _mm256_and_pd(_mm256_div_pd(cs0, _mm256_blendv_pd(one, cv0, vis0)), vis0);
  const __m256d q1 = _mm256_and_pd(_mm256_div_pd(cs1, _mm256_blendv_pd(one, cv1, vis1)), vis1);
  // min / max of q over the valid visited children (exact in any order without NaN; a NaN q
  // there makes its own score NaN below, which sends the step to the scalar code).
  const __m256d m0 = _mm256_and_pd(valid0, vis0), m1 = _mm256_and_pd(valid1, vis1);
  const __m256d pinf = _mm256_set1_pd(inf_d()), ninf = _mm256_set1_pd(-inf_d());
  const double qmin = hmin4(_mm256_min_pd(_mm256_blendv_pd(pinf, q0, m0), _mm256_blendv_pd(pinf, q1, m1)));
  const double qmax = hmax4(_mm256_max_pd(_mm256_blendv_pd(ninf, q0, m0), _mm256_blendv_pd(ninf, q1, m1)));
  // The node's own value and the constants: the scalar code's expressions.
  const double n_vis = (double)vc[n];
  const double n_sum = (double)vs[n] - vl0;
  const double v_n = n_vis > 0.0 ? n_sum / n_vis : 0.0;
  const double lo = nan_min(v_n, qmin);
  const double hi = nan_max(v_n, qmax);
  double range = hi - lo;
  range = range < 1e-8 ? 1e-8 : range;
  const bool tabled = n_vis >= 0.0 && n_vis < (double)p.table_size;
  const int64_t ni = tabled ? (int64_t)n_vis : 0;
  const double sqrt_n = tabled ? p.sqrt_table[ni] : sqrt(n_vis);
  const double pb_c = tabled ? p.pb_table[ni] : puct_pb_c(n_vis, p.c1, p.c2);
  // score = visited ? (q - lo) / range + pr * sqrt_n * pb_c / (c_vis + 1.0) : pr * sqrt_n * pb_c;
  // invalid: -inf.
  const __m256d sq = _mm256_set1_pd(sqrt_n), pb = _mm256_set1_pd(pb_c);
  const __m256d lov = _mm256_set1_pd(lo), rv = _mm256_set1_pd(range);
  const __m256d u0 = _mm256_mul_pd(_mm256_mul_pd(pr0, sq), pb);
  const __m256d u1 = _mm256_mul_pd(_mm256_mul_pd(pr1, sq), pb);
  const __m256d sv0 = _mm256_add_pd(_mm256_div_pd(_mm256_sub_pd(q0, lov), rv), _mm256_div_pd(u0, _mm256_add_pd(cv0, one)));
  const __m256d sv1 = _mm256_add_pd(_mm256_div_pd(_mm256_sub_pd(q1, lov), rv), _mm256_div_pd(u1, _mm256_add_pd(cv1, one)));
  const __m256d s0 = _mm256_blendv_pd(ninf, _mm256_blendv_pd(u0, sv0, vis0), valid0);
  const __m256d s1 = _mm256_blendv_pd(ninf, _mm256_blendv_pd(u1, sv1, vis1), valid1);
  const int nan_mask = _mm256_movemask_pd(_mm256_cmp_pd(s0, s0, _CMP_UNORD_Q)) |
                       _mm256_movemask_pd(_mm256_cmp_pd(s1, s1, _CMP_UNORD_Q));
  if (nan_mask) return -2;
  // argmax without NaN: the lowest index holding the maximum (== the scalar `>` scan).
  const double best = hmax4(_mm256_max_pd(s0, s1));
  const __m256d bv = _mm256_set1_pd(best);
  const int eq = _mm256_movemask_pd(_mm256_cmp_pd(s0, bv, _CMP_EQ_OQ)) |
                 (_mm256_movemask_pd(_mm256_cmp_pd(s1, bv, _CMP_EQ_OQ)) << 4);
  return (int32_t)__builtin_ctz((unsigned)eq);
}

LRM_AVX2 int select_first_leaf8_avx2(const TreeView& t, const SelectParams& p, int32_t* out_node,
                                     int32_t* out_action) {
  const int64_t B = t.B, N = t.N;
  const double vl0 = p.virtual_loss * 0.0;
  int status = kOk;
  int64_t tb[kSlots], steps[kSlots];
  int32_t tn[kSlots];
  int64_t next = 0;
  int active = 0;
  for (int g = 0; g < kSlots; ++g) {
    tb[g] = next < B ? next++ : -1;
    tn[g] = kRoot;
    steps[g] = 0;
    active += tb[g] >= 0;
  }
  while (active > 0) {
    for (int g = 0; g < kSlots; ++g) {
      const int64_t b = tb[g];
      if (b < 0) continue;
      const int64_t row = b * N;
      const int32_t n = tn[g];
      int32_t a = puct_step8(t, row, n, p, vl0);
      if (a == -2) a = select_action_impl<true, true>(t, b, n, 0, nullptr, nullptr, p);
      // The scalar select_tree's loop: `steps > N` is checked before each step.
      if (a != kNoAction) {
        const int32_t c = t.children_index[(row + n) * 8 + a];
        if (c >= 0 && c < N && steps[g] + 1 <= N) {
          tn[g] = c;
          steps[g] += 1;
          continue;
        }
        if (c >= N || (c >= 0 && steps[g] + 1 > N)) {
          status = kCorruptTree;
          out_node[b] = kNoParent;
          out_action[b] = kNoAction;
        } else {
          out_node[b] = n;
          out_action[b] = a;
        }
      } else {
        out_node[b] = n;
        out_action[b] = kNoAction;
      }
      tb[g] = next < B ? next++ : -1;
      tn[g] = kRoot;
      steps[g] = 0;
      active -= tb[g] < 0;
    }
  }
  return status;
}
}  // namespace
#endif

int select(const TreeView& t, int K, const SelectParams& params, int32_t* out_node, int32_t* out_action) {
  SelectParams p = params;
  attach_tables(t, K, p);
#ifdef LRM_HAVE_AVX2_PATH
  // LRM_ENGINE_SELECT_SCALAR=1 forces the scalar loop (same results; for A/B timings).
  static const bool use_avx2 = __builtin_cpu_supports("avx2") && !getenv("LRM_ENGINE_SELECT_SCALAR");
  if (use_avx2 && K == 1 && p.rule == kPuct && t.A == 8) return select_first_leaf8_avx2(t, p, out_node, out_action);
#endif
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
