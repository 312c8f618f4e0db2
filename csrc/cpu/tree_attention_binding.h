// pybind11 bindings of the tree-attention plan builder and CPU kernel (lrm_engine._C).
// Raw data pointers in (Python ints from tensor.data_ptr()); the Python wrapper
// lrm_engine/ops/tree_attention.py checks devices, dtypes, shapes and contiguity.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "lrm/tree_attention.h"

namespace lrm {

inline void bind_tree_attention(pybind11::module_& m) {
  namespace py = pybind11;
  m.def(
      "tree_attention_plan",
      [](uintptr_t parent, uintptr_t seg_len, int64_t N, uintptr_t query_nodes, uintptr_t q_len,
         int64_t G, int64_t chunk_size) {
        TreeAttentionPlan p;
        int st;
        {
          py::gil_scoped_release nogil;
          st = build_tree_attention_plan(
              reinterpret_cast<const int32_t*>(parent), reinterpret_cast<const int32_t*>(seg_len), N,
              reinterpret_cast<const int32_t*>(query_nodes), reinterpret_cast<const int32_t*>(q_len),
              G, chunk_size, p);
        }
        if (st != kTaOk)
          throw py::value_error(std::string("lrm_engine tree_attention_plan: ") +
                                tree_attention_status_message(st));
        py::dict d;
        auto put = [&](const char* name, const std::vector<int32_t>& v) {
          d[name] = py::bytes(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(int32_t));
        };
        put("q_indptr", p.q_indptr);
        put("kv_indptr", p.kv_indptr);
        put("kv_seg", p.kv_seg);
        put("chunk_seg", p.chunk_seg);
        put("chunk_start", p.chunk_start);
        put("chunk_len", p.chunk_len);
        put("chunk_indptr", p.chunk_indptr);
        put("chunk_groups", p.chunk_groups);
        put("row_indptr", p.row_indptr);
        put("row_q", p.row_q);
        put("row_limit", p.row_limit);
        put("merge_indptr", p.merge_indptr);
        put("merge_entries", p.merge_entries);
        return d;
      },
      "tree_attention_plan(parent, seg_len, N, query_nodes, q_len, G, chunk_size) -> dict of "
      "int32 arrays as bytes");
  m.def(
      "tree_attention_fwd",
      [](uintptr_t q, uintptr_t k, uintptr_t v, int dtype, int64_t Tq, int64_t Hq, int64_t Hkv,
         int64_t D, int64_t C, uintptr_t chunk_pool_start, uintptr_t chunk_len,
         uintptr_t chunk_indptr, uintptr_t row_indptr, uintptr_t row_q, uintptr_t row_limit,
         uintptr_t chunk_groups, double scale, int num_threads, uintptr_t o, uintptr_t lse) {
        int st;
        {
          py::gil_scoped_release nogil;
          st = cpu::tree_attention_fwd(
              reinterpret_cast<const void*>(q), reinterpret_cast<const void*>(k),
              reinterpret_cast<const void*>(v), dtype, Tq, Hq, Hkv, D, C,
              reinterpret_cast<const int64_t*>(chunk_pool_start),
              reinterpret_cast<const int32_t*>(chunk_len), reinterpret_cast<const int32_t*>(chunk_indptr),
              reinterpret_cast<const int32_t*>(row_indptr), reinterpret_cast<const int32_t*>(row_q),
              reinterpret_cast<const int32_t*>(row_limit), reinterpret_cast<const int32_t*>(chunk_groups),
              (float)scale, num_threads, reinterpret_cast<float*>(o), reinterpret_cast<float*>(lse));
        }
        if (st != 0)
          throw py::value_error("lrm_engine tree_attention: bad shapes (Hq % Hkv, D) or dtype");
      },
      "tree_attention_fwd(q, k_pool, v_pool, dtype(0=f32,1=f16), Tq, Hq, Hkv, D, C, "
      "chunk_pool_start, chunk_len, chunk_indptr, row_indptr, row_q, row_limit, chunk_groups, "
      "scale, num_threads, o, lse)");
}

}  // namespace lrm
