// Host-side helpers of the CUDA launchers (.cu files: it includes device code): SamplingArgs (sampling.cuh) from a call's geometry, 16-byte-aligned operands, the tensor-core kernels' coverage check.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>

#include "common/geometry.h"
#include "cuda/backend.h"
#include "cuda/launch.h"
#include "cuda/sample_packs.cuh"
#include "cuda/sampling.cuh"

namespace deformconv {
namespace cuda {

// t itself, or a copy when its data is not 16-byte aligned (a view with an odd storage
// offset): the kernel reads 8 16-bit values per access.
inline at::Tensor aligned16(const at::Tensor& t) {
  if (reinterpret_cast<std::uintptr_t>(t.const_data_ptr()) % 16 == 0) return t;
  return t.clone(t.suggest_memory_format());
}

// What the fused path's tensor-core kernels (`op`: their op's name for the messages) cover:
// input on the backend's device, float16 or bfloat16, C_in/groups and C_in/offset_groups
// multiples of 8 (a thread's 8 channels lie in one weight group and one offset group, and its
// 16-byte accesses are aligned), a GPU of compute capability 8.0 or newer.
inline void check_tensor_core_call(const char* op, const at::Tensor& input,
                                   const ConvGeometry& geo) {
  TORCH_CHECK(backend::on_device(input), op, ": input must be a ", backend::kDeviceType,
              " tensor: got ", input.device());
  const auto dtype = input.scalar_type();
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16, op,
              " covers float16 and bfloat16 input: got ", dtype);
  const int64_t cpg = geo.in_channels_per_group();
  const int64_t cpog = geo.channels_per_offset_group();
  TORCH_CHECK(cpg % kSampleVec == 0 && cpog % kSampleVec == 0, op,
              " needs C_in/groups and C_in/offset_groups to be multiples of ", kSampleVec, ": got ",
              cpg, " and ", cpog);
  TORCH_CHECK(backend::compute_capability(input.device()) >= 80, op,
              " needs a GPU of compute capability 8.0 or newer");
}

// launch.run<scalar_t, index_t>() for a 16-bit call: float16 or bfloat16 data (`dtype`, checked
// by check_tensor_core_call), int32 index math when `index32` (fits_int32), else int64.
template <typename Launch>
void run_16bit(const Launch& launch, at::ScalarType dtype, bool index32) {
  if (dtype == at::kHalf) {
    index32 ? launch.template run<c10::Half, int32_t>() : launch.template run<c10::Half, int64_t>();
  } else {
    index32 ? launch.template run<c10::BFloat16, int32_t>()
            : launch.template run<c10::BFloat16, int64_t>();
  }
}

// Sizes and chunk of a call; offset / mask strides left 0 (kernels that read neither).
template <typename index_t>
inline SamplingArgs<index_t> make_args(const ConvGeometry& g, Chunk chunk) {
  SamplingArgs<index_t> a;
  a.channels = static_cast<index_t>(g.in_channels);
  a.height = static_cast<index_t>(g.height);
  a.width = static_cast<index_t>(g.width);
  a.out_h = static_cast<index_t>(g.out_h);
  a.out_w = static_cast<index_t>(g.out_w);
  a.kernel_w = static_cast<index_t>(g.kernel_w);
  a.taps = static_cast<index_t>(g.taps());
  a.stride_h = static_cast<index_t>(g.stride_h);
  a.stride_w = static_cast<index_t>(g.stride_w);
  a.pad_h = static_cast<index_t>(g.pad_h);
  a.pad_w = static_cast<index_t>(g.pad_w);
  a.dilation_h = static_cast<index_t>(g.dilation_h);
  a.dilation_w = static_cast<index_t>(g.dilation_w);
  a.channels_per_group = static_cast<index_t>(g.in_channels_per_group());
  a.channels_per_offset_group = static_cast<index_t>(g.channels_per_offset_group());
  a.offset_groups = static_cast<index_t>(g.offset_groups);
  a.grouped = g.groups > 1;
  a.has_mask = false;
  a.columns = static_cast<index_t>(g.taps() * g.in_channels);
  a.p0 = static_cast<index_t>(chunk.p0);
  a.pc = static_cast<index_t>(chunk.pc);
  for (int d = 0; d < 4; ++d) {
    a.offset_stride[d] = index_t(0);
    a.mask_stride[d] = index_t(0);
  }
  return a;
}

// The same with the element strides of offset and mask (any layout is read in place).
template <typename index_t>
inline SamplingArgs<index_t> make_args(const ConvGeometry& g, Chunk chunk, const at::Tensor& offset,
                                       const c10::optional<at::Tensor>& mask) {
  SamplingArgs<index_t> a = make_args<index_t>(g, chunk);
  a.has_mask = mask.has_value();
  for (int d = 0; d < 4; ++d) {
    a.offset_stride[d] = static_cast<index_t>(offset.stride(d));
    a.mask_stride[d] = mask.has_value() ? static_cast<index_t>(mask->stride(d)) : index_t(0);
  }
  return a;
}

}  // namespace cuda
}  // namespace deformconv
