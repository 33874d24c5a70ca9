// SPDX-License-Identifier: MIT
// The compiled unit's one entry point: registers each CUDA kernel of kernels/cuda/ with the
// dispatch seam (include/btx/kernels/dispatch.hpp) for CUDA tensors. A kernel lands here
// with its test against the header-only path, run on a GPU (a kernel nothing has run is not
// registered); until then every operation takes its header-only path on every device.
#include <btx/kernels/dispatch.hpp>

namespace btx::kernels {

void register_compiled_kernels(KernelRegistry& /*into*/) {}

}  // namespace btx::kernels
