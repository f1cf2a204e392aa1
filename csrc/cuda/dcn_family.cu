// deformconv::dcnv3 / dcnv4 and their backward ops on CUDA: checks, layouts, the launch of the dcn_family.cuh kernels, and the fixed-point deterministic grad_input.
//
// offset, mask and offset_mask are read in opmath (common/opmath.h: 16-bit ones converted to
// float32) and contiguous; their gradients are computed in opmath and cast to each argument's
// dtype. grad_input is summed in opmath (float32 for 16-bit data, cast once at the end).
// Deterministic mode sums grad_input in fixed point (int64, integer atomics): the scale S is the
// largest power of two with B * terms * S <= 2^62, B = max|grad_output| * max|mask| over finite
// elements (corner weights are at most 1, so B bounds every finite term), terms = Ho * Wo * P
// (the most terms one element receives: one per output pixel and tap). No sum leaves int64,
// scaling by S is exact, and each term is rounded to the nearest multiple of 1 / S, so an
// element's sum is off by at most terms / (2 S) < B * terms^2 * 2^-62 (S > 2^61 / (B * terms))
// before the opmath conversion; where fixed_point_scale's upper clamp applies (tiny B) it is
// at most terms * 2^-127 (float32) or terms * 2^-1001 (float64). Non-finite terms go to the
// opmath buffer, where they decide the element.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "common/dcn_family.h"
#include "common/dcn_family_checks.h"
#include "common/index_width.h"
#include "common/opmath.h"
#include "cuda/backend.h"
#include "cuda/dcn_family.cuh"
#include "cuda/dcn_family_entry_points.h"

