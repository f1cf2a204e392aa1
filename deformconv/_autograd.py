# Autograd for deformconv::deform_conv2d through the C++ backward op; double backward raises a clear error.
import torch


def _setup_context(ctx, inputs, output):
    input, weight, offset, mask, bias, stride, padding, dilation = inputs
    ctx.save_for_backward(input, weight, offset, mask, bias)
    ctx.conv_args = (stride, padding, dilation)


def _backward(ctx, grad_output):
    input, weight, offset, mask, bias = ctx.saved_tensors
    if not any(ctx.needs_input_grad[:5]):
        return (None,) * 8
    grad_input, grad_weight, grad_offset, grad_mask, grad_bias = (
        torch.ops.deformconv._deform_conv2d_backward(
            grad_output, input, weight, offset, mask, bias, *ctx.conv_args
        )
    )
    return (
        grad_input,
        grad_weight,
        grad_offset,
        grad_mask if mask is not None else None,
        grad_bias if bias is not None else None,
        None,
        None,
        None,
    )


def _no_double_backward_setup(ctx, inputs, output):
    pass


def _no_double_backward(ctx, *grads):
    raise NotImplementedError(
        "deformconv: double backward (gradients of gradients) of deform_conv2d is not "
        "supported yet; compute first-order gradients only (create_graph=False)"
    )


torch.library.register_autograd(
    "deformconv::deform_conv2d", _backward, setup_context=_setup_context
)
torch.library.register_autograd(
    "deformconv::_deform_conv2d_backward",
    _no_double_backward,
    setup_context=_no_double_backward_setup,
)
