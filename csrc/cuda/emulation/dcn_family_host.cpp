// Host emulation: compiles the CUDA backend's dcn_family.cu as C++ (the .cu suffix would send it to nvcc); the CUDA builtins come from cuda/backend.h.
#include "cuda/dcn_family.cu"
