// The private op torch.ops.deformconv._cpu_path: the CPU path a call of a dtype would take (for benchmarks and tests).
#include <torch/library.h>

#include <string>

#include "cpu/cpu_paths.h"

namespace deformconv {
namespace cpu {
namespace {
std::string cpu_path_op(c10::ScalarType dtype) { return describe_path(dtype); }
}  // namespace

// torch.ops.deformconv._cpu_path(torch.bfloat16) -> "gemm=... columns=... forward=... ...".
TORCH_LIBRARY_FRAGMENT(deformconv, m) { m.def("_cpu_path(ScalarType dtype) -> str", &cpu_path_op); }

}  // namespace cpu
}  // namespace deformconv
