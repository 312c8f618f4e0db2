#include "lrm/tree_ops.h"
namespace lrm { int answer() { return 42; } }
