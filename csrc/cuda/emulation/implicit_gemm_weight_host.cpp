// Host emulation: compiles the CUDA backend's implicit_gemm_weight.cu as C++ (the .cu suffix would send it to nvcc); the CUDA builtins come from cuda/backend.h.
#include "cuda/implicit_gemm_weight.cu"
