// Autograd kernels of the DCN family ops, in C++: dcnv3 / dcnv4 save their tensors and call their backward ops; the backward ops' own backward raises NotImplementedError.
//
// C++ rather than torch.library.register_autograd: the Python path costs about 0.2 ms per
// forward+backward on the CPU whatever the tensor sizes (measured on a tiny input), which is a
// sizeable share of the op itself at InternImage's later stages, once per layer and step.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

namespace deformconv {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The ops' static arguments (everything after the tensors), saved for the backward.
struct StaticArgs {
  std::vector<int64_t> kernel_size, stride, padding, dilation;
  int64_t group;
  double offset_scale;
  bool remove_center;

  void save(AutogradContext* ctx) const {
    ctx->saved_data["kernel_size"] = kernel_size;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["group"] = group;
    ctx->saved_data["offset_scale"] = offset_scale;
    ctx->saved_data["remove_center"] = remove_center;
  }

  static StaticArgs load(AutogradContext* ctx) {
    return StaticArgs{ctx->saved_data["kernel_size"].toIntVector(),
                      ctx->saved_data["stride"].toIntVector(),
                      ctx->saved_data["padding"].toIntVector(),
                      ctx->saved_data["dilation"].toIntVector(),
                      ctx->saved_data["group"].toInt(),
                      ctx->saved_data["offset_scale"].toDouble(),
                      ctx->saved_data["remove_center"].toBool()};
  }
};

using Sizes = at::IntArrayRef;

at::Tensor dcnv3_op(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                    const StaticArgs& a) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("deformconv::dcnv3", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         Sizes, Sizes, Sizes, Sizes, int64_t, double, bool)>();
  return op.call(input, offset, mask, a.kernel_size, a.stride, a.padding, a.dilation, a.group,
                 a.offset_scale, a.remove_center);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_backward_op(const at::Tensor& grad_output,
                                                                 const at::Tensor& input,
                                                                 const at::Tensor& offset,
                                                                 const at::Tensor& mask,
                                                                 const StaticArgs& a) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("deformconv::_dcnv3_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, Sizes, Sizes, Sizes, Sizes, int64_t, double, bool)>();
  return op.call(grad_output, input, offset, mask, a.kernel_size, a.stride, a.padding, a.dilation,
                 a.group, a.offset_scale, a.remove_center);
}

at::Tensor dcnv4_op(const at::Tensor& input, const at::Tensor& offset_mask, const StaticArgs& a) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("deformconv::dcnv4", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, Sizes, Sizes, Sizes,
                                         Sizes, int64_t, double, bool)>();
  return op.call(input, offset_mask, a.kernel_size, a.stride, a.padding, a.dilation, a.group,
                 a.offset_scale, a.remove_center);
}

std::tuple<at::Tensor, at::Tensor> dcnv4_backward_op(const at::Tensor& grad_output,
                                                     const at::Tensor& input,
                                                     const at::Tensor& offset_mask,
                                                     const StaticArgs& a) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("deformconv::_dcnv4_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, Sizes, Sizes,
                           Sizes, Sizes, int64_t, double, bool)>();
  return op.call(grad_output, input, offset_mask, a.kernel_size, a.stride, a.padding, a.dilation,
                 a.group, a.offset_scale, a.remove_center);
}

// The backward of a backward op: raises NotImplementedError naming the op.
variable_list no_double_backward(const std::string& op_name) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, "deformconv: double backward of ", op_name,
                              " is not supported (its backward, _", op_name,
                              "_backward, is not differentiable); only first-order gradients are");
  return {};
}

class DCNv3Function : public torch::autograd::Function<DCNv3Function> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& offset,
                            const at::Tensor& mask, const StaticArgs& args) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, offset, mask});
    args.save(ctx);
    return dcnv3_op(input, offset, mask, args);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const auto [grad_input, grad_offset, grad_mask] =
        dcnv3_backward_op(grads[0], saved[0], saved[1], saved[2], StaticArgs::load(ctx));
    // One gradient per forward argument: the three tensors, then `args`.
    return {grad_input, grad_offset, grad_mask, at::Tensor()};
  }
};

