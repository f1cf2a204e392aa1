// CPU forward and backward of the DCN family ops (dcnv3, dcnv4): one kernel template over OffsetMaskLayout, every dtype, multithreaded and deterministic.
//
// Both read the input as an opmath copy in one plane per (image, group) with a one-pixel zero
// border (and one zero row more), so a point's four corners are a base and two steps with no
// per-corner test, and a group's pixels are contiguous (in the channels-last input a group's
// cells would fall in a quarter or less of the cache sets). Both locate the taps of a block of
// pixels in one row and one group at a time, a tap per vector lane (TapBlock,
// cpu/dcn_family_taps.h); a tap out of range gets zero weights at an all-zero cell.
// Each thread builds the planes it needs in its own buffer just before use, so they are in
// cache and the scratch memory is a few planes per thread, not a copy of the input.
// Both passes split an image's groups into bands (one group for small images, up to all G for
// large ones: task_plan) and sweep a band's output rows a few at a time, each group in turn, so
// the rows' data, whose cache lines the band's groups share, is still in cache for the next
// group. Forward: tasks own ranges of (n, band, chunk of rows), so a thread builds each
// (n, band)'s planes of its range once; each (pixel, group) sums its taps' corner weights
// (bilinear weight times mask) times the corners over the group's D contiguous channels in
// vector registers (acc_t = float for 16-bit data, rounded once on store). Backward: tasks own
// (n, band) and build its input planes and zero gradient planes; the scatter, grad_offset and
// grad_mask of a task come from one pass, so no two tasks write one element and every sum runs
// in a fixed (pixel, tap, channel-lane) order per group, whatever the thread count and the
// band: bitwise reproducible, no atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/dcn_family.h"
#include "common/dcn_family_checks.h"
#include "common/index_width.h"
#include "common/opmath.h"
#include "cpu/channel_loops.h"
#include "cpu/cpu_paths.h"
#include "cpu/dcn_family_loops.h"
#include "cpu/dcn_family_taps.h"

namespace deformconv {
namespace cpu {
namespace family {
namespace {

using deformconv::family::OffsetMaskLayout;
using deformconv::family::Params;
using deformconv::family::sample_origin;
using deformconv::family::Sizes;

// One call's data: offset / mask in acc_t at their layout's strides (mask already advanced by
// the layout's mask_start); each tap's grid position; how its pass splits the work (band,
// chunk_rows: task_plan); the size of one (image, group) input plane (fill_planes: an opmath
// (H+3, W+2, D) copy with a zero border and one more zero row, so every corner of an in-range
// point lies inside the plane, a point's four corners are one base and two steps, and the cells
// at (H+1, 0) are all zero, where a tap out of range points) and its corner steps.
template <typename acc_t>
struct Call {
  const acc_t* offset;
  const acc_t* mask;
  OffsetMaskLayout layout;
  Params q;
  Sizes s;
  std::vector<acc_t> tap_y, tap_x;  // each tap's grid position (family::tap_grid)
  int64_t band;                     // groups per task: a divisor of G (task_plan)
  int64_t chunk_rows;               // output rows a task sweeps per group in turn
  int64_t plane_len;                // (H+3) * (W+2) * D: one (image, group) plane
  CornerSteps steps;                // D, (W+2) * D
  bool index32;                     // plane_len fits int32 (fits_int32)

  int64_t bands() const { return q.group / band; }
  int64_t chunks() const { return (s.out_h + chunk_rows - 1) / chunk_rows; }

