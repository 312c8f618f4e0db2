#include <pybind11/pybind11.h>
namespace lrm { int answer(); }
PYBIND11_MODULE(_C, m) { m.def("answer", &lrm::answer); }
