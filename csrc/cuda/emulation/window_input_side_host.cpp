// Host emulation: compiles the CUDA backend's window_input_side.cu as C++ (the .cu suffix would send it to nvcc); the CUDA builtins come from cuda/backend.h.
#include "cuda/window_input_side.cu"