  TapBlock<acc_t> tap_block() const {
    return TapBlock<acc_t>(s.points, TapBlock<acc_t>::block_pixels(s.points, s.out_w), tap_y.data(),
                           tap_x.data(), q.stride_w, s.height + 1, index32);
  }
};

// An uninitialised buffer of n acc_t, owned by the returned tensor.
template <typename acc_t>
at::Tensor scratch(int64_t n) {
  return at::empty({n}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
}

// The plane layout: image n, group g of the channels-last input (N, H, W, G * D) as an
// (H+3, W+2, D) plane in acc_t whose interior is rows 1..H, columns 1..W.
template <typename From, typename To>
DEFORMCONV_CPU_INLINE void copy_run(const From* from, To* to, int64_t n) {
  for (int64_t i = 0; i < n; ++i) to[i] = static_cast<To>(from[i]);
}

// planes[j * plane_len ...] = group g0 + j of image (the input at image n, (H, W, C)) for
// j < band: its pixels, and zeros elsewhere. One pass over the image's pixels.
template <typename acc_t, typename scalar_t>
void fill_planes(acc_t* planes, int64_t plane_len, const scalar_t* image, int64_t g0, int64_t band,
                 const Sizes& s) {
  const int64_t H = s.height, W = s.width, D = s.group_channels, C = s.channels;
  const int64_t row_len = (W + 2) * D;
  for (int64_t j = 0; j < band; ++j) {
    acc_t* plane = planes + j * plane_len;
    std::fill(plane, plane + row_len, acc_t(0));
    std::fill(plane + (H + 1) * row_len, plane + (H + 3) * row_len, acc_t(0));
  }
  for (int64_t h = 0; h < H; ++h) {
    acc_t* cells = planes + (h + 1) * row_len;
    for (int64_t j = 0; j < band; ++j) {
      std::fill(cells + j * plane_len, cells + j * plane_len + D, acc_t(0));
      std::fill(cells + j * plane_len + (W + 1) * D, cells + j * plane_len + row_len, acc_t(0));
    }
    for (int64_t w = 0; w < W; ++w) {
      const scalar_t* pixel = image + (h * W + w) * C + g0 * D;
      for (int64_t j = 0; j < band; ++j)
        copy_run(pixel + j * D, cells + j * plane_len + (w + 1) * D, D);
    }
  }
}

// Groups [g0, g0 + band) of image (grad_input at image n, (H, W, C)) = the interiors of planes
// (laid out as by fill_planes), rounded to scalar_t.
template <typename acc_t, typename scalar_t>
void drain_planes(const acc_t* planes, int64_t plane_len, scalar_t* image, int64_t g0, int64_t band,
                  const Sizes& s) {
  const int64_t H = s.height, W = s.width, D = s.group_channels, C = s.channels;
  const int64_t row_len = (W + 2) * D;
  for (int64_t h = 0; h < H; ++h) {
    const acc_t* cells = planes + (h + 1) * row_len;
    for (int64_t w = 0; w < W; ++w) {
      scalar_t* pixel = image + (h * W + w) * C + g0 * D;
      for (int64_t j = 0; j < band; ++j)
        copy_run(cells + j * plane_len + (w + 1) * D, pixel + j * D, D);
    }
  }
}

// The forward's items [item_begin, item_end) of (N * bands * chunks), item
// (n * bands + j) * chunks + c: output rows [c * chunk_rows, (c + 1) * chunk_rows) of image n,
// for each group of band j in turn. A thread's items are consecutive, so it meets each
// (image, band) once: there it builds the band's input planes in its buffer (fill_planes), where
// they stay in cache for the band's rows. Per block of pixels of a row, the taps are located
// first (TapBlock), then each pixel's sum over the group's channels (kWide: in 16-lane vectors,
// see sum_points).
template <bool kWide, typename scalar_t, typename acc_t>
DEFORMCONV_CPU_INLINE void forward_rows(const Call<acc_t>& k, const scalar_t* input, scalar_t* out,
                                        int64_t item_begin, int64_t item_end) {
  const Params q = k.q;
  const Sizes s = k.s;
  const OffsetMaskLayout L = k.layout;
  const int64_t D = s.group_channels, C = s.channels;
  const acc_t scale = static_cast<acc_t>(q.offset_scale);
  TapBlock<acc_t> block = k.tap_block();
  const int64_t B = block.max_pixels();
  std::vector<acc_t> sums(D);  // 16-bit output: the sums before their one rounding
  const at::Tensor buffer = scratch<acc_t>(k.band * k.plane_len);
  acc_t* planes = buffer.data_ptr<acc_t>();
  const int64_t image_len = s.height * s.width * C;
  int64_t filled = -1;  // the task (n * bands + j) whose planes are built
  for (int64_t item = item_begin; item < item_end; ++item) {
    const int64_t task = item / k.chunks(), chunk = item % k.chunks() * k.chunk_rows;
    const int64_t n = task / k.bands(), g0 = task % k.bands() * k.band;
    if (task != filled) {
      fill_planes(planes, k.plane_len, input + n * image_len, g0, k.band, s);
      filled = task;
    }
    for (int64_t g = g0; g < g0 + k.band; ++g) {
      const acc_t* image = planes + (g - g0) * k.plane_len;
      for (int64_t ho = chunk; ho < std::min(chunk + k.chunk_rows, s.out_h); ++ho) {
        for (int64_t wo0 = 0; wo0 < s.out_w; wo0 += B) {
          const int64_t pixels = std::min(B, s.out_w - wo0);
          const int64_t r0 = (n * s.out_h + ho) * s.out_w + wo0;  // the block's first pixel's row
          acc_t origin_y, origin_x;
          sample_origin(q, ho, wo0, &origin_y, &origin_x);
          block.gather(pixels, k.offset + r0 * L.offset_row + g * L.offset_group, L.offset_row,
                       k.mask + r0 * L.mask_row + g * L.mask_group, L.mask_row);
          block.template locate<false>(pixels, origin_y, origin_x, scale, s.height, s.width,
                                       k.steps);
          for (int64_t b = 0; b < pixels; ++b) {
            scalar_t* o = out + (r0 + b) * C + g * D;
            if constexpr (std::is_same_v<scalar_t, acc_t>) {
              sum_points<kWide>(image, k.steps, block.taps(b), o, D);
            } else {
              sum_points<kWide>(image, k.steps, block.taps(b), sums.data(), D);
              for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(sums[d]);
            }
          }
        }
      }
    }
  }
}

// Every gradient of the tasks [task_begin, task_end) of (N * bands), task n * bands + j:
// grad_input (channels-last, scalar_t) of image n, band j's groups, and grad_offset / grad_mask
// (acc_t, at the call's layout) of its pixels and groups. A task builds its input planes
// (fill_planes) and zero gradient planes in this call's buffer, so they are in cache, then
// sweeps the output rows in chunks of k.chunk_rows, each group of the band in turn over the
// chunk, per block of pixels in a row: every tap's location and weights first (TapBlock), then
// per pixel one pass over the channels for all its taps (scatter_and_dots_points), then the
// offset / mask gradients of the block; last, the gradient planes' interiors go to grad_input
// (drain_planes). kWide: 16-lane channel loops (scatter_and_dots_points).
template <bool kWide, typename scalar_t, typename acc_t>
DEFORMCONV_CPU_INLINE void backward_tasks(const Call<acc_t>& k, const scalar_t* input,
                                          const scalar_t* grad_output, scalar_t* grad_input,
                                          acc_t* grad_offset, acc_t* grad_mask, int64_t task_begin,
                                          int64_t task_end) {
  const Params q = k.q;
  const Sizes s = k.s;
  const OffsetMaskLayout L = k.layout;
  const int64_t D = s.group_channels, C = s.channels;
  const acc_t scale = static_cast<acc_t>(q.offset_scale);
  std::vector<acc_t> go_buffer(D);
  TapBlock<acc_t> block = k.tap_block();
  const int64_t B = block.max_pixels();
  // The planes, 64-byte aligned. The gradient planes start kGradShift elements past a 4 KiB
  // multiple from the input planes: were the distance a multiple of 4 KiB, a corner's load from
  // the input and the previous point's store to the same corner's gradient would look alike to
  // the CPU's store-to-load forwarding check (4K aliasing) and stall.
  constexpr int64_t kPage = 4096 / sizeof(acc_t), kGradShift = 320 / sizeof(acc_t);
  const int64_t planes_len = k.band * k.plane_len;
  const int64_t grad_at = (planes_len + kPage - 1) / kPage * kPage + kGradShift;
  const at::Tensor buffer = scratch<acc_t>(grad_at + planes_len);
  acc_t* planes = buffer.data_ptr<acc_t>();
  acc_t* grad_planes = planes + grad_at;
  const int64_t image_len = s.height * s.width * C;
  for (int64_t task = task_begin; task < task_end; ++task) {
    const int64_t n = task / k.bands(), g0 = task % k.bands() * k.band;
    fill_planes(planes, k.plane_len, input + n * image_len, g0, k.band, s);
    std::fill(grad_planes, grad_planes + planes_len, acc_t(0));
    for (int64_t chunk = 0; chunk < s.out_h; chunk += k.chunk_rows) {
      for (int64_t g = g0; g < g0 + k.band; ++g) {
        const acc_t* image = planes + (g - g0) * k.plane_len;
        acc_t* grad_image = grad_planes + (g - g0) * k.plane_len;
        for (int64_t ho = chunk; ho < std::min(chunk + k.chunk_rows, s.out_h); ++ho) {
          for (int64_t wo0 = 0; wo0 < s.out_w; wo0 += B) {
            const int64_t pixels = std::min(B, s.out_w - wo0);
            const int64_t r0 = (n * s.out_h + ho) * s.out_w + wo0;
            acc_t origin_y, origin_x;
            sample_origin(q, ho, wo0, &origin_y, &origin_x);
            const int64_t offset_at = r0 * L.offset_row + g * L.offset_group;
            const int64_t mask_at = r0 * L.mask_row + g * L.mask_group;
            block.gather(pixels, k.offset + offset_at, L.offset_row, k.mask + mask_at, L.mask_row);
            block.template locate<true>(pixels, origin_y, origin_x, scale, s.height, s.width,
                                        k.steps);
            for (int64_t b = 0; b < pixels; ++b) {
              const scalar_t* go_in = grad_output + (r0 + b) * C + g * D;
              const acc_t* go;
              if constexpr (std::is_same_v<scalar_t, acc_t>) {
                go = go_in;
              } else {
                for (int64_t d = 0; d < D; ++d) go_buffer[d] = static_cast<acc_t>(go_in[d]);
                go = go_buffer.data();
              }
              // grad_input: each corner += m * w_c * grad_output (a corner in the border is
              // dropped with it); dot_c = <grad_output, corner c> for the offset and mask
              // gradients.
              scatter_and_dots_points<kWide>(image, grad_image, k.steps, block.taps(b), go, D,
                                             block.dots(b));
            }
            block.gradients(pixels, scale, grad_offset + offset_at, L.offset_row,
                            grad_mask + mask_at, L.mask_row);
          }
        }
      }
    }
    drain_planes(grad_planes, k.plane_len, grad_input + n * image_len, g0, k.band, s);
  }
}

// The passes' entry points: target clones for AVX2+FMA and the baseline (8-lane channel loops),
// and AVX-512 (16-lane channel loops for 16-channel multiples); family_loops_avx512() picks.
template <typename scalar_t, typename acc_t>
DEFORMCONV_CPU_CLONES_AVX2 void forward_rows_avx2(const Call<acc_t>& k, const scalar_t* input,
                                                  scalar_t* out, int64_t item_begin,
                                                  int64_t item_end) {
  forward_rows</*kWide=*/false>(k, input, out, item_begin, item_end);
}

template <typename scalar_t, typename acc_t>
DEFORMCONV_CPU_AVX512 void forward_rows_avx512(const Call<acc_t>& k, const scalar_t* input,
                                               scalar_t* out, int64_t item_begin,
                                               int64_t item_end) {
  forward_rows</*kWide=*/true>(k, input, out, item_begin, item_end);
}

template <typename scalar_t, typename acc_t>
DEFORMCONV_CPU_CLONES_AVX2 void backward_tasks_avx2(const Call<acc_t>& k, const scalar_t* input,
                                                    const scalar_t* grad_output,
                                                    scalar_t* grad_input, acc_t* grad_offset,
                                                    acc_t* grad_mask, int64_t task_begin,
                                                    int64_t task_end) {
  backward_tasks</*kWide=*/false>(k, input, grad_output, grad_input, grad_offset, grad_mask,
                                  task_begin, task_end);
}

template <typename scalar_t, typename acc_t>
DEFORMCONV_CPU_AVX512 void backward_tasks_avx512(const Call<acc_t>& k, const scalar_t* input,
                                                 const scalar_t* grad_output, scalar_t* grad_input,
                                                 acc_t* grad_offset, acc_t* grad_mask,
                                                 int64_t task_begin, int64_t task_end) {
  backward_tasks</*kWide=*/true>(k, input, grad_output, grad_input, grad_offset, grad_mask,
                                 task_begin, task_end);
}

// How a pass splits its work.
struct TaskPlan {
  int64_t band;        // groups per task: a divisor of G
  int64_t chunk_rows;  // output rows a task sweeps per group before the next group
};

// The plan of a forward or backward call with input elements of data_bytes and opmath elements
// of acc_bytes. The results do not depend on it (each group's sums run in the same order in any
// plan); it only decides what a task reads together.
//   - One group per task while one image's data for the pass fits kSmallImage (the forward's:
//     input, output, offsets and masks; the backward's: input, grad_output and grad_input,
//     offsets, masks and their gradients): an (image, group) task then still finds in cache
//     much of what it shares with the image's other groups.
//   - Past that, a group's task would fetch the lines holding its slice of every pixel row
//     again, with its neighbours' slices, from further out. A task then takes the most groups
//     that still leave a task per thread, with planes of at most kMaxPlanes bytes, and sweeps
//     the rows in chunks of about kChunk bytes of the per-pixel data, each group in turn, so
//     the next group finds the chunk's lines in cache while each group's plane stays as compact
//     as before.
// Measured on a 2-core AVX-512 Xeon (2 MiB L2 per core), 2 threads, float32, InternImage-T
// shapes at batch 2, each pass alone against one group per task, interleaved in one process.
// Backward: stage 1 (5.1 MB per image; 4 groups, 4-row chunks) 19% faster (2 groups: 10%);
// stage 2 (2.6 MB; 8 groups) within 1%; stage 3 (1.3 MB) 4-9% slower with 8 or 16 groups,
// hence one there. Forward: stage 1 (3.0 MB; 4 groups) 8-10% faster; stage 2 (1.5 MB) 4-6%
// slower with 8 groups, hence one there. Chunks of 2 to 16 rows measured alike at stage 1; the
// 4 groups' channels side by side in one plane, swept a row at a time, were 0-3% slower than
// one group. On a 2-core AVX2 EPYC (Zen 3, 512 KiB L2 per core), stage 1's plan measured the
// same as one group per task at 2 threads, within 5%, and 9% faster at 1 thread (4 groups).
// DEFORMCONV_CPU_FAMILY_BAND overrides the band (family_band_override).
TaskPlan task_plan(const Params& q, const Sizes& s, int64_t data_bytes, int64_t acc_bytes,
                   bool backward) {
  constexpr int64_t kSmallImage = int64_t(2) << 20, kMaxPlanes = int64_t(2) << 20;
  constexpr int64_t kChunk = int64_t(256) << 10;
  const int64_t copies = backward ? 2 : 1;           // each tensor and its gradient, or it alone
  const int64_t positions = q.group * s.points * 3;  // per output pixel: offset pairs, mask
  const int64_t row_bytes =  // one output row: output or grad_output, offsets, masks
      s.out_w * (s.channels * data_bytes + copies * positions * acc_bytes);
  const int64_t image = copies * s.height * s.width * s.channels * data_bytes + s.out_h * row_bytes;
  const int64_t group_plane = (s.height + 3) * (s.width + 2) * s.group_channels * acc_bytes;
  auto chosen_band = [&]() -> int64_t {
    if (image <= kSmallImage) return 1;
    const int64_t threads = at::get_num_threads();
    for (int64_t band = q.group; band > 1; --band) {
      if (q.group % band == 0 && s.batch * (q.group / band) >= threads &&
          copies * band * group_plane <= kMaxPlanes)
        return band;
    }
    return 1;
  };
  int64_t band = family_band_override();
  if (band > 0) {
    TORCH_CHECK(q.group % band == 0, "DEFORMCONV_CPU_FAMILY_BAND=", band,
                " must divide the call's group count, ", q.group);
  } else {
    band = chosen_band();
  }
  // Chunks only order the groups of a band. One group sweeps its rows in order anyway, so its
  // chunks are single rows: the forward then has a row per item to share between threads.
  if (band == 1) return {1, 1};
  return {band, std::max<int64_t>(1, kChunk / std::max<int64_t>(1, row_bytes))};
}

template <typename acc_t>
Call<acc_t> make_call(const at::Tensor& offset, const at::Tensor& mask,
                      const OffsetMaskLayout& layout, const Params& q, const Sizes& s,
                      TaskPlan plan) {
  const int64_t row_step = (s.width + 2) * s.group_channels;
  Call<acc_t> k{offset.data_ptr<acc_t>(),
                mask.data_ptr<acc_t>() + layout.mask_start,
                layout,
                q,
                s,
                std::vector<acc_t>(s.points),
                std::vector<acc_t>(s.points),
                plan.band,
                plan.chunk_rows,
                (s.height + 3) * row_step,
                CornerSteps{s.group_channels, row_step},
                fits_int32({(s.height + 3) * row_step})};
  for (int64_t p = 0; p < s.points; ++p) {
    int64_t ih, iw;
    deformconv::family::tap_position(p, q.kernel_h, q.kernel_w, q.remove_center, &ih, &iw);
    deformconv::family::tap_grid(q, ih, iw, &k.tap_y[p], &k.tap_x[p]);
  }
  return k;
}

// The forward of either op. input contiguous (N, H, W, C); offset / mask contiguous in opmath
// (for DCNv4 both are offset_mask; layout says where each value lives).
at::Tensor forward(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                   const OffsetMaskLayout& layout, const Params& q, const Sizes& s) {
  at::Tensor out = at::empty({s.batch, s.out_h, s.out_w, s.channels}, input.options());
  if (out.numel() == 0) return out;
  if (input.numel() == 0) return out.zero_();  // an empty image (H or W 0): every sample is 0
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "dcn_family", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const TaskPlan plan = task_plan(q, s, input.element_size(), sizeof(acc_t), /*backward=*/false);
    const Call<acc_t> k = make_call<acc_t>(offset, mask, layout, q, s, plan);
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    const int64_t item_work =
        std::max<int64_t>(1, k.band * k.chunk_rows * s.out_w * s.group_channels * s.points);
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / item_work);
    const bool avx512 = family_loops_avx512();
    at::parallel_for(0, s.batch * k.bands() * k.chunks(), grain, [&](int64_t begin, int64_t end) {
      if (avx512) {
        forward_rows_avx512(k, in, out_ptr, begin, end);
      } else {
        forward_rows_avx2(k, in, out_ptr, begin, end);
      }
    });
  });
  return out;
}

// The backward of either op: returns grad_input in input's dtype and writes every element of
// grad_offset / grad_mask that the layout addresses (opmath, shaped like offset / mask; for DCNv4
// one tensor, as offset_mask, whose padding columns the caller zeroes).
at::Tensor backward(const at::Tensor& grad_output, const at::Tensor& input,
                    const at::Tensor& offset, const at::Tensor& mask,
                    const OffsetMaskLayout& layout, const Params& q, const Sizes& s,
                    at::Tensor& grad_offset, at::Tensor& grad_mask) {
  if (grad_output.numel() == 0 || input.numel() == 0) {
    grad_offset.zero_();
    grad_mask.zero_();
    return at::zeros_like(input);
  }
  at::Tensor grad_input = at::empty_like(input);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "dcn_family", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const TaskPlan plan = task_plan(q, s, input.element_size(), sizeof(acc_t), /*backward=*/true);
    const Call<acc_t> k = make_call<acc_t>(offset, mask, layout, q, s, plan);
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    scalar_t* gi = grad_input.data_ptr<scalar_t>();
    acc_t* g_offset = grad_offset.data_ptr<acc_t>();
    acc_t* g_mask = grad_mask.data_ptr<acc_t>() + layout.mask_start;
    const bool avx512 = family_loops_avx512();
    at::parallel_for(0, s.batch * k.bands(), 1, [&](int64_t begin, int64_t end) {
      if (avx512) {
        backward_tasks_avx512<scalar_t, acc_t>(k, in, go, gi, g_offset, g_mask, begin, end);
      } else {
        backward_tasks_avx2<scalar_t, acc_t>(k, in, go, gi, g_offset, g_mask, begin, end);
      }
    });
  });
  return grad_input;
}

