// Host emulation: compiles the CUDA backend's launch.cu as C++ (the .cu suffix would send it to nvcc); the CUDA builtins come from cuda/backend.h.
#include "cuda/launch.cu"
