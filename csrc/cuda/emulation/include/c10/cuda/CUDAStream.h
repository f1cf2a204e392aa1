// Host-emulation stand-in for c10/cuda/CUDAStream.h: a null current stream.
#pragma once
namespace c10::cuda {
struct EmulatedStream {
  operator cudaStream_t() const { return nullptr; }
};
inline EmulatedStream getCurrentCUDAStream(signed char = -1) { return {}; }
}  // namespace c10::cuda
