// Tree attention: queries of new tokens attend over the KV segments of their ancestor nodes.
// Framework-free (no torch, no pybind11): raw pointers into contiguous row-major buffers.
// The specification is lrm_engine/ops/tree_attention.py (`tree_attention_reference` and the
// pure-Python plan builder `build_plan_reference`, which build_plan below matches exactly).
//
// Layout
//   k_pool, v_pool [P, Hkv, D]; node n's segment is pool rows [seg_offset[n], seg_offset[n] + seg_len[n]).
//   q [Tq, Hq, D], Hq = Hkv * gs (GQA): query head h reads KV head h / gs.
//   Group g = the q_len[g] new tokens of one branch, q rows [q_indptr[g], q_indptr[g + 1]); they
//   are the LAST q_len[g] tokens of the segment of query_nodes[g] (their K/V already written).
//   Query j of group g sees every token of every ancestor segment, and token t of its own
//   segment iff t <= own_len - q_len + j.
//
// The plan (all int32 unless said otherwise)
//   per group (CSR, root -> leaf):  kv_indptr [G + 1], kv_seg [nnz]  (the chain ends with the
//                                    group's own node; empty segments are kept in the chain)
//   q_indptr [G + 1]
//   segment-major (a segment shared by many branches is read once for all of them):
//     chunks c = 0..C-1: every non-empty segment on the chain of some group with q_len > 0, in
//       ascending node order, split into n = ceil(len / chunk_size) near-equal chunks
//       (chunk i covers [i * len / n, (i + 1) * len / n)):
//       chunk_seg [C], chunk_start [C] (token offset in the segment), chunk_len [C]
//     entries e (CSR per chunk, groups ascending; groups with q_len == 0 omitted):
//       chunk_indptr [C + 1], chunk_groups [E]
//     partial rows r (the stacked queries): entry e owns rows [row_indptr[e], row_indptr[e + 1]),
//       one per query of its group:  row_indptr [E + 1]
//       row_q [R]     the q row of partial row r (q_indptr[g] + j)
//       row_limit [R] the query sees chunk tokens [0, row_limit) (chunk_len unless causal)
//     merge lists (CSR per group, chain order): merge_indptr [G + 1], merge_entries [E]
#pragma once

#include <cstdint>
#include <vector>

namespace lrm {

enum TreeAttentionStatus : int {
  kTaOk = 0,
  kTaBadParent = 1,      // a parent index outside [-1, N)
  kTaCycle = 2,          // the parent array has a cycle
  kTaBadQueryNode = 3,   // a query node outside [0, N)
  kTaBadQLen = 4,        // q_len < 0 or q_len > seg_len of the query node
  kTaBadSegLen = 5,      // a negative segment length
  kTaBadChunkSize = 6,   // chunk_size < 1
};

inline const char* tree_attention_status_message(int s) {
  switch (s) {
    case kTaOk: return "ok";
    case kTaBadParent: return "a parent index is outside [-1, N)";
    case kTaCycle: return "the parent array has a cycle";
    case kTaBadQueryNode: return "a query node is outside [0, N)";
    case kTaBadQLen: return "q_len must satisfy 0 <= q_len <= seg_len[query_node]";
    case kTaBadSegLen: return "segment lengths must be >= 0";
    case kTaBadChunkSize: return "chunk_size must be >= 1";
  }
  return "unknown error";
}

struct TreeAttentionPlan {
  std::vector<int32_t> q_indptr, kv_indptr, kv_seg;
  std::vector<int32_t> chunk_seg, chunk_start, chunk_len, chunk_indptr, chunk_groups;
  std::vector<int32_t> row_indptr, row_q, row_limit;
  std::vector<int32_t> merge_indptr, merge_entries;
};

// Builds the plan. parent [N], seg_len [N], query_nodes [G], q_len [G]. Returns a status.
int build_tree_attention_plan(const int32_t* parent, const int32_t* seg_len, int64_t N,
                              const int32_t* query_nodes, const int32_t* q_len, int64_t G,
                              int64_t chunk_size, TreeAttentionPlan& out);

namespace cpu {

// Segment-major forward. dtype of q / k_pool / v_pool: 0 = float32, 1 = float16 (IEEE half);
// accumulation is float32 and the outputs are float32: o [Tq, Hq, D], lse [Tq, Hq] (natural log;
// a query that sees no token gets o = 0, lse = -inf). chunk_pool_start [C] int64 =
// seg_offset[chunk_seg] + chunk_start. Each chunk's K/V is packed once per KV head and all of
// its entries' rows (x gs query heads) are processed against it; partial results are merged
// by log-sum-exp into a running state as chunks complete (no partial buffer). Thread t
// (num_threads >= 1) owns the (group, KV head) pairs with (group + head) % num_threads == t, so
// threads never share state. Returns 0, or 1 if Hq % Hkv != 0, D <= 0 or dtype is unknown.
int tree_attention_fwd(const void* q, const void* k_pool, const void* v_pool, int dtype,
                       int64_t Tq, int64_t Hq, int64_t Hkv, int64_t D, int64_t C,
                       const int64_t* chunk_pool_start, const int32_t* chunk_len,
                       const int32_t* chunk_indptr, const int32_t* row_indptr,
                       const int32_t* row_q, const int32_t* row_limit,
                       const int32_t* chunk_groups, float scale, int num_threads,
                       float* o, float* lse);

}  // namespace cpu
}  // namespace lrm
