// Zero-padded bilinear sampling and its coordinate gradient, shared by the CPU and CUDA backends.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DEFORMCONV_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DEFORMCONV_HOST_DEVICE inline
#endif

namespace deformconv {

// A sample point (y, x) in a plane of height x width is defined as 0 unless
// -1 < y < height and -1 < x < width. The comparisons are written so that NaN
// fails them, and no coordinate is converted to an integer before this test.
// within_sampling_range is the same test for coordinates of any floating type or GCC / Clang
// vector of them (a lane mask then), with the bounds already in the coordinates' element type.
template <typename coord_t, typename bound_t>
DEFORMCONV_HOST_DEVICE auto within_sampling_range(coord_t y, coord_t x, bound_t height,
                                                  bound_t width) {
  return y > -1 && y < height && x > -1 && x < width;
}

template <typename acc_t>
DEFORMCONV_HOST_DEVICE bool in_sampling_range(acc_t y, acc_t x, int64_t height, int64_t width) {
  return within_sampling_range(y, x, static_cast<acc_t>(height), static_cast<acc_t>(width));
}

// The top-left corner (y0, x0) of the 2x2 cell holding an in-range point and the
// fractional position (ly, lx) inside it. y0 lies in [-1, height-1]: a corner
// outside [0, height) x [0, width) contributes 0 (per-corner zero padding).
template <typename acc_t>
struct BilinearCell {
  int64_t y0;
  int64_t x0;
  acc_t ly;
  acc_t lx;
};

// Only call with a point for which in_sampling_range(...) is true.
template <typename acc_t>
DEFORMCONV_HOST_DEVICE BilinearCell<acc_t> locate_cell(acc_t y, acc_t x) {
  const acc_t fy = ::floor(y);
  const acc_t fx = ::floor(x);
  BilinearCell<acc_t> cell;
  cell.y0 = static_cast<int64_t>(fy);
  cell.x0 = static_cast<int64_t>(fx);
  cell.ly = y - fy;
  cell.lx = x - fx;
  return cell;
}

// Weights of the corners (y0,x0), (y0,x0+1), (y0+1,x0), (y0+1,x0+1), in that order. (Here and
// in bilinear_coordinate_grad acc_t may also be a GCC / Clang vector: the CPU's lane loops.)
template <typename acc_t>
DEFORMCONV_HOST_DEVICE void bilinear_weights(acc_t ly, acc_t lx, acc_t w[4]) {
  const acc_t hy = 1 - ly;
  const acc_t hx = 1 - lx;
  w[0] = hy * hx;
  w[1] = hy * lx;
  w[2] = ly * hx;
  w[3] = ly * lx;
}

// Value of corner (y, x) of a row-major plane, 0 outside [0, height) x [0, width).
template <typename acc_t, typename scalar_t>
DEFORMCONV_HOST_DEVICE acc_t corner_value(const scalar_t* plane, int64_t height, int64_t width,
                                          int64_t y, int64_t x) {
  if (y < 0 || y >= height || x < 0 || x >= width) return acc_t(0);
  return static_cast<acc_t>(plane[y * width + x]);
}

// The four corner values of a cell, in the order of bilinear_weights.
template <typename acc_t, typename scalar_t>
DEFORMCONV_HOST_DEVICE void cell_values(const scalar_t* plane, int64_t height, int64_t width,
                                        const BilinearCell<acc_t>& cell, acc_t v[4]) {
  v[0] = corner_value<acc_t>(plane, height, width, cell.y0, cell.x0);
  v[1] = corner_value<acc_t>(plane, height, width, cell.y0, cell.x0 + 1);
  v[2] = corner_value<acc_t>(plane, height, width, cell.y0 + 1, cell.x0);
  v[3] = corner_value<acc_t>(plane, height, width, cell.y0 + 1, cell.x0 + 1);
}

// Element offsets (y * row_stride + x * col_stride) of the four corners of a cell,
// in the order of bilinear_weights, and whether each lies inside
// [0, height) x [0, width). An outside corner has offset 0 and is never read: it
// contributes 0 (per-corner zero padding). Lets a strided (e.g. channels-last)
// layout reuse one cell for every channel.
template <typename index_t>
struct CellCorners {
  index_t offset[4];
  bool inside[4];
};

template <typename index_t, typename acc_t>
DEFORMCONV_HOST_DEVICE CellCorners<index_t> cell_corners(const BilinearCell<acc_t>& cell,
                                                         int64_t height, int64_t width,
                                                         index_t row_stride, index_t col_stride) {
  CellCorners<index_t> corners;
#if defined(__CUDACC__) || defined(__HIPCC__)
#pragma unroll
#endif
  for (int c = 0; c < 4; ++c) {
    const int64_t y = cell.y0 + (c >> 1);
    const int64_t x = cell.x0 + (c & 1);
    corners.inside[c] = y >= 0 && y < height && x >= 0 && x < width;
    corners.offset[c] = corners.inside[c] ? static_cast<index_t>(y) * row_stride +
                                                static_cast<index_t>(x) * col_stride
                                          : index_t(0);
  }
  return corners;
}

// The four corner values at `corners` of the plane starting at `base`, 0 outside.
template <typename acc_t, typename scalar_t, typename index_t>
DEFORMCONV_HOST_DEVICE void corner_values(const scalar_t* base, const CellCorners<index_t>& corners,
                                          acc_t v[4]) {
#if defined(__CUDACC__) || defined(__HIPCC__)
#pragma unroll
#endif
  for (int c = 0; c < 4; ++c) {
    v[c] = corners.inside[c] ? static_cast<acc_t>(base[corners.offset[c]]) : acc_t(0);
  }
}

// The bilinear combination of four corner values with their weights.
template <typename acc_t>
DEFORMCONV_HOST_DEVICE acc_t bilinear_combine(const acc_t w[4], const acc_t v[4]) {
  return w[0] * v[0] + w[1] * v[1] + w[2] * v[2] + w[3] * v[3];
}

// Zero-padded bilinear sample of a row-major plane at (y, x).
template <typename acc_t, typename scalar_t>
DEFORMCONV_HOST_DEVICE acc_t bilinear_sample(const scalar_t* plane, int64_t height, int64_t width,
                                             acc_t y, acc_t x) {
  if (!in_sampling_range(y, x, height, width)) return acc_t(0);
  const BilinearCell<acc_t> cell = locate_cell(y, x);
  acc_t v[4];
  acc_t w[4];
  cell_values(plane, height, width, cell, v);
  bilinear_weights(cell.ly, cell.lx, w);
  return w[0] * v[0] + w[1] * v[1] + w[2] * v[2] + w[3] * v[3];
}

// d(sample)/dy and d(sample)/dx inside a cell with corner values v (order of
// bilinear_weights). Outside the sampling range the sample is the constant 0 and
// both derivatives are 0: callers must not call this there.
template <typename acc_t>
DEFORMCONV_HOST_DEVICE void bilinear_coordinate_grad(const acc_t v[4], acc_t ly, acc_t lx,
                                                     acc_t* d_dy, acc_t* d_dx) {
  const acc_t hy = 1 - ly;
  const acc_t hx = 1 - lx;
  *d_dy = hx * (v[2] - v[0]) + lx * (v[3] - v[1]);
  *d_dx = hy * (v[1] - v[0]) + ly * (v[3] - v[2]);
}

// Derivatives of the four corner weights (order of bilinear_weights) with respect
// to y and x. Each weight is linear in y and in x, so d2w/dy2 = d2w/dx2 = 0 and
// the only second derivative is the cross term of bilinear_cross_grad.
template <typename acc_t>
DEFORMCONV_HOST_DEVICE void bilinear_weight_grads(acc_t ly, acc_t lx, acc_t dw_dy[4],
                                                  acc_t dw_dx[4]) {
  const acc_t hy = acc_t(1) - ly;
  const acc_t hx = acc_t(1) - lx;
  dw_dy[0] = -hx;
  dw_dy[1] = -lx;
  dw_dy[2] = hx;
  dw_dy[3] = lx;
  dw_dx[0] = -hy;
  dw_dx[1] = hy;
  dw_dx[2] = -ly;
  dw_dx[3] = ly;
}

// d2(sample)/dy dx inside a cell with corner values v (order of bilinear_weights):
// v00 - v01 - v10 + v11, the same everywhere in the cell. Like the first
// derivatives, it is 0 where the sample is defined as 0: callers must not call it there.
template <typename acc_t>
DEFORMCONV_HOST_DEVICE acc_t bilinear_cross_grad(const acc_t v[4]) {
  return v[0] - v[1] - v[2] + v[3];
}

// Corner weights of the directional derivative of one modulated sample,
//   d/dt [(mask + t*v_mask) * bilinear(y + t*v_dy, x + t*v_dx)] at t = 0
//   = mask * (v_dy * dw/dy + v_dx * dw/dx) + v_mask * w   (per corner, order of bilinear_weights),
// used by the double backward with (v_dy, v_dx, v_mask) the cotangents of grad_offset / grad_mask.
template <typename acc_t>
DEFORMCONV_HOST_DEVICE void directional_weights(acc_t ly, acc_t lx, acc_t mask, acc_t v_dy,
                                                acc_t v_dx, acc_t v_mask, acc_t dir[4]) {
  acc_t w[4], dw_dy[4], dw_dx[4];
  bilinear_weights(ly, lx, w);
  bilinear_weight_grads(ly, lx, dw_dy, dw_dx);
  for (int c = 0; c < 4; ++c) dir[c] = mask * (v_dy * dw_dy[c] + v_dx * dw_dx[c]) + v_mask * w[c];
}

// Second-order grad_offset (dy, dx) and grad_mask of one in-range sample, from two sets of
// corner dot products over its channels (A = grad_columns, A2 = grad_out . v_weight^T):
//   e = <A, corners of v_input> + <A2, corners of input>,   f = <A, corners of input>.
// With x = d2/dydx . f (bilinear_cross_grad):
//   grad_mask = w.e + v_dy * dw/dy.f + v_dx * dw/dx.f
//   grad_dy   = mask * (dw/dy.e + v_dx * x) + v_mask * dw/dy.f
//   grad_dx   = mask * (dw/dx.e + v_dy * x) + v_mask * dw/dx.f
// A sample defined as 0 gets 0 for all three: callers must not call this there.
template <typename acc_t>
DEFORMCONV_HOST_DEVICE void second_order_sample_grads(const acc_t e[4], const acc_t f[4], acc_t ly,
                                                      acc_t lx, acc_t mask, acc_t v_dy, acc_t v_dx,
                                                      acc_t v_mask, acc_t* grad_dy, acc_t* grad_dx,
                                                      acc_t* grad_mask) {
  acc_t w[4], e_dy, e_dx, f_dy, f_dx;
  bilinear_weights(ly, lx, w);
  bilinear_coordinate_grad(e, ly, lx, &e_dy, &e_dx);
  bilinear_coordinate_grad(f, ly, lx, &f_dy, &f_dx);
  const acc_t cross = bilinear_cross_grad(f);
  *grad_dy = mask * (e_dy + v_dx * cross) + v_mask * f_dy;
  *grad_dx = mask * (e_dx + v_dy * cross) + v_mask * f_dx;
  *grad_mask = w[0] * e[0] + w[1] * e[1] + w[2] * e[2] + w[3] * e[3] + v_dy * f_dy + v_dx * f_dx;
}

// Sampling position of kernel tap (i, j) for output pixel (ho, wo) before the learned offset.
template <typename acc_t>
DEFORMCONV_HOST_DEVICE acc_t base_coordinate(int64_t out_index, int64_t stride, int64_t pad,
                                             int64_t tap, int64_t dilation) {
  return static_cast<acc_t>(out_index * stride - pad + tap * dilation);
}

}  // namespace deformconv
