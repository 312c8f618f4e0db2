// pybind11 helpers shared by the two extension modules (lrm_engine._C and lrm_engine._C_cuda):
// the TreeView class built from raw data pointers, and status -> Python exception.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>

#include "lrm/common.h"

namespace lrm {
namespace py = pybind11;

// Field order of the pointer tuple (lrm_engine/ops/cpp.py: TREE_FIELDS).
constexpr int kTreeViewFields = 16;

inline TreeView make_tree_view(const py::tuple& ptrs, int64_t B, int64_t N, int64_t A) {
  if ((int)py::len(ptrs) != kTreeViewFields)
    throw std::invalid_argument("TreeView needs 16 data pointers");
  uintptr_t p[kTreeViewFields];
  for (int i = 0; i < kTreeViewFields; ++i) p[i] = ptrs[i].cast<uintptr_t>();
  TreeView t;
  t.parent = reinterpret_cast<int32_t*>(p[0]);
  t.action_from_parent = reinterpret_cast<int32_t*>(p[1]);
  t.depth = reinterpret_cast<int32_t*>(p[2]);
  t.children_index = reinterpret_cast<int32_t*>(p[3]);
  t.children_prior = reinterpret_cast<float*>(p[4]);
  t.visit_count = reinterpret_cast<int32_t*>(p[5]);
  t.value_sum = reinterpret_cast<float*>(p[6]);
  t.step_score = reinterpret_cast<float*>(p[7]);
  t.path_min = reinterpret_cast<float*>(p[8]);
  t.path_sum = reinterpret_cast<float*>(p[9]);
  t.path_sum_log = reinterpret_cast<float*>(p[10]);
  t.path_last = reinterpret_cast<float*>(p[11]);
  t.path_len = reinterpret_cast<int32_t*>(p[12]);
  t.terminal = reinterpret_cast<uint8_t*>(p[13]);
  t.num_nodes = reinterpret_cast<int32_t*>(p[14]);
  t.vvisit = reinterpret_cast<int32_t*>(p[15]);
  t.B = B;
  t.N = N;
  t.A = A;
  return t;
}

inline void bind_tree_view(py::module_& m) {
  py::class_<TreeView>(m, "TreeView",
                       "Raw pointers to the 16 fields of a BatchedTree (see TREE_FIELDS) and B, N, A.")
      .def(py::init(&make_tree_view), py::arg("ptrs"), py::arg("B"), py::arg("N"), py::arg("A"))
      .def_readonly("B", &TreeView::B)
      .def_readonly("N", &TreeView::N)
      .def_readonly("A", &TreeView::A);
}

inline void raise_status(int status, const char* op) {
  if (status == kOk) return;
  std::string msg = std::string("lrm_engine ") + op + ": " + status_message(status);
  if (status == kBadNodeIndex || status == kBadActionIndex) throw py::index_error(msg);
  if (status == kBadOffsets) throw py::value_error(msg);
  throw std::runtime_error(msg);
}

template <typename T>
inline T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

}  // namespace lrm
