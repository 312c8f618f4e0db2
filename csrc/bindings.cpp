// lrm_engine._C: the C++ CPU kernels of the tree ops. Arguments are raw data pointers (Python
// ints from tensor.data_ptr()) and sizes, so this module needs no torch headers; the Python
// wrapper lrm_engine/ops/cpp.py checks devices, dtypes, shapes and contiguity.
#include <pybind11/pybind11.h>

#include "cpu/cpu_ops.h"
#include "tree_view_binding.h"
#include "cpu/prm_head_binding.h"
#include "cpu/tree_attention_binding.h"

namespace py = pybind11;
using lrm::ptr;

PYBIND11_MODULE(_C, m) {
  m.doc() = "lrm_engine C++ CPU tree-op kernels (raw contiguous buffers; see lrm_engine.ops.cpp)";
  lrm::bind_tree_view(m);
  lrm::bind_prm_head(m);  // prm_head_scores (csrc/cpu/prm_head.cpp)
  lrm::bind_tree_attention(m);  // tree_attention_plan, tree_attention_fwd (csrc/cpu/tree_attention.cpp)

  m.def(
      "select",
      [](const lrm::TreeView& t, int K, int rule, double c1, double c2, double uct_c, double vl,
         uintptr_t out_node, uintptr_t out_action) {
        const lrm::SelectParams p{rule, c1, c2, uct_c, vl};
        lrm::raise_status(lrm::cpu::select(t, K, p, ptr<int32_t>(out_node), ptr<int32_t>(out_action)),
                          "select");
      },
      "select(view, K, rule(0=puct,1=uct), c1, c2, uct_c, virtual_loss, out_node, out_action)");
  m.def(
      "expand",
      [](const lrm::TreeView& t, int K, uintptr_t leaf_node, uintptr_t leaf_action,
         uintptr_t child_prior, uintptr_t terminal, uintptr_t new_node) {
        lrm::raise_status(lrm::cpu::expand(t, K, ptr<const int32_t>(leaf_node),
                                           ptr<const int32_t>(leaf_action), ptr<const float>(child_prior),
                                           ptr<const uint8_t>(terminal), ptr<int32_t>(new_node)),
                          "expand");
      },
      "expand(view, K, leaf_node, leaf_action, child_prior, terminal (0 = none), new_node)");
  m.def(
      "backup",
      [](const lrm::TreeView& t, int K, uintptr_t nodes, uintptr_t values, uintptr_t step_scores,
         double discount) {
        lrm::raise_status(lrm::cpu::backup(t, K, ptr<const int32_t>(nodes), ptr<const float>(values),
                                           ptr<const float>(step_scores), (float)discount),
                          "backup");
      },
      "backup(view, K, nodes, values, step_scores (0 = none), discount)");
  m.def(
      "topk_per_tree",
      [](uintptr_t scores, uintptr_t valid, int64_t B, int64_t M, int64_t k, uintptr_t out_v,
         uintptr_t out_i) {
        int st;
        {
          py::gil_scoped_release nogil;
          st = lrm::cpu::topk_per_tree(ptr<const float>(scores), ptr<const uint8_t>(valid), B, M, k,
                                       ptr<float>(out_v), ptr<int32_t>(out_i));
        }
        lrm::raise_status(st, "topk_per_tree");
      },
      "topk_per_tree(scores, valid (0 = all), B, M, k, out_values, out_index)");
  m.def(
      "segment_reduce",
      [](uintptr_t values, int64_t T, uintptr_t offsets, int64_t S, int op, uintptr_t out) {
        int st;
        {
          py::gil_scoped_release nogil;
          st = lrm::cpu::segment_reduce(ptr<const float>(values), T, ptr<const int64_t>(offsets), S,
                                        op, ptr<float>(out));
        }
        lrm::raise_status(st, "segment_reduce");
      },
      "segment_reduce(values, T, offsets, S, op(0=min,1=max,2=sum,3=mean,4=last,5=prod), out)");
  m.def(
      "group_normalize",
      [](uintptr_t x, int64_t T, uintptr_t offsets, int64_t G, double eps, bool unbiased, uintptr_t out) {
        int st;
        {
          py::gil_scoped_release nogil;
          st = lrm::cpu::group_normalize(ptr<const float>(x), T, ptr<const int64_t>(offsets), G,
                                         (float)eps, unbiased, ptr<float>(out));
        }
        lrm::raise_status(st, "group_normalize");
      },
      "group_normalize(x, T, offsets, G, eps, unbiased, out)");
}