namespace deformconv {
namespace cuda {
namespace {

// Channels per lane when a group's channels and every base pointer allow whole packs.
constexpr int kFamilyVec = 8;
// Grid-x cap; the kernels stride over further blocks.
constexpr int64_t kMaxBlocks = int64_t(1) << 24;

// The call's tensors as the kernels read them: input contiguous (N, H, W, G*D), offset and
// mask in opmath, contiguous (for DCNv4 both are the converted offset_mask, the mask read
// from mask_start on).
struct FamilyCall {
  family::Params q;
  family::Sizes s;
  family::OffsetMaskLayout layout;
  at::Tensor x, off, msk;
  // Only the mask values (for the fixed-point scale): msk itself, or a view of offset_mask.
  at::Tensor mask_values;
};

FamilyCall dcnv3_call(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                      const family::Params& q) {
  const family::Sizes s = family::check_dcnv3_args(input, offset, mask, q);
  FamilyCall c{q, s, family::dcnv3_layout(q.group, s.points)};
  c.x = input.contiguous();
  c.off = to_opmath(offset).contiguous();
  c.msk = to_opmath(mask).contiguous();
  c.mask_values = c.msk;
  return c;
}

FamilyCall dcnv4_call(const at::Tensor& input, const at::Tensor& offset_mask,
                      const family::Params& q) {
  const family::Sizes s = family::check_dcnv4_args(input, offset_mask, q);
  FamilyCall c{q, s, family::dcnv4_layout(q.group, s.points)};
  c.x = input.contiguous();
  c.off = to_opmath(offset_mask).contiguous();
  c.msk = c.off;
  const int64_t p = s.points;
  c.mask_values = c.off.reshape({-1, c.off.size(3)})
                      .narrow(1, 0, q.group * 3 * p)
                      .reshape({-1, q.group, 3 * p})
                      .narrow(2, 2 * p, p);
  return c;
}

int64_t items_of(const FamilyCall& c) { return c.s.batch * c.s.out_h * c.s.out_w * c.q.group; }

bool aligned_to(const void* p, int64_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

// kFamilyVec channels per lane when the group channels are a multiple of it and each base
// pointer (`ptrs`, of scalar_t) allows whole packs; else 1.
template <typename scalar_t>
bool wide(const FamilyCall& c, std::initializer_list<const void*> ptrs) {
  if (c.s.group_channels % kFamilyVec != 0) return false;
  for (const void* p : ptrs) {
    if (!aligned_to(p, kFamilyVec * sizeof(scalar_t))) return false;
  }
  return true;
}

template <typename index_t>
FamilyArgs<index_t> family_args(const FamilyCall& c, int vec) {
  FamilyArgs<index_t> a;
  a.q = c.q;
  a.height = static_cast<index_t>(c.s.height);
  a.width = static_cast<index_t>(c.s.width);
  a.channels = static_cast<index_t>(c.s.channels);
  a.group_channels = static_cast<index_t>(c.s.group_channels);
  a.out_h = static_cast<index_t>(c.s.out_h);
  a.out_w = static_cast<index_t>(c.s.out_w);
  a.points = static_cast<index_t>(c.s.points);
  a.group = static_cast<index_t>(c.q.group);
  a.items = items_of(c);
  a.offset_row = static_cast<index_t>(c.layout.offset_row);
  a.offset_group = static_cast<index_t>(c.layout.offset_group);
  a.mask_row = static_cast<index_t>(c.layout.mask_row);
  a.mask_group = static_cast<index_t>(c.layout.mask_group);
  const int64_t packs = (c.s.group_channels + vec - 1) / vec;
  a.team = 1;
  while (a.team < 32 && a.team < packs) a.team *= 2;
  a.chunks = static_cast<int>((packs + a.team - 1) / a.team);
  return a;
}

template <typename index_t>
dim3 family_grid(const FamilyArgs<index_t>& a) {
  const int64_t per_block = kThreads / a.team;
  const int64_t blocks = std::min<int64_t>((a.items + per_block - 1) / per_block, kMaxBlocks);
  return dim3(static_cast<unsigned>(std::max<int64_t>(blocks, 1)));
}

bool index32_fits(const FamilyCall& c) {
  return fits_int32({c.x.numel(), c.off.numel(), c.msk.numel(),
                     c.s.batch * c.s.out_h * c.s.out_w * c.s.channels, items_of(c)});
}

dim3 family_block(int team) { return dim3(team, kThreads / team); }

// Calls f(scalar_t{}, std::integral_constant<int, kVec>{}, FamilyArgs<index_t>) for the call's
// dtype, index width and pack width (kFamilyVec when the input and `data`, the other scalar_t
// tensor the kernel reads or writes in packs, allow it).
template <typename F>
void dispatch(const FamilyCall& c, const at::Tensor& data, F&& f) {
  const bool index32 = index32_fits(c);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, c.x.scalar_type(), "deformconv_dcn_family_cuda", [&] {
        const bool w = wide<scalar_t>(c, {c.x.const_data_ptr(), data.const_data_ptr()});
        const auto run = [&](auto index_tag, auto vec) {
          using index_t = decltype(index_tag);
          f(scalar_t{}, vec, family_args<index_t>(c, decltype(vec)::value));
        };
        using Wide = std::integral_constant<int, kFamilyVec>;
        using Narrow = std::integral_constant<int, 1>;
        if (index32) {
          w ? run(int32_t{}, Wide{}) : run(int32_t{}, Narrow{});
        } else {
          w ? run(int64_t{}, Wide{}) : run(int64_t{}, Narrow{});
        }
      });
}

at::Tensor forward(const FamilyCall& c) {
  const backend::DeviceGuard guard(c.x.device());
  at::Tensor out = at::empty({c.s.batch, c.s.out_h, c.s.out_w, c.s.channels}, c.x.options());
  if (out.numel() == 0) return out;
  if (c.s.height == 0 || c.s.width == 0) return out.zero_();
  dispatch(c, out, [&](auto scalar_tag, auto vec, const auto& a) {
    using scalar_t = decltype(scalar_tag);
    using acc_t = at::opmath_type<scalar_t>;
    using index_t = decltype(a.height);
    launch_kernel(dcn_family_forward_kernel<scalar_t, acc_t, index_t, decltype(vec)::value>,
                  family_grid(a), family_block(a.team), backend::current_stream(), a,
                  c.x.const_data_ptr<scalar_t>(), c.off.const_data_ptr<acc_t>(),
                  c.msk.const_data_ptr<acc_t>() + c.layout.mask_start,
                  out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

// max |t| over t's finite elements (0 if none), float64, on t's device (no synchronization).
at::Tensor finite_abs_max(const at::Tensor& t) {
  if (t.numel() == 0) return at::zeros({}, t.options().dtype(at::kDouble));
  const at::Tensor a = t.abs();
  return at::where(at::isfinite(a), a, at::zeros({}, a.options())).amax().to(at::kDouble);
}

// The fixed-point scale (see the file comment), in opmath, one element on the device. Kept
// within [2^-100, 2^126] for float32 (below 2^-100, B * terms > 2^162: the finite float32 terms,
// below 2^128, still sum within int64 for fewer than 2^34 terms; 2^126 keeps tiny gradients
// exact down to float32's smallest normal) and [2^-1000, 2^1000] for float64.
at::Tensor fixed_point_scale(const FamilyCall& c, const at::Tensor& grad_output) {
  const bool f64 = c.x.scalar_type() == at::kDouble;
  const int low = f64 ? -1000 : -100;
  const int high = f64 ? 1000 : 126;
  const int64_t terms = std::max<int64_t>(1, c.s.out_h * c.s.out_w * c.s.points);
  const at::Tensor bound = finite_abs_max(grad_output) * finite_abs_max(c.mask_values);
  const at::Tensor room = std::ldexp(1.0, 62) / (bound * terms).clamp_min(std::ldexp(1.0, -1000));
  return at::exp2(at::floor(at::log2(room)))
      .clamp(std::ldexp(1.0, low), std::ldexp(1.0, high))
      .to(opmath_dtype(c.x.scalar_type()));
}

// (grad_input, grad_offset buffer, grad_mask buffer): grad_input in input's dtype; the buffers
// in opmath with c.off's / c.msk's shape (for DCNv4 one buffer, returned twice).
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const FamilyCall& c,
                                                        const at::Tensor& grad_output,
                                                        const char* op) {
  family::check_grad_output(grad_output, c.x, c.s, op);
  const backend::DeviceGuard guard(c.x.device());
  const at::Tensor go = grad_output.contiguous();
  const auto acc_opts = c.off.options();
  const bool shared = c.msk.is_same(c.off);
  const bool launch =
      items_of(c) != 0 && c.s.group_channels != 0 && c.s.height != 0 && c.s.width != 0;
  // The kernel writes every (pixel, group, tap) entry of grad_offset and grad_mask; DCNv4's
  // padding columns (one buffer for both) must start at 0.
  const auto buffer = [&](const at::Tensor& like) {
    return launch && !shared ? at::empty(like.sizes(), acc_opts)
                             : at::zeros(like.sizes(), acc_opts);
  };
  at::Tensor grad_offset = buffer(c.off);
  at::Tensor grad_mask = shared ? grad_offset : buffer(c.msk);
  at::Tensor grad_input = at::zeros(c.x.sizes(), c.x.options().dtype(acc_opts.dtype()));
  if (!launch) {
    return std::make_tuple(grad_input.to(c.x.scalar_type()), grad_offset, grad_mask);
  }
  const bool fixed = at::globalContext().deterministicAlgorithms();
  at::Tensor grad_input_fixed, scale;
  if (fixed) {
    grad_input_fixed = at::zeros(c.x.sizes(), c.x.options().dtype(at::kLong));
    scale = fixed_point_scale(c, go);
  }
  dispatch(c, go, [&](auto scalar_tag, auto vec, const auto& a) {
    using scalar_t = decltype(scalar_tag);
    using acc_t = at::opmath_type<scalar_t>;
    using index_t = decltype(a.height);
    launch_kernel(
        dcn_family_backward_kernel<scalar_t, acc_t, index_t, decltype(vec)::value>, family_grid(a),
        family_block(a.team), backend::current_stream(), a, c.x.const_data_ptr<scalar_t>(),
        c.off.const_data_ptr<acc_t>(), c.msk.const_data_ptr<acc_t>() + c.layout.mask_start,
        go.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<acc_t>(),
        fixed ? reinterpret_cast<unsigned long long*>(grad_input_fixed.data_ptr<int64_t>())
              : nullptr,
        fixed ? scale.const_data_ptr<acc_t>() : nullptr, grad_offset.mutable_data_ptr<acc_t>(),
        grad_mask.mutable_data_ptr<acc_t>() + c.layout.mask_start);
  });
  if (fixed) {
    // A non-finite sum where there is one, else the integer sum / S (a power of two: exact).
    grad_input =
        at::where(grad_input != 0, grad_input, grad_input_fixed.to(grad_input.dtype()) / scale);
  }
  return std::make_tuple(grad_input.to(c.x.scalar_type()), grad_offset, grad_mask);
}

}  // namespace

at::Tensor dcnv3_cuda(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                      at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation, int64_t group, double offset_scale,
                      bool remove_center) {
  const family::Params q = family::make_params(kernel_size, stride, padding, dilation, group,
                                               offset_scale, remove_center, "dcnv3");
  return forward(dcnv3_call(input, offset, mask, q));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
    const at::Tensor& mask, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t group, double offset_scale,
    bool remove_center) {
  const family::Params q = family::make_params(kernel_size, stride, padding, dilation, group,
                                               offset_scale, remove_center, "_dcnv3_backward");
  const auto [gi, goff, gmask] =
      backward(dcnv3_call(input, offset, mask, q), grad_output, "_dcnv3_backward");
  return std::make_tuple(gi, goff.to(offset.scalar_type()), gmask.to(mask.scalar_type()));
}

at::Tensor dcnv4_cuda(const at::Tensor& input, const at::Tensor& offset_mask,
                      at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation, int64_t group, double offset_scale,
                      bool remove_center) {
  const family::Params q = family::make_params(kernel_size, stride, padding, dilation, group,
                                               offset_scale, remove_center, "dcnv4");
  return forward(dcnv4_call(input, offset_mask, q));
}

std::tuple<at::Tensor, at::Tensor> dcnv4_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset_mask,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t group, double offset_scale, bool remove_center) {
  const family::Params q = family::make_params(kernel_size, stride, padding, dilation, group,
                                               offset_scale, remove_center, "_dcnv4_backward");
  const auto [gi, gom, unused] =
      backward(dcnv4_call(input, offset_mask, q), grad_output, "_dcnv4_backward");
  (void)unused;
  return std::make_tuple(gi, gom.to(offset_mask.scalar_type()));
}

}  // namespace cuda
}  // namespace deformconv
