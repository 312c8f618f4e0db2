// lrm_engine._C_cuda: the CUDA kernels of the tree ops (built only with -DLRM_ENGINE_CUDA=ON).
// Compiled by the host compiler (no CUDA headers here); arguments are raw device pointers from
// tensor.data_ptr() plus sizes and the CUDA stream as an integer. The Python wrapper is
// lrm_engine/ops/cuda.py. Launches are asynchronous on the given stream.
#include <pybind11/pybind11.h>

#include <string>

#include "cuda/cuda_ops.h"
#include "tree_view_binding.h"

namespace py = pybind11;
using lrm::ptr;

namespace {
void check(int code, const char* op) {
  if (code != 0)
    throw std::runtime_error(std::string("lrm_engine CUDA ") + op + ": " + lrm::cuda::cuda_error_string(code));
}
}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "lrm_engine CUDA tree-op kernels (raw device pointers; see lrm_engine.ops.cuda)";
  lrm::bind_tree_view(m);

  m.def("device_count", []() {
    int n = 0;
    const int code = lrm::cuda::device_count(&n);
    if (code != 0) throw std::runtime_error(std::string("CUDA runtime: ") + lrm::cuda::cuda_error_string(code));
    return n;
  });
  m.def("select", [](const lrm::TreeView& t, int K, int rule, double c1, double c2, double uct_c, double vl,
                     uintptr_t out_node, uintptr_t out_action, uintptr_t stream, int device) {
    const lrm::SelectParams p{rule, c1, c2, uct_c, vl};
    check(lrm::cuda::select(t, K, p, ptr<int32_t>(out_node), ptr<int32_t>(out_action), stream, device), "select");
  });
  m.def("expand", [](const lrm::TreeView& t, int K, uintptr_t leaf_node, uintptr_t leaf_action,
                     uintptr_t child_prior, uintptr_t terminal, uintptr_t new_node, uintptr_t stream, int device) {
    check(lrm::cuda::expand(t, K, ptr<const int32_t>(leaf_node), ptr<const int32_t>(leaf_action),
                            ptr<const float>(child_prior), ptr<const uint8_t>(terminal), ptr<int32_t>(new_node),
                            stream, device),
          "expand");
  });
  m.def("backup", [](const lrm::TreeView& t, int K, uintptr_t nodes, uintptr_t values, uintptr_t step_scores,
                     double discount, uintptr_t stream, int device) {
    check(lrm::cuda::backup(t, K, ptr<const int32_t>(nodes), ptr<const float>(values),
                            ptr<const float>(step_scores), (float)discount, stream, device),
          "backup");
  });
  m.def("topk_per_tree", [](uintptr_t scores, uintptr_t valid, int64_t B, int64_t M, int64_t k, uintptr_t out_v,
                            uintptr_t out_i, uintptr_t stream, int device) {
    check(lrm::cuda::topk_per_tree(ptr<const float>(scores), ptr<const uint8_t>(valid), B, M, k, ptr<float>(out_v),
                                   ptr<int32_t>(out_i), stream, device),
          "topk_per_tree");
  });
  m.def("segment_reduce", [](uintptr_t values, int64_t T, uintptr_t offsets, int64_t S, int op, uintptr_t out,
                             uintptr_t stream, int device) {
    check(lrm::cuda::segment_reduce(ptr<const float>(values), T, ptr<const int64_t>(offsets), S, op, ptr<float>(out),
                                    stream, device),
          "segment_reduce");
  });
  m.def("group_normalize", [](uintptr_t x, int64_t T, uintptr_t offsets, int64_t G, double eps, bool unbiased,
                              uintptr_t out, uintptr_t stream, int device) {
    check(lrm::cuda::group_normalize(ptr<const float>(x), T, ptr<const int64_t>(offsets), G, (float)eps, unbiased,
                                     ptr<float>(out), stream, device),
          "group_normalize");
  });
}
