// pybind11 binding of the PRM head op (lrm_engine._C.prm_head_scores). Raw data pointers (Python
// ints from tensor.data_ptr()) and sizes; lrm_engine/ops/prm_head.py checks devices, dtypes,
// shapes and contiguity.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "cpu/prm_head.h"

namespace lrm {

inline void bind_prm_head(pybind11::module_& m) {
  namespace py = pybind11;
  m.def(
      "prm_head_scores",
      [](uintptr_t hidden, int64_t T, int64_t d, int64_t row_stride, uintptr_t positions, int64_t P,
         uintptr_t weight, uintptr_t bias, int64_t C, uintptr_t out) {
        int st;
        {
          py::gil_scoped_release nogil;
          st = cpu::prm_head_scores(reinterpret_cast<const float*>(hidden), T, d, row_stride,
                                    reinterpret_cast<const int64_t*>(positions), P,
                                    reinterpret_cast<const float*>(weight),
                                    reinterpret_cast<const float*>(bias), C,
                                    reinterpret_cast<float*>(out));
        }
        if (st == cpu::kPrmOk) return;
        const std::string msg =
            std::string("lrm_engine prm_head_scores: ") + cpu::prm_head_status_message(st);
        if (st == cpu::kPrmBadPosition) throw py::index_error(msg);
        throw py::value_error(msg);
      },
      "prm_head_scores(hidden, T, d, hidden_row_stride, positions, P, weight, bias (0 = none), C, "
      "out): out[P, C] = softmax over C of hidden[positions] @ weight.T + bias (float32)");
}

}  // namespace lrm
