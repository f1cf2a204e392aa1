// Which CPU path the op takes: GEMM backend and 16-bit column storage, from the CPU's units and environment overrides.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

namespace deformconv {
namespace cpu {

// Backend of the three column GEMMs (forward, grad_columns, grad_weight).
enum class GemmBackend {
  kMm,      // at::mm / addmm (MKL or OpenBLAS for float32/float64)
  kOneDnn,  // oneDNN through ATen's 1x1 convolution (and mkldnn linear for grad_weight)
};

// The GEMM backend for a compute dtype: DEFORMCONV_CPU_GEMM=mm|onednn forces one
// (read on every call); unset or "auto" picks oneDNN when ATen has it enabled
// and the CPU has AVX-512 (F/BW/VL/DQ), else at::mm.
// float64 always uses at::mm: oneDNN has no float64.
GemmBackend gemm_backend(at::ScalarType compute_dtype);

// True when a bfloat16 / float16 call keeps its columns in 16 bits and runs
// 16-bit GEMMs with float32 accumulation; false computes everything in float32.
// DEFORMCONV_CPU_16BIT=native|fp32 forces one (read on every call); unset or
// "auto" picks native where the CPU has 16-bit dot-product units (bfloat16:
// avx512_bf16 or AMX-BF16; float16: avx512_fp16 or AMX-FP16) and the GEMM
// backend is oneDNN. Always false for float32 / float64.
bool native_16bit(at::ScalarType dtype);

// True when a call with this input dtype runs its forward as fused per-thread tiles
// (fused_forward.h: sampling and ATen's brgemm per tile, no column chunk through
// memory); false keeps the chunked forward (columns, then one GEMM per chunk). The
// tiles run in the columns' dtype: float32, or the input's 16-bit dtype on the native
// 16-bit path, where ATen runs that brgemm only with the CPU's units (bfloat16:
// AVX512-BF16 or AMX-BF16; float16: AMX-FP16); never float64.
// DEFORMCONV_CPU_FORWARD=fused|chunked forces one where the tiles can run (read on
// every call). Unset or "auto" picks fused where the GEMM backend is oneDNN (CPUs
// with AVX-512), at any weight size: measured on a 2-core AVX-512 EPYC (Zen 5, 1 MiB
// L2 per core), float32, strict A/B alternation, fused against chunked took 19.4
// against 29.2 ms at 256 -> 256 channels (detection-like), 22.4 against 36.5 at 384
// and 24.3 against 53.9 at 512 (2,512,25,34). That includes bfloat16 tiles, on AVX512-BF16
// and on AMX-BF16 (there, resnet-stage forward+backward took 5.5 ms fused against 47.6
// chunked), but not native float16 tiles: they need AMX-FP16 and have run on no CPU yet, so
// "auto" keeps native float16 columns chunked.
bool fused_forward_chosen(at::ScalarType dtype);

// True when a call with this input dtype runs its backward as fused per-thread tiles
// (fused_backward.h); false keeps the chunked backward. The tiles run in the same
// dtypes as the fused forward (see fused_forward_chosen), never float64, and not when
// workspace_bytes (fused_backward_workspace_bytes) exceeds the workspace budget.
// DEFORMCONV_CPU_BACKWARD=fused|chunked forces one where the tiles can run (read on
// every call); unset or "auto" picks fused where the GEMM backend is oneDNN (CPUs with
// AVX-512), at any weight size (measured on a 2-core AVX-512 EPYC: as fast or faster
// from 64 to 512 channels), with the same float16 exception as the forward.
bool fused_backward_chosen(at::ScalarType dtype, int64_t workspace_bytes);

// True when the CPU has AVX-512 F/BW/VL/DQ (oneDNN's bfloat16 kernels need them).
bool cpu_has_avx512();

// Vector ISA of the sampling loops the loader chose: "avx512", "avx2" or "baseline".
const char* loop_isa();

// Whether the DCN family's CPU passes take their AVX-512 entry point (16-lane channel loops):
// on a CPU with x86-64-v4 (AVX-512 F/BW/CD/DQ/VL), unless DEFORMCONV_CPU_FAMILY_LOOPS=avx2
// asks for the AVX2 / baseline clones (read on every call; "auto" or unset: by the CPU).
bool family_loops_avx512();

// The groups per task that DEFORMCONV_CPU_FAMILY_BAND asks the DCN family CPU passes for
// (read on every call; a positive number, which must divide the call's group count), or 0
// when it is unset or "auto": the passes choose (cpu/dcn_family_kernel.cpp, task_plan).
int64_t family_band_override();

// One line naming the path a call with this input dtype takes, e.g.
// "gemm=onednn columns=bfloat16 forward=chunked backward=fused loops=avx512".
std::string describe_path(at::ScalarType dtype);

}  // namespace cpu
}  // namespace deformconv