at::Tensor position_arg(const at::Tensor& t) { return to_opmath(t).contiguous(); }

at::Tensor dcnv3_cpu(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                     at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                     at::IntArrayRef dilation, int64_t group, double offset_scale,
                     bool remove_center) {
  const Params q = deformconv::family::make_params(kernel_size, stride, padding, dilation, group,
                                                   offset_scale, remove_center, "dcnv3");
  const Sizes s = deformconv::family::check_dcnv3_args(input, offset, mask, q);
  return forward(input.contiguous(), position_arg(offset), position_arg(mask),
                 deformconv::family::dcnv3_layout(group, s.points), q, s);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
    const at::Tensor& mask, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t group, double offset_scale,
    bool remove_center) {
  const Params q = deformconv::family::make_params(kernel_size, stride, padding, dilation, group,
                                                   offset_scale, remove_center, "_dcnv3_backward");
  const Sizes s = deformconv::family::check_dcnv3_args(input, offset, mask, q);
  deformconv::family::check_grad_output(grad_output, input, s, "_dcnv3_backward");
  const at::Tensor offset_c = position_arg(offset);
  const at::Tensor mask_c = position_arg(mask);
  // backward() writes every element of both.
  at::Tensor grad_offset = at::empty_like(offset_c);
  at::Tensor grad_mask = at::empty_like(mask_c);
  at::Tensor grad_input =
      backward(grad_output.contiguous(), input.contiguous(), offset_c, mask_c,
               deformconv::family::dcnv3_layout(group, s.points), q, s, grad_offset, grad_mask);
  return {grad_input, grad_offset.to(offset.scalar_type()), grad_mask.to(mask.scalar_type())};
}