class DCNv3BackwardFunction : public torch::autograd::Function<DCNv3BackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output,
                               const at::Tensor& input, const at::Tensor& offset,
                               const at::Tensor& mask, const StaticArgs& args) {
    (void)ctx;
    at::AutoDispatchBelowADInplaceOrView guard;
    const auto [a, b, c] = dcnv3_backward_op(grad_output, input, offset, mask, args);
    return {a, b, c};
  }

  static variable_list backward(AutogradContext*, variable_list) {
    return no_double_backward("dcnv3");
  }
};

class DCNv4Function : public torch::autograd::Function<DCNv4Function> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& offset_mask, const StaticArgs& args) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, offset_mask});
    args.save(ctx);
    return dcnv4_op(input, offset_mask, args);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const auto [grad_input, grad_offset_mask] =
        dcnv4_backward_op(grads[0], saved[0], saved[1], StaticArgs::load(ctx));
    return {grad_input, grad_offset_mask, at::Tensor()};
  }
};

class DCNv4BackwardFunction : public torch::autograd::Function<DCNv4BackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output,
                               const at::Tensor& input, const at::Tensor& offset_mask,
                               const StaticArgs& args) {
    (void)ctx;
    at::AutoDispatchBelowADInplaceOrView guard;
    const auto [a, b] = dcnv4_backward_op(grad_output, input, offset_mask, args);
    return {a, b};
  }

  static variable_list backward(AutogradContext*, variable_list) {
    return no_double_backward("dcnv4");
  }
};

StaticArgs static_args(Sizes kernel_size, Sizes stride, Sizes padding, Sizes dilation,
                       int64_t group, double offset_scale, bool remove_center) {
  return StaticArgs{kernel_size.vec(), stride.vec(), padding.vec(), dilation.vec(), group,
                    offset_scale,      remove_center};
}

at::Tensor dcnv3_autograd(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                          Sizes kernel_size, Sizes stride, Sizes padding, Sizes dilation,
                          int64_t group, double offset_scale, bool remove_center) {
  return DCNv3Function::apply(
      input, offset, mask,
      static_args(kernel_size, stride, padding, dilation, group, offset_scale, remove_center));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
    const at::Tensor& mask, Sizes kernel_size, Sizes stride, Sizes padding, Sizes dilation,
    int64_t group, double offset_scale, bool remove_center) {
  const variable_list r = DCNv3BackwardFunction::apply(
      grad_output, input, offset, mask,
      static_args(kernel_size, stride, padding, dilation, group, offset_scale, remove_center));
  return {r[0], r[1], r[2]};
}

at::Tensor dcnv4_autograd(const at::Tensor& input, const at::Tensor& offset_mask, Sizes kernel_size,
                          Sizes stride, Sizes padding, Sizes dilation, int64_t group,
                          double offset_scale, bool remove_center) {
  return DCNv4Function::apply(
      input, offset_mask,
      static_args(kernel_size, stride, padding, dilation, group, offset_scale, remove_center));
}

std::tuple<at::Tensor, at::Tensor> dcnv4_backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset_mask,
    Sizes kernel_size, Sizes stride, Sizes padding, Sizes dilation, int64_t group,
    double offset_scale, bool remove_center) {
  const variable_list r = DCNv4BackwardFunction::apply(
      grad_output, input, offset_mask,
      static_args(kernel_size, stride, padding, dilation, group, offset_scale, remove_center));
  return {r[0], r[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(deformconv, Autograd, m) {
  m.impl("dcnv3", &dcnv3_autograd);
  m.impl("dcnv4", &dcnv4_autograd);
  // The backward ops have an autograd kernel only to raise NotImplementedError when a double
  // backward reaches them.
  m.impl("_dcnv3_backward", &dcnv3_backward_autograd);
  m.impl("_dcnv4_backward", &dcnv4_backward_autograd);
}

}  // namespace deformconv
