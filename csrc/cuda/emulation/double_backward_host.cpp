// Host emulation: compiles the CUDA backend's double_backward_kernels.cu as C++ (the .cu suffix would send it to nvcc); the CUDA builtins come from cuda/backend.h.
#include "cuda/double_backward_kernels.cu"
