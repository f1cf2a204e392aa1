// CPU path selection: the CPU's units (cpuinfo through ATen), ATen's oneDNN switch and the DEFORMCONV_CPU_* overrides.
#include "cpu/cpu_paths.h"

#include <ATen/Context.h>
#include <ATen/cpu/Utils.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

#include "common/geometry.h"
#include "cpu/brgemm.h"

namespace deformconv {
namespace cpu {
namespace {

// The value of an override variable: "auto" when unset or empty, else one of `choices`.
std::string env_choice(const char* name, std::initializer_list<const char*> choices) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return "auto";
  const std::string value(env);
  std::string expected = "auto";
  for (const char* c : choices) {
    if (value == c) return value;
    expected += std::string("|") + c;
  }
  TORCH_CHECK(value == "auto", name, " is not valid: got '", value, "', expected ", expected);
  return value;
}

// True when cpuinfo (as reported by ATen) lists one of the named units.
bool cpu_has_any(std::initializer_list<const char*> units) {
  static const auto capabilities = at::cpu::get_cpu_capabilities();
  for (const char* unit : units) {
    const auto it = capabilities.find(unit);
    if (it != capabilities.end() && it->second.isBool() && it->second.toBool()) return true;
  }
  return false;
}

const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kDouble:
      return "float64";
    case at::kBFloat16:
      return "bfloat16";
    case at::kHalf:
      return "float16";
    default:
      return "float32";
  }
}

bool cpu_has_all(std::initializer_list<const char*> units) {
  for (const char* unit : units) {
    if (!cpu_has_any({unit})) return false;
  }
  return true;
}

bool onednn_available() { return at::hasMKLDNN() && at::globalContext().userEnabledMkldnn(); }

}  // namespace

bool cpu_has_avx512() { return cpu_has_all({"avx512_f", "avx512_bw", "avx512_vl", "avx512_dq"}); }

GemmBackend gemm_backend(at::ScalarType compute_dtype) {
  if (compute_dtype == at::kDouble) return GemmBackend::kMm;
  const std::string choice = env_choice("DEFORMCONV_CPU_GEMM", {"mm", "onednn"});
  if (choice == "mm") return GemmBackend::kMm;
  if (choice == "onednn") return GemmBackend::kOneDnn;
  // oneDNN where the CPU has AVX-512: there MKL's sgemm on AMD EPYC runs at under half
  // oneDNN's speed (measured). AVX2-only and other CPUs keep at::mm (not measured against
  // oneDNN there).
  return onednn_available() && cpu_has_avx512() ? GemmBackend::kOneDnn : GemmBackend::kMm;
}

bool native_16bit(at::ScalarType dtype) {
  if (dtype != at::kBFloat16 && dtype != at::kHalf) return false;
  const std::string choice = env_choice("DEFORMCONV_CPU_16BIT", {"native", "fp32"});
  if (choice != "auto") return choice == "native";
  if (gemm_backend(at::kFloat) != GemmBackend::kOneDnn) return false;
  return dtype == at::kBFloat16 ? cpu_has_any({"avx512_bf16", "amx_bf16"})
                                : cpu_has_any({"avx512_fp16", "amx_fp16"});
}

namespace {
// True when the fused tiles can run a call with input dtype: not float64, and this torch
// has the brgemm for the columns' dtype (the input's on the native 16-bit path, else
// float32). ATen's float32 brgemm falls back to its plain GEMM where oneDNN's kernel
// does not run; its 16-bit one (VNNI operands) has no fallback and raises unless oneDNN
// is enabled and the CPU has the ISA, so the 16-bit tiles also need oneDNN and the
// units (bfloat16: AVX512-BF16 or AMX-BF16; float16: AMX-FP16, as ATen's error message
// for float16 asks).
bool fusable(at::ScalarType dtype) {
  if (dtype == at::kDouble) return false;
  if (!native_16bit(dtype)) return brgemm_available(at::kFloat);
  const bool units =
      dtype == at::kBFloat16 ? cpu_has_any({"avx512_bf16", "amx_bf16"}) : cpu_has_any({"amx_fp16"});
  return units && onednn_available() && brgemm_available(dtype);
}

// The rule of fused_forward_chosen and fused_backward_chosen: the switch `name` (read
// first, so a bad value raises on every CPU), then whether the tiles can run and fit.
// Automatically: on oneDNN (AVX-512) CPUs, except native float16 tiles, which need AMX-FP16
// and have run on no CPU yet (see fused_forward_chosen).
bool fused_chosen(const char* name, at::ScalarType dtype, bool fits_workspace) {
  const std::string choice = env_choice(name, {"fused", "chunked"});
  if (!fusable(dtype) || !fits_workspace) return false;
  if (choice != "auto") return choice == "fused";
  if (dtype == at::kHalf && native_16bit(dtype)) return false;
  return gemm_backend(at::kFloat) == GemmBackend::kOneDnn;
}
}  // namespace

bool fused_forward_chosen(at::ScalarType dtype) {
  return fused_chosen("DEFORMCONV_CPU_FORWARD", dtype, /*fits_workspace=*/true);
}

bool fused_backward_chosen(at::ScalarType dtype, int64_t workspace_bytes) {
  return fused_chosen("DEFORMCONV_CPU_BACKWARD", dtype,
                      workspace_bytes <= workspace_budget_bytes());
}

const char* loop_isa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  // The same order as the target_clones resolver of channel_loops.h.
  if (__builtin_cpu_supports("x86-64-v4")) return "avx512";
  if (__builtin_cpu_supports("x86-64-v3")) return "avx2";
#endif
  return "baseline";
}

bool family_loops_avx512() {
  const std::string choice = env_choice("DEFORMCONV_CPU_FAMILY_LOOPS", {"avx2"});
  return choice == "auto" && std::string(loop_isa()) == "avx512";
}

int64_t family_band_override() {
  const char* env = std::getenv("DEFORMCONV_CPU_FAMILY_BAND");
  if (env == nullptr || *env == '\0' || std::string(env) == "auto") return 0;
  char* end = nullptr;
  const long long band = std::strtoll(env, &end, 10);
  TORCH_CHECK(*end == '\0' && band > 0, "DEFORMCONV_CPU_FAMILY_BAND is not valid: got '", env,
              "', expected auto or a positive number of groups");
  return band;
}

std::string describe_path(at::ScalarType dtype) {
  const bool is16 = dtype == at::kBFloat16 || dtype == at::kHalf;
  const at::ScalarType compute = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const bool native = native_16bit(dtype);
  std::string path =
      std::string("gemm=") + (gemm_backend(compute) == GemmBackend::kOneDnn ? "onednn" : "mm");
  path += std::string(" columns=") + dtype_name(native ? dtype : compute);
  if (is16 && !native) path += " (16-bit input computed in float32)";
  path += fused_forward_chosen(dtype) ? " forward=fused" : " forward=chunked";
  path += fused_backward_chosen(dtype, 0) ? " backward=fused" : " backward=chunked";
  path += std::string(" loops=") + loop_isa();
  return path;
}

}  // namespace cpu
}  // namespace deformconv