at::Tensor dcnv4_cpu(const at::Tensor& input, const at::Tensor& offset_mask,
                     at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                     at::IntArrayRef dilation, int64_t group, double offset_scale,
                     bool remove_center) {
  const Params q = deformconv::family::make_params(kernel_size, stride, padding, dilation, group,
                                                   offset_scale, remove_center, "dcnv4");
  const Sizes s = deformconv::family::check_dcnv4_args(input, offset_mask, q);
  const at::Tensor om = position_arg(offset_mask);
  return forward(input.contiguous(), om, om, deformconv::family::dcnv4_layout(group, s.points), q,
                 s);
}

std::tuple<at::Tensor, at::Tensor> dcnv4_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset_mask,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t group, double offset_scale, bool remove_center) {
  const Params q = deformconv::family::make_params(kernel_size, stride, padding, dilation, group,
                                                   offset_scale, remove_center, "_dcnv4_backward");
  const Sizes s = deformconv::family::check_dcnv4_args(input, offset_mask, q);
  deformconv::family::check_grad_output(grad_output, input, s, "_dcnv4_backward");
  const at::Tensor om = position_arg(offset_mask);
  // backward() writes every element of the first G * 3P columns; the padding columns are 0.
  at::Tensor grad_om = at::empty_like(om);
  const int64_t used = 3 * group * s.points;
  grad_om.narrow(-1, used, om.size(-1) - used).zero_();
  at::Tensor grad_input =
      backward(grad_output.contiguous(), input.contiguous(), om, om,
               deformconv::family::dcnv4_layout(group, s.points), q, s, grad_om, grad_om);
  return {grad_input, grad_om.to(offset_mask.scalar_type())};
}

}  // namespace
}  // namespace family
}  // namespace cpu

TORCH_LIBRARY_IMPL(deformconv, CPU, m) {
  m.impl("dcnv3", &cpu::family::dcnv3_cpu);
  m.impl("_dcnv3_backward", &cpu::family::dcnv3_backward_cpu);
  m.impl("dcnv4", &cpu::family::dcnv4_cpu);
  m.impl("_dcnv4_backward", &cpu::family::dcnv4_backward_cpu);
}

}  // namespace deformconv
