// Framework-free definitions shared by the C++ CPU kernels and the CUDA kernels of lrm_engine.
// No torch, no pybind11: raw pointers into contiguous row-major buffers plus sizes.
// The semantics are those of lrm_engine/ops/reference.py (the specification).
#pragma once

#include <math.h>

#include <cstdint>

#if defined(__CUDACC__)
#define LRM_HD __host__ __device__
#else
#define LRM_HD
#endif

namespace lrm {

// Sentinels, as in lrm_engine.core.tree.BatchedTree.
constexpr int32_t kRoot = 0;
constexpr int32_t kNoParent = -1;
constexpr int32_t kUnvisited = -1;
constexpr int32_t kNoAction = -1;

// Status codes returned by the per-tree / per-row functions (0 = ok).
enum Status : int {
  kOk = 0,
  kBadNodeIndex = 1,     // a node index outside [0, N)
  kBadActionIndex = 2,   // an action index outside [0, A)
  kCapacity = 3,         // expand needs more node slots than the tree has
  kCorruptTree = 4,      // a child index out of range or a cycle met while descending
  kBadOffsets = 5,       // CSR offsets decreasing or outside [0, T]
};

// Pointers to the fields of a lrm_engine.core.tree.BatchedTree (all [B, N] or [B, N, A],
// contiguous). Only the fields an op touches must be valid for that op.
struct TreeView {
  int32_t* parent;              // [B, N]
  int32_t* action_from_parent;  // [B, N]
  int32_t* depth;               // [B, N]
  int32_t* children_index;      // [B, N, A]
  float* children_prior;        // [B, N, A]
  int32_t* visit_count;         // [B, N]
  float* value_sum;             // [B, N]
  float* step_score;            // [B, N]
  float* path_min;              // [B, N]
  float* path_sum;              // [B, N]
  float* path_sum_log;          // [B, N]
  float* path_last;             // [B, N]
  int32_t* path_len;            // [B, N]
  uint8_t* terminal;            // [B, N] (torch.bool: one byte, 0 / 1)
  int32_t* num_nodes;           // [B]
  int32_t* vvisit;              // [B, N] select's workspace, all zeros between calls
  int64_t B, N, A;
};

enum SelectRule : int { kPuct = 0, kUct = 1 };

struct SelectParams {
  int rule;             // SelectRule
  double c1, c2;        // PUCT constants (mctx: 1.25, 19652)
  double uct_c;         // UCT exploration constant
  double virtual_loss;  // value subtracted per virtual visit
  // Optional tables indexed by a node's (integer) effective visit count n, each entry computed
  // by the very expression it replaces (so results are bit-identical): pb_c(n) =
  // c1 + log((n + c2 + 1) / c2), sqrt(n), log(max(n, 1)). nullptr / 0 = compute directly.
  const double* pb_table = nullptr;
  const double* sqrt_table = nullptr;
  const double* log_table = nullptr;
  int64_t table_size = 0;
};

// The expressions of the tables above (shared so table and direct path cannot drift apart).
LRM_HD inline double puct_pb_c(double n_vis, double c1, double c2) { return c1 + log((n_vis + c2 + 1.0) / c2); }
LRM_HD inline double uct_log_n(double n_vis) { return log(n_vis < 1.0 ? 1.0 : n_vis); }

// NaN-propagating min / max (torch.minimum / torch.maximum / amin / amax semantics).
LRM_HD inline bool is_nan(double x) { return x != x; }
LRM_HD inline bool is_nanf(float x) { return x != x; }
LRM_HD inline double nan_min(double a, double b) {
  if (is_nan(a)) return a;
  if (is_nan(b)) return b;
  return b < a ? b : a;
}
LRM_HD inline double nan_max(double a, double b) {
  if (is_nan(a)) return a;
  if (is_nan(b)) return b;
  return b > a ? b : a;
}
LRM_HD inline float nan_minf(float a, float b) {
  if (is_nanf(a)) return a;
  if (is_nanf(b)) return b;
  return b < a ? b : a;
}
LRM_HD inline float nan_maxf(float a, float b) {
  if (is_nanf(a)) return a;
  if (is_nanf(b)) return b;
  return b > a ? b : a;
}

LRM_HD inline double inf_d() { return __builtin_huge_val(); }
LRM_HD inline float inf_f() { return __builtin_huge_valf(); }
LRM_HD inline double nan_d() { return __builtin_nan(""); }
LRM_HD inline float nan_f() { return __builtin_nanf(""); }

}  // namespace lrm

namespace lrm {
// Host-side message for a status code.
inline const char* status_message(int status) {
  switch (status) {
    case kOk: return "ok";
    case kBadNodeIndex: return "a node index is out of range [0, N)";
    case kBadActionIndex: return "an action index is out of range [0, A)";
    case kCapacity:
      return "the search tree ran out of node slots (call tree.ensure_capacity(K) before expand, "
             "or raise `search.max_nodes`)";
    case kCorruptTree: return "the tree is corrupt (a child index out of range or a cycle)";
    case kBadOffsets: return "CSR offsets must be non-decreasing and within [0, T]";
  }
  return "unknown error";
}
}  // namespace lrm
