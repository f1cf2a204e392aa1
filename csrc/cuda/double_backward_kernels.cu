// CUDA kernels of the double backward of deform_conv2d: directional columns, second-order scatter, second-order offset/mask gradients.
//
// One thread per (pixel, offset group, tap, channel) for the columns and the scatter, one
// per (pixel, offset group, tap) for the offset / mask gradients (a loop over the offset
// group's channels: deterministic). Grid-stride loops, int64 indices, opmath data in the
// layouts of double_backward_launch.h. The sample math is common/bilinear.h's, shared with
// the CPU passes.
#include <algorithm>
#include <cstdint>
#include <utility>

#include "common/bilinear.h"
#include "cuda/backend.h"
#include "cuda/double_backward_launch.h"

namespace deformconv {
namespace cuda {
namespace second_order {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

// One sample: where its cell starts in the bordered input, its position in the cell,
// its modulation and the cotangents of its offset and mask (0 where absent).
template <typename acc_t>
struct Located {
  bool valid;
  int64_t base;  // element index of corner (y0, x0), channel 0, in the bordered layout
  int64_t offset_index, mask_index, hw_out;
  acc_t ly, lx, mask, v_dy, v_dx, v_mask;
};

template <typename acc_t>
__device__ __forceinline__ Located<acc_t> locate(const Args& a, const Inputs<acc_t>& in, int64_t q,
                                                 int64_t gk) {
  Located<acc_t> s;
  s.hw_out = a.out_h * a.out_w;
  const int64_t p = a.p0 + q;
  const int64_t n = p / s.hw_out;
  const int64_t r = p % s.hw_out;  // ho * W_out + wo
  const int64_t k = gk % a.taps;
  // offset[n, 2*gk, ho, wo] is dy and offset[n, 2*gk + 1, ho, wo] is dx.
  s.offset_index = (n * 2 * a.samples + 2 * gk) * s.hw_out + r;
  s.mask_index = (n * a.samples + gk) * s.hw_out + r;
  const acc_t y =
      base_coordinate<acc_t>(r / a.out_w, a.stride_h, a.pad_h, k / a.kernel_w, a.dilation_h) +
      in.offset[s.offset_index];
  const acc_t x =
      base_coordinate<acc_t>(r % a.out_w, a.stride_w, a.pad_w, k % a.kernel_w, a.dilation_w) +
      in.offset[s.offset_index + s.hw_out];
  s.mask = in.mask ? in.mask[s.mask_index] : acc_t(1);
  s.v_dy = in.v_offset ? in.v_offset[s.offset_index] : acc_t(0);
  s.v_dx = in.v_offset ? in.v_offset[s.offset_index + s.hw_out] : acc_t(0);
  s.v_mask = in.v_mask ? in.v_mask[s.mask_index] : acc_t(0);
  s.valid = in_sampling_range(y, x, a.height, a.width);
  s.base = 0;
  s.ly = s.lx = acc_t(0);
  if (s.valid) {
    const BilinearCell<acc_t> cell = locate_cell(y, x);
    // Corner (y0, x0) sits at (y0 + 1, x0 + 1) of the bordered image.
    s.base = n * a.image_len + ((cell.y0 + 1) * a.padded_w + (cell.x0 + 1)) * a.channels;
    s.ly = cell.ly;
    s.lx = cell.lx;
  }
  return s;
}

// Element offsets of the four corners from a cell's channel-c entry (bordered layout).
__device__ __forceinline__ void corner_steps(const Args& a, int64_t step[4]) {
  step[0] = 0;
  step[1] = a.channels;
  step[2] = a.padded_w * a.channels;
  step[3] = step[2] + a.channels;
}

// Column entry of channel c at tap k in a row: (conv group, tap, channel of the group).
__device__ __forceinline__ int64_t column_of(const Args& a, int64_t c, int64_t k) {
  const int64_t group = c / a.channels_per_group;
  return group * a.taps * a.channels_per_group + k * a.channels_per_group +
         (c - group * a.channels_per_group);
}

#define DEFORMCONV_GRID_STRIDE(i, total)                                                     \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (total); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

template <typename acc_t>
__global__ void fill_kernel(Args a, Inputs<acc_t> in, acc_t* d, acc_t* cols) {
  const int64_t per_og = a.channels_per_offset_group;
  const bool has_dir = in.v_offset != nullptr || in.v_mask != nullptr;
  DEFORMCONV_GRID_STRIDE(i, a.pc * a.samples * per_og) {
    const int64_t cl = i % per_og;
    const int64_t gk = (i / per_og) % a.samples;
    const int64_t q = i / (per_og * a.samples);
    const int64_t c = (gk / a.taps) * per_og + cl;
    const int64_t entry = q * a.columns + column_of(a, c, gk % a.taps);
    const Located<acc_t> s = locate(a, in, q, gk);
    acc_t col = acc_t(0), dval = acc_t(0);
    if (s.valid) {
      int64_t step[4];
      corner_steps(a, step);
      acc_t w[4], v[4], dir[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
      bilinear_weights(s.ly, s.lx, w);
      for (int j = 0; j < 4; ++j) v[j] = in.bordered[s.base + c + step[j]];
      col = s.mask * bilinear_combine(w, v);
      if (has_dir) directional_weights(s.ly, s.lx, s.mask, s.v_dy, s.v_dx, s.v_mask, dir);
      dval = bilinear_combine(dir, v);
      if (in.v_bordered) {
        for (int j = 0; j < 4; ++j) v[j] = in.v_bordered[s.base + c + step[j]];
        dval += s.mask * bilinear_combine(w, v);
      }
    }
    if (cols) cols[entry] = col;
    if (d) d[entry] = dval;
  }
}

template <typename acc_t>
__global__ void scatter_kernel(Args a, Inputs<acc_t> in, const acc_t* grad_a, const acc_t* grad_a2,
                               acc_t* grad_bordered) {
  const int64_t per_og = a.channels_per_offset_group;
  DEFORMCONV_GRID_STRIDE(i, a.pc * a.samples * per_og) {
    const int64_t cl = i % per_og;
    const int64_t gk = (i / per_og) % a.samples;
    const int64_t q = i / (per_og * a.samples);
    const int64_t c = (gk / a.taps) * per_og + cl;
    const Located<acc_t> s = locate(a, in, q, gk);
    if (!s.valid) continue;
    const int64_t entry = q * a.columns + column_of(a, c, gk % a.taps);
    const acc_t av = grad_a ? grad_a[entry] : acc_t(0);
    const acc_t a2v = grad_a2 ? grad_a2[entry] : acc_t(0);
    int64_t step[4];
    corner_steps(a, step);
    acc_t w[4], dir[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
    bilinear_weights(s.ly, s.lx, w);
    if (grad_a) directional_weights(s.ly, s.lx, s.mask, s.v_dy, s.v_dx, s.v_mask, dir);
    for (int j = 0; j < 4; ++j) {
      atomicAdd(grad_bordered + s.base + c + step[j], dir[j] * av + s.mask * w[j] * a2v);
    }
  }
}

template <typename acc_t>
__global__ void sample_grads_kernel(Args a, Inputs<acc_t> in, const acc_t* grad_a,
                                    const acc_t* grad_a2, acc_t* grad_offset, acc_t* grad_mask) {
  const int64_t per_og = a.channels_per_offset_group;
  const bool has_dir = in.v_offset != nullptr || in.v_mask != nullptr;
  DEFORMCONV_GRID_STRIDE(i, a.pc * a.samples) {
    const int64_t gk = i % a.samples;
    const int64_t q = i / a.samples;
    const Located<acc_t> s = locate(a, in, q, gk);
    acc_t g_dy = acc_t(0), g_dx = acc_t(0), g_mask = acc_t(0);
    if (s.valid) {
      int64_t step[4];
      corner_steps(a, step);
      acc_t e[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
      acc_t f[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
      for (int64_t cl = 0; cl < per_og; ++cl) {
        const int64_t c = (gk / a.taps) * per_og + cl;
        const int64_t entry = q * a.columns + column_of(a, c, gk % a.taps);
        const acc_t av = grad_a ? grad_a[entry] : acc_t(0);
        const acc_t a2v = grad_a2 ? grad_a2[entry] : acc_t(0);
        for (int j = 0; j < 4; ++j) {
          const acc_t x = in.bordered[s.base + c + step[j]];
          const acc_t vx = in.v_bordered ? in.v_bordered[s.base + c + step[j]] : acc_t(0);
          e[j] += av * vx + a2v * x;
          if (has_dir) f[j] += av * x;
        }
      }
      second_order_sample_grads(e, f, s.ly, s.lx, s.mask, s.v_dy, s.v_dx, s.v_mask, &g_dy, &g_dx,
                                &g_mask);
    }
    grad_offset[s.offset_index] = g_dy;
    grad_offset[s.offset_index + s.hw_out] = g_dx;
    if (grad_mask) grad_mask[s.mask_index] = g_mask;
  }
}

#undef DEFORMCONV_GRID_STRIDE

// One 1-D grid-stride launch over `total` items on the current stream.
template <typename... Params, typename... Rest>
void launch(void (*kernel)(Params...), int64_t total, Rest&&... rest) {
  if (total == 0) return;
  const dim3 grid(
      static_cast<unsigned>(std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks)));
  const dim3 block(kThreads);
  launch_kernel(kernel, grid, block, backend::current_stream(), std::forward<Rest>(rest)...);
}

}  // namespace

template <typename acc_t>
void launch_fill(const Args& a, const Inputs<acc_t>& in, acc_t* d, acc_t* cols) {
  launch(fill_kernel<acc_t>, a.pc * a.samples * a.channels_per_offset_group, a, in, d, cols);
}

template <typename acc_t>
void launch_scatter(const Args& a, const Inputs<acc_t>& in, const acc_t* grad_a,
                    const acc_t* grad_a2, acc_t* grad_bordered) {
  launch(scatter_kernel<acc_t>, a.pc * a.samples * a.channels_per_offset_group, a, in, grad_a,
         grad_a2, grad_bordered);
}

template <typename acc_t>
void launch_sample_grads(const Args& a, const Inputs<acc_t>& in, const acc_t* grad_a,
                         const acc_t* grad_a2, acc_t* grad_offset, acc_t* grad_mask) {
  launch(sample_grads_kernel<acc_t>, a.pc * a.samples, a, in, grad_a, grad_a2, grad_offset,
         grad_mask);
}

#define DEFORMCONV_INSTANTIATE(T)                                                         \
  template void launch_fill<T>(const Args&, const Inputs<T>&, T*, T*);                    \
  template void launch_scatter<T>(const Args&, const Inputs<T>&, const T*, const T*, T*); \
  template void launch_sample_grads<T>(const Args&, const Inputs<T>&, const T*, const T*, T*, T*);
DEFORMCONV_INSTANTIATE(float)
DEFORMCONV_INSTANTIATE(double)
#undef DEFORMCONV_INSTANTIATE

}  // namespace second_order
}  // namespace cuda
}  // namespace deformconv
